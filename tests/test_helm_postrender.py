"""The Helm post-renderer that keeps the worker Deployment's `spec.replicas` out of every Airflow release.

- Unit level: on a stream laid out the way Helm hands it over ("---\\n# Source: ...\\n<doc>\\n"), only the
  targeted object loses its `replicas:` line; every other byte passes through.
- The command the program writes runs with a bare environment (no virtualenv on PATH), as Helm runs it.
- With a real Helm (v3.19.0, built from the Go module proxy into the binary cache that hack/controlplane uses):
  a stand-in chart with the Airflow chart's replica logic (tests/fixtures/worker-chart), fed the program's own
  `workers` values, rendered with and without the post-renderer.
- With a real Helm and the session's real control plane (tests/k8s/plugin.py): install, scale the way the
  autoscaler does, upgrade, roll back; the count the autoscaler set survives every step, and without the
  post-renderer the same upgrade puts it back to the chart's value.

`make test` builds Helm and the control plane first (hack/controlplane/build.sh); nothing here is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from airflow_on_k8s.airflow import helm_postrender as pr
from airflow_on_k8s.airflow.component import (
    POSTRENDER_COMMAND,
    POSTRENDER_TARGETS,
    WORKER_DEPLOYMENT,
    AirflowArgs,
    chart_values,
    worker_grace_seconds,
)
from airflow_on_k8s.config import parse_stack_config

REPO = Path(__file__).resolve().parent.parent
STANDIN_CHART = REPO / "tests" / "fixtures" / "worker-chart"
BIN_DIR = Path(os.environ.get("AIRFLOW_ON_K8S_BIN_DIR", Path.home() / ".cache" / "airflow-on-k8s" / "bin"))

def _helm_binary() -> Path:
    """The Helm that hack/controlplane/build.sh builds (its version from hack/controlplane/helm/go.mod)."""
    dirs = dict(line.split("=", 1) for line in subprocess.run(
        [str(REPO / "hack" / "controlplane" / "build.sh"), "--print-dir"], capture_output=True, text=True, check=True,
    ).stdout.split())  # fmt: skip
    return Path(os.environ.get("HELM", Path(dirs["helm"]) / "helm"))


HELM = _helm_binary()


def needs_helm(test):
    """Marks the tests that run Helm: they belong to the control-plane tier (`make test-k8s` selects them)."""
    return pytest.mark.k8s(test)

WORKER = """\
---
# Source: airflow/templates/workers/worker-deployment.yaml
################################
## Airflow Worker Deployment
#################################
apiVersion: apps/v1
kind: Deployment
metadata:
  name: airflow-worker
  labels:
    tier: airflow
    component: worker
    release: airflow
spec:
  replicas: 1
  revisionHistoryLimit: 10
  selector:
    matchLabels:
      tier: airflow
      component: worker
      release: airflow
  template:
    metadata:
      labels:
        tier: airflow
        component: worker
        release: airflow
      annotations:
        cluster-autoscaler.kubernetes.io/safe-to-evict: "false"
    spec:
      terminationGracePeriodSeconds: 600
      containers:
        - name: worker
          image: apache/airflow:3.3.2-python3.11
          args:
            - bash
            - -c
            - |-
              exec \\
              airflow celery worker
"""
SCHEDULER = """\
---
# Source: airflow/templates/scheduler/scheduler-deployment.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: airflow-scheduler
spec:
  replicas: 1
  selector:
    matchLabels: {component: scheduler}
  template:
    metadata: {labels: {component: scheduler}}
    spec: {containers: [{name: scheduler, image: x}]}
"""
SERVICE = """\
---
# Source: airflow/templates/redis/redis-service.yaml
apiVersion: v1
kind: Service
metadata:
  name: airflow-redis
spec:
  ports: [{name: redis-db, port: 6379}]
"""


def docs(stream: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(stream) if d]


def by_name(stream: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs(stream)}


# --- the post-renderer itself ------------------------------------------------------------------------------


def test_only_the_workers_replicas_line_goes_and_every_other_byte_stays():
    stream = SERVICE + WORKER + SCHEDULER
    out = pr.drop_replicas(stream, POSTRENDER_TARGETS)
    assert out == SERVICE + WORKER.replace("  replicas: 1\n", "", 1) + SCHEDULER
    worker = by_name(out)[WORKER_DEPLOYMENT]
    assert "replicas" not in worker["spec"]
    assert worker["spec"]["template"]["spec"]["containers"][0]["args"][2] == "exec \\\nairflow celery worker"
    assert by_name(out)["airflow-scheduler"]["spec"]["replicas"] == 1


def test_a_worker_without_replicas_passes_through_unchanged():
    # keda/hpa modes: the chart renders no replicas; nothing to take away.
    stream = WORKER.replace("  replicas: 1\n", "") + SCHEDULER
    assert pr.drop_replicas(stream, POSTRENDER_TARGETS) == stream


def test_a_flow_style_worker_is_rewritten_as_json_without_replicas():
    flow = (
        "---\n# Source: x.yaml\n"
        "{apiVersion: apps/v1, kind: Deployment, metadata: {name: airflow-worker}, "
        "spec: {replicas: 3, selector: {matchLabels: {a: b}}, template: {metadata: {labels: {a: b}}, "
        "spec: {containers: [{name: c, image: i, env: [{name: DAY, value: 2024-01-01}]}]}}}}\n"
    )
    out = pr.drop_replicas(flow + SCHEDULER, POSTRENDER_TARGETS)
    worker = by_name(out)["airflow-worker"]
    assert "replicas" not in worker["spec"]
    # Timestamps stay the strings Kubernetes' decoder would see.
    assert worker["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] == "2024-01-01"
    assert by_name(out)["airflow-scheduler"]["spec"]["replicas"] == 1


def test_a_renamed_worker_fails_loudly_rather_than_being_reset_silently():
    with pytest.raises(pr.PostRenderError, match="Deployment/airflow-worker not in the rendered manifests"):
        pr.drop_replicas(SCHEDULER + SERVICE, POSTRENDER_TARGETS)


def test_documents_split_and_join_back_to_the_same_stream():
    stream = "head\n" + SERVICE + WORKER + "---\n" + SCHEDULER
    parts = pr.split_documents(stream)
    assert "".join(parts) == stream and len(parts) == 5


def test_the_cli_reads_stdin_writes_stdout_and_reports_errors(capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(WORKER))
    assert pr.main(["--drop-replicas=Deployment/airflow-worker"]) == 0
    assert "replicas" not in capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", io.StringIO(SCHEDULER))
    assert pr.main(["--drop-replicas=Deployment/airflow-worker"]) == 1
    assert "not in the rendered manifests" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pr.main(["--drop-replicas=airflow-worker"])  # not KIND/NAME


def test_the_written_command_runs_without_the_virtualenv_on_path(tmp_path):
    command = pr.write_command(tmp_path / "sub" / "postrender", POSTRENDER_TARGETS)
    assert os.access(command, os.X_OK)
    # Helm runs the post-renderer with the environment `pulumi up` was started in: no venv, minimal PATH.
    out = subprocess.run(
        [str(command)], input=WORKER + SCHEDULER, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, check=True
    ).stdout
    assert "replicas" not in by_name(out)[WORKER_DEPLOYMENT]["spec"]
    # Rewritten identically: no churn on every run.
    mtime = command.stat().st_mtime_ns
    pr.write_command(command, POSTRENDER_TARGETS)
    assert command.stat().st_mtime_ns == mtime


# --- a real Helm on the stand-in chart ---------------------------------------------------------------------


def task_aware_workers(min_workers: int, drain: int = 300) -> dict:
    args = AirflowArgs.from_stack(
        parse_stack_config(
            {"cloud": "local", "scaling": {"mode": "task-aware", "minWorkers": min_workers, "drainTimeoutSeconds": drain}}
        )
    )
    return chart_values(args, local_settings="")["workers"]


def helm(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, env=env, check=check, timeout=120)


def render(values: dict, tmp_path: Path, postrender: Path | None = None) -> dict[str, dict]:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(json.dumps(values))
    extra = ["--post-renderer", str(postrender)] if postrender else []
    return by_name(helm("template", "airflow", str(STANDIN_CHART), "-f", str(values_file), *extra).stdout)


@needs_helm
@pytest.mark.parametrize("min_workers", [0, 2])
def test_helm_renders_no_worker_replicas_through_the_programs_postrenderer(tmp_path, min_workers):
    command = pr.write_command(tmp_path / POSTRENDER_COMMAND, POSTRENDER_TARGETS)
    objs = render({"workers": task_aware_workers(min_workers, drain=900)}, tmp_path, command)
    worker = objs[WORKER_DEPLOYMENT]
    assert "replicas" not in worker["spec"]
    assert objs["airflow-scheduler"]["spec"]["replicas"] == 1  # other objects keep theirs
    pod = worker["spec"]["template"]
    assert pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert pod["spec"]["terminationGracePeriodSeconds"] == worker_grace_seconds(900) == 960


@needs_helm
def test_helm_renders_zero_workers_only_because_the_deprecated_key_is_set_too(tmp_path):
    # The chart's `workers.celery.replicas | default workers.replicas`: sprig's `default` treats 0 as unset.
    workers = task_aware_workers(0)
    assert render({"workers": workers}, tmp_path)[WORKER_DEPLOYMENT]["spec"]["replicas"] == 0
    only_celery = {"celery": workers["celery"]}
    assert render({"workers": only_celery}, tmp_path)[WORKER_DEPLOYMENT]["spec"]["replicas"] == 1


@needs_helm
def test_safe_to_evict_is_false_under_either_key_and_true_only_when_asked(tmp_path):
    def annotation(workers: dict) -> str:
        pod = render({"workers": workers}, tmp_path)[WORKER_DEPLOYMENT]["spec"]["template"]
        return pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"]

    assert annotation(task_aware_workers(1)) == "false"
    assert annotation({"celery": {"safeToEvict": False}, "safeToEvict": True}) == "false"  # celery wins
    assert annotation({"safeToEvict": True}) == "true"  # what the program must never leave to the default


# --- a real Helm against a real API server -----------------------------------------------------------------


@pytest.fixture(scope="module")
def api_server(control_plane, tmp_path_factory):
    """Helm's environment pointed at the session's real control plane (tests/k8s/plugin.py), as its admin."""
    assert HELM.is_file(), f"no helm binary at {HELM}: make k8s-binaries (hack/controlplane/build.sh) builds it"
    work = tmp_path_factory.mktemp("helm")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "KUBECONFIG": str(control_plane.kubeconfig),
           "HELM_CACHE_HOME": str(work / "hc"), "HELM_CONFIG_HOME": str(work / "hcfg"), "HELM_DATA_HOME": str(work / "hd")}
    yield env


def apps_api(env: dict):
    from kubernetes import client, config

    return client.AppsV1Api(config.new_client_from_config(config_file=env["KUBECONFIG"]))


def live_replicas(env: dict, name: str, namespace: str) -> int | None:
    return apps_api(env).read_namespaced_deployment(name, namespace).spec.replicas


def autoscaler_sets(env: dict, namespace: str, n: int) -> None:
    # What airflow_on_k8s/autoscaler/actuators/kubernetes.py does: a merge patch on the scale subresource.
    apps_api(env).patch_namespaced_deployment_scale(WORKER_DEPLOYMENT, namespace, {"spec": {"replicas": n}})


def release(env: dict, tmp_path: Path, namespace: str, workers: dict, postrender: Path | None, *, install: bool) -> None:
    values = tmp_path / f"values-{time.monotonic_ns()}.yaml"
    values.write_text(json.dumps({"workers": workers}))
    extra = ["--post-renderer", str(postrender)] if postrender else []
    verb = ["install", "--create-namespace"] if install else ["upgrade"]
    helm(*verb, "airflow", str(STANDIN_CHART), "-n", namespace, "-f", str(values), *extra, env=env)


@pytest.mark.k8s
def test_upgrades_and_rollbacks_leave_the_autoscalers_count_alone(api_server, tmp_path):
    env, ns = api_server, "with-postrender"
    command = pr.write_command(tmp_path / POSTRENDER_COMMAND, POSTRENDER_TARGETS)
    release(env, tmp_path, ns, task_aware_workers(1), command, install=True)
    assert live_replicas(env, WORKER_DEPLOYMENT, ns) == 1  # no replicas in the manifest: Kubernetes' default
    autoscaler_sets(env, ns, 5)
    # An upgrade that changes the worker pods (a longer grace period) and the release's minWorkers.
    release(env, tmp_path, ns, task_aware_workers(2, drain=900), command, install=False)
    assert live_replicas(env, WORKER_DEPLOYMENT, ns) == 5
    autoscaler_sets(env, ns, 7)
    # What `atomic` does after a failed upgrade: back to the previous revision.
    helm("rollback", "airflow", "1", "-n", ns, env=env)
    assert live_replicas(env, WORKER_DEPLOYMENT, ns) == 7
    assert live_replicas(env, "airflow-scheduler", ns) == 1  # the chart still owns everything else


@pytest.mark.k8s
def test_without_the_postrenderer_the_same_upgrade_resets_the_count(api_server, tmp_path):
    env, ns = api_server, "without-postrender"
    release(env, tmp_path, ns, task_aware_workers(1), None, install=True)
    autoscaler_sets(env, ns, 5)
    release(env, tmp_path, ns, task_aware_workers(2, drain=900), None, install=False)
    assert live_replicas(env, WORKER_DEPLOYMENT, ns) == 2  # busy workers beyond minWorkers deleted
    # Switching the post-renderer on: the first upgrade deletes the field once (three-way merge), so the
    # count drops to Kubernetes' default of 1 a single time; from then on it is the autoscaler's.
    command = pr.write_command(tmp_path / POSTRENDER_COMMAND, POSTRENDER_TARGETS)
    autoscaler_sets(env, ns, 6)
    release(env, tmp_path, ns, task_aware_workers(2, drain=900), command, install=False)
    assert live_replicas(env, WORKER_DEPLOYMENT, ns) == 1
    autoscaler_sets(env, ns, 6)
    release(env, tmp_path, ns, task_aware_workers(3, drain=900), command, install=False)
    assert live_replicas(env, WORKER_DEPLOYMENT, ns) == 6
