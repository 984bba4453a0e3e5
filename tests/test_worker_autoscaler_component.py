"""The WorkerAutoscaler component: what the program deploys for `scaling.mode: task-aware`, checked against the
autoscaler's real code wherever the two meet.

- Program runs are the real __main__.py per stack under Pulumi mocks (tests/conftest.py).
- The container's args and env are resolved the way the kubelet does (Secrets from the objects the program
  writes, the downward API) and parsed by the autoscaler's own settings parser, so a renamed flag fails here.
- The source ConfigMap is laid out on disk the way the kubelet mounts it and imported from there.
- The Role is checked against every request the real actuator and Lease make (kubernetes client, faked HTTP).
- The probe and scrape paths are requested from the autoscaler's real metrics server.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest
from packaging.requirements import Requirement

from airflow_on_k8s.airflow import worker_autoscaler as component
from airflow_on_k8s.airflow.component import (
    AIRFLOW_CONFIG_CONFIGMAP,
    AIRFLOW_CONFIG_PATH,
    CHART_WORKER_GRACE_SECONDS,
    WORKER_DEPLOYMENT,
    WORKER_POD_LABELS,
    AirflowArgs,
    SecretNames,
    chart_values,
)
from airflow_on_k8s.config import parse_stack_config
from airflow_on_k8s.task_pool import TASK_POOL
from airflow_on_k8s.versions import AIRFLOW_IMAGE_REPOSITORY, AIRFLOW_IMAGE_TAG
from tests.autoscaler.fake_kube_events import FakeKubeWithEvents
from tests.conftest import program_run
from tests.test_addons import stack_config
from tests.test_k8s_schema import manifest
from airflow_on_k8s.testing.mock_runtime import ProgramRun, available_stacks, run_program
from airflow_on_k8s.autoscaler.settings import Settings, settings_from_args

COMPONENT = "airflow-on-k8s:scaling:WorkerAutoscaler"
PARENT = f"{COMPONENT}::worker-autoscaler"
TASK_AWARE_STACKS = [s for s in available_stacks() if stack_config(s).scaling.mode == "task-aware"]
POD_NAME = "airflow-worker-autoscaler-7d9f8b6c5-x2x4q"


@pytest.fixture(params=available_stacks())
def any_run(request) -> ProgramRun:
    return program_run(request.param)


@pytest.fixture(params=TASK_AWARE_STACKS)
def run(request) -> ProgramRun:
    return program_run(request.param)


def objects(run: ProgramRun) -> dict[str, dict]:
    """The component's Kubernetes objects by kind, as manifests."""
    found: dict[str, dict] = {}
    for r in run.resources:
        if r.parent == PARENT:
            body = manifest(r.inputs)
            assert body["kind"] not in found, f"two {body['kind']} objects"
            found[body["kind"]] = body
    return found


def container(run: ProgramRun) -> dict:
    (c,) = objects(run)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def kubelet_env(run: ProgramRun, c: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it from the Secrets the program writes."""
    namespace = objects(run)["Deployment"]["metadata"]["namespace"]
    secrets = {}
    for r in run.by_type("kubernetes:core/v1:Secret"):
        body = manifest(r.inputs)
        if body["metadata"]["namespace"] == namespace:
            secrets[body["metadata"]["name"]] = body["stringData"]
    env = {}
    for var in c["env"]:
        source = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            env[var["name"]] = {"metadata.name": POD_NAME}[source["fieldRef"]["fieldPath"]]
    return env


def parsed_settings(run: ProgramRun) -> Settings:
    c = container(run)
    settings, once = settings_from_args(c["args"], environ=kubelet_env(run, c))
    assert once is False  # a long-running loop, not one iteration
    return settings


# --- where it is deployed ----------------------------------------------------------------------------------


def test_the_autoscaler_is_deployed_exactly_in_task_aware_mode(any_run):
    cfg = stack_config(any_run.stack)
    present = any(r.type == COMPONENT for r in any_run.resources)
    assert present is (cfg.scaling.mode == "task-aware")
    if present:
        assert set(objects(any_run)) == {
            "ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service", "PodDisruptionBudget",
        }
    else:
        assert not [r for r in any_run.resources if r.parent == PARENT]


@pytest.mark.parametrize("mode", ["keda", "hpa"])
def test_other_modes_leave_scaling_to_the_chart(mode):
    cfg = parse_stack_config({"cloud": "local", "scaling": {"mode": mode, "minWorkers": 1}})
    assert component.WorkerAutoscalerArgs.from_stack(cfg).enabled is False


def test_every_child_uses_the_clusters_provider_and_lives_next_to_the_workers(run):
    cfg = stack_config(run.stack)
    children = [r for r in run.resources if r.parent == PARENT]
    providers = {r.options.get("provider") for r in children}
    assert len(providers) == 1 and None not in providers
    assert providers == {r.options.get("provider") for r in run.by_type("kubernetes:helm.sh/v3:Release")}
    for body in objects(run).values():
        assert body["metadata"]["namespace"] == cfg.airflow.namespace


def test_objects_validate_against_the_kubernetes_schema(run):
    version = stack_config(run.stack).kubernetes_version
    for body in objects(run).values():
        assert "<computed>" not in json.dumps(body)
        kubernetes_validate.validate(body, version, strict=True)


# --- the source ConfigMap ----------------------------------------------------------------------------------


SRC = component.PACKAGE_DIR.parents[1]  # src/: import paths are relative to it


def repo_package_files() -> dict[str, bytes]:
    """The autoscaler's files and the (import-free) top-level __init__ that makes airflow_on_k8s a package."""
    paths = [SRC / "airflow_on_k8s" / "__init__.py", *component.PACKAGE_DIR.rglob("*.py")]
    return {p.relative_to(SRC).as_posix(): p.read_bytes() for p in paths}


def test_configmap_holds_every_py_file_of_the_package_byte_for_byte(run):
    data = objects(run)["ConfigMap"]["data"]
    files = repo_package_files()
    assert {"airflow_on_k8s/__init__.py", "airflow_on_k8s/autoscaler/__main__.py", "airflow_on_k8s/autoscaler/settings.py",
            "airflow_on_k8s/autoscaler/actuators/kubernetes.py"} <= set(files)
    assert set(data) == {component.configmap_key(path) for path in files}
    for path, content in files.items():
        assert data[component.configmap_key(path)].encode() == content, path
    size = sum(len(k) + len(v.encode()) for k, v in data.items())
    assert size < 256 * 1024, f"{size} bytes: well under a ConfigMap's 1 MiB"


def test_the_volume_puts_each_key_back_at_its_path_and_python_finds_the_package(run):
    spec = objects(run)["Deployment"]["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if v.get("configMap", {}).get("name") == component.SOURCE_CONFIGMAP]
    assert volume["configMap"]["name"] == objects(run)["ConfigMap"]["metadata"]["name"]
    items = {i["key"]: i["path"] for i in volume["configMap"]["items"]}
    assert items == {component.configmap_key(p): p for p in repo_package_files()}
    c = container(run)
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert PurePosixPath(mount["mountPath"]) == PurePosixPath(env["PYTHONPATH"])
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert c["command"] == ["python", "-m", "airflow_on_k8s.autoscaler"]


def mount_like_kubelet(data: dict[str, str], items: list[dict], root: Path) -> Path:
    """A ConfigMap volume with `items` as the kubelet writes it: the payload in a timestamped folder, `..data`
    linking to it, and a symlink per top-level entry; everything read-only."""
    stamp = root / "..2026_01_01_00_00_00.000000001"
    for item in items:
        target = stamp / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[item["key"]])
    (root / "..data").symlink_to(stamp.name)
    for top in {PurePosixPath(i["path"]).parts[0] for i in items}:
        (root / top).symlink_to(Path("..data") / top)
    for path in sorted(stamp.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    return root


def test_the_mounted_source_imports_and_runs_the_cli(tmp_path):
    run = program_run(TASK_AWARE_STACKS[0])
    spec = objects(run)["Deployment"]["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if v.get("configMap", {}).get("name") == component.SOURCE_CONFIGMAP]
    c = container(run)
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
    root = tmp_path / "opt"
    root.mkdir()
    package = mount_like_kubelet(objects(run)["ConfigMap"]["data"], volume["configMap"]["items"], root)
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    env["PYTHONPATH"] = str(root)  # the mount's parent, as PYTHONPATH names it in the pod
    script = (
        "import importlib, pkgutil, runpy, sys\n"
        "import airflow_on_k8s.autoscaler as p\n"
        f"assert p.__file__.startswith({str(root)!r}), p.__file__\n"
        "names = [m.name for m in pkgutil.walk_packages(p.__path__, 'airflow_on_k8s.autoscaler.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "print(len(names), 'modules')\n"
        "sys.argv = ['airflow_on_k8s.autoscaler', '--help']\n"
        "runpy.run_module('airflow_on_k8s.autoscaler', run_name='__main__')\n"
    )
    # cwd outside the repository, so only the mounted copy can be imported.
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env={"PATH": os.environ["PATH"], **env},
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    expected_modules = len([p for p in repo_package_files() if not p.endswith("/__init__.py") or p.count("/") > 2])
    assert f"{expected_modules} modules" in done.stdout
    assert "--min-workers" in done.stdout and "--lease-name" in done.stdout
    assert not list(package.resolve().rglob("__pycache__"))


def chart_airflow_cfg(config: dict[str, dict[str, str]]) -> str:
    """airflow.cfg as the chart renders its `config` values (chart/templates/configmaps/configmap.yaml: one
    `[section]` per key, `key = value` lines)."""
    def go_string(value) -> str:
        # Values reach Helm as JSON numbers (float64), and sprig's toString prints float64(2) as "2".
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)

    return "".join(f"[{section}]\n" + "".join(f"{k} = {go_string(v)}\n" for k, v in settings.items()) + "\n"
                   for section, settings in config.items())


def test_the_autoscaler_reads_the_charts_airflow_cfg_so_chart_celery_options_reach_it(tmp_path):
    """Issue 11 case 5 in production: the control app must share the workers' broker options. Options set through
    the chart's `config` live only in the chart's airflow.cfg ConfigMap; the autoscaler mounts it where the chart's
    workers have it and points AIRFLOW_CONFIG there, and real Airflow config code reads it. The local stack: the
    clouds' remote logging needs their Airflow providers, which the image has and this test environment lacks."""
    run = program_run("local")
    spec = objects(run)["Deployment"]["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if v.get("configMap", {}).get("name") == AIRFLOW_CONFIG_CONFIGMAP]
    c = container(run)
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
    assert (mount["mountPath"], mount["subPath"], mount["readOnly"]) == (AIRFLOW_CONFIG_PATH, "airflow.cfg", True)
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    assert env["AIRFLOW_CONFIG"] == mount["mountPath"]
    # The chart's config as the program sets it, plus what a user could set through the chart: a broker option.
    (release,) = [r for r in run.by_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "airflow"]
    config = {**release.inputs["values"]["config"], "celery_broker_transport_options": {"visibility_timeout": "7200"}}
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text(chart_airflow_cfg(config))
    env = {**env, "AIRFLOW_CONFIG": str(cfg), "AIRFLOW_HOME": str(tmp_path / "home"), "PATH": os.environ["PATH"],
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    script = ("from airflow_on_k8s.autoscaler.signals.celery_inspect import airflow_celery_config\n"
              "print(airflow_celery_config()['broker_transport_options']['visibility_timeout'])\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "7200"


def test_a_change_to_the_charts_config_rolls_the_pods():
    """The pod template carries a digest of the chart's `config`: stacks whose airflow.cfg differs get different
    digests, so a config change rolls the autoscaler as it rolls the chart's own pods."""
    digests: dict[str, str] = {}
    for stack in TASK_AWARE_STACKS:
        run = program_run(stack)
        annotations = objects(run)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
        (release,) = [r for r in run.by_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "airflow"]
        config = json.dumps(release.inputs["values"]["config"], sort_keys=True)
        digest = annotations[component.CONFIG_CHECKSUM_ANNOTATION]
        assert re.fullmatch(r"[0-9a-f]{64}", digest)
        assert digests.setdefault(config, digest) == digest, "the same config, a different digest"
    assert len(set(digests.values())) == len(digests) > 1, "different configs, the same digest"


def test_a_change_to_the_source_rolls_the_pods(run):
    annotations = objects(run)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    files = component.package_files()
    assert annotations[component.CHECKSUM_ANNOTATION] == component.source_checksum(files)
    path = "airflow_on_k8s/autoscaler/policy.py"
    changed = {**files, path: files[path] + "\n"}
    assert component.source_checksum(changed) != component.source_checksum(files)
    moved = {(path.replace("policy", "policy2") if p == path else p): t for p, t in files.items()}
    assert component.source_checksum(moved) != component.source_checksum(files)


def test_source_that_cannot_ship_in_a_configmap_is_refused():
    with pytest.raises(ValueError, match="ship the package in an image"):
        component.source_configmap_data({"big.py": "x" * (component.MAX_SOURCE_BYTES + 1)})
    with pytest.raises(ValueError, match="same ConfigMap key"):
        component.source_configmap_data({"a/b.py": "", "a.b.py": ""})


# --- command, settings and secrets -------------------------------------------------------------------------


def test_args_and_env_parse_with_the_autoscalers_own_settings(run):
    cfg = stack_config(run.stack)
    settings = parsed_settings(run)
    s = cfg.scaling
    values = run.one("kubernetes:helm.sh/v3:Release", "airflow").inputs["values"]
    assert (settings.actuator, settings.namespace, settings.deployment) == ("kubernetes", cfg.airflow.namespace, WORKER_DEPLOYMENT)
    assert settings.executor == values["executor"]
    assert (settings.min_workers, settings.max_workers) == (s.min_workers, s.max_workers)
    assert settings.worker_concurrency == cfg.airflow.worker_concurrency == values["config"]["celery"]["worker_concurrency"]
    assert settings.target_load_factor == s.target_load_factor
    assert settings.queues == tuple(s.queues)
    assert settings.poll_interval_s == s.poll_interval_seconds
    assert settings.scale_up_stabilization_s == s.scale_up_stabilization_seconds
    assert settings.scale_down_stabilization_s == s.scale_down_stabilization_seconds
    assert settings.scale_up_max_step == s.scale_up_max_step
    assert settings.scale_down_max_step == s.scale_down_max_step
    assert settings.scale_down_cooldown_s == s.scale_down_cooldown_seconds
    assert settings.drain_timeout_s == s.drain_timeout_seconds
    assert settings.per_queue_ceiling is s.per_queue_ceiling
    assert settings.identity == POD_NAME
    assert settings.metrics_port == container(run)["ports"][0]["containerPort"]


def test_the_label_selector_picks_exactly_the_charts_worker_pods(run):
    settings = parsed_settings(run)
    wanted = dict(term.split("=", 1) for term in settings.label_selector.split(","))
    assert wanted == WORKER_POD_LABELS
    scheduler = {**WORKER_POD_LABELS, "component": "scheduler"}
    assert not wanted.items() <= scheduler.items()


def test_connections_come_from_the_airflow_secrets_by_reference_only(run):
    c = container(run)
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {
        "WORKER_AUTOSCALER_DB_URL": {"name": SecretNames.metadata, "key": "connection"},
        "WORKER_AUTOSCALER_BROKER_URL": {"name": SecretNames.broker_url, "key": "connection"},
    }
    settings = parsed_settings(run)
    env = kubelet_env(run, c)
    assert settings.db_url == env["WORKER_AUTOSCALER_DB_URL"] and settings.db_url.startswith("postgresql://")
    assert settings.broker_url == env["WORKER_AUTOSCALER_BROKER_URL"] and settings.broker_url.startswith("redis://")
    # No URL or password anywhere in the written object: only the names of the Secrets.
    deployment = json.dumps(objects(run)["Deployment"])
    for secret_value in (settings.db_url, settings.broker_url, settings.db_url.split("@")[0].split(":")[-1]):
        assert secret_value not in deployment
    assert "://" not in deployment


# --- RBAC --------------------------------------------------------------------------------------------------


def test_role_is_exact_named_and_bound_to_the_pods_service_account(run):
    cfg = stack_config(run.stack)
    o = objects(run)
    rules = o["Role"]["rules"]
    assert rules == [
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "resourceNames": [WORKER_DEPLOYMENT],
         "verbs": ["get", "patch", "update"]},
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "patch"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [component.LEASE], "verbs": ["get", "update"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    ]
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert not any("*" in v for v in rule.get(field, [])), rule
    binding = o["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": o["Role"]["metadata"]["name"]}
    account = o["ServiceAccount"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": cfg.airflow.namespace}]
    assert o["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"] == account


_PATH = re.compile(r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$")
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def authorization(request, namespace: str) -> tuple[str, str, str, str]:
    """(verb, apiGroup, resource[/subresource], name) as the API server's RBAC authorizer sees a request."""
    m = _PATH.match(request.path)
    assert m and m["ns"] == namespace, request.path
    if request.method == "GET":
        verb = "get" if m["name"] else ("watch" if request.query.get("watch") == "true" else "list")
    else:
        verb = _VERBS[request.method]
    resource = m["resource"] + (f"/{m['sub']}" if m["sub"] else "")
    # The authorizer knows no name for create or list: rules with resourceNames never match them.
    return verb, m["group"] or "", resource, m["name"] or ""


def matching_rules(rules: list[dict], verb: str, group: str, resource: str, name: str) -> list[int]:
    return [
        i
        for i, rule in enumerate(rules)
        if verb in rule["verbs"]
        and group in rule["apiGroups"]
        and resource in rule["resources"]
        and (not rule.get("resourceNames") or name in rule["resourceNames"])
    ]


def test_role_allows_every_call_the_real_controller_makes_and_grants_nothing_unused(run, monkeypatch):
    from kubernetes import client, config

    from airflow_on_k8s.autoscaler.__main__ import build_controller

    settings = parsed_settings(run)
    rules = objects(run)["Role"]["rules"]
    kube = FakeKubeWithEvents(namespace=settings.namespace)
    kube.deployment(settings.deployment, 2, match_labels=WORKER_POD_LABELS)
    kube.worker_pods(settings.deployment, ["airflow-worker-a", "airflow-worker-b"])
    kube.pause_controllers()  # only the API calls matter here
    api = kube.api_client()
    # The controller exactly as the pod builds it from these settings, talking to the fake API server.
    monkeypatch.setattr(config, "load_incluster_config", lambda: None)
    monkeypatch.setattr(client, "ApiClient", lambda *a, **k: api)
    controller = build_controller(settings)
    actuator, lease = controller.actuator, controller.lock

    assert lease.try_acquire()  # creates the Lease
    assert lease.try_acquire()  # renews it
    assert actuator.get_replicas() == 2
    actuator.set_replicas(3)
    view = actuator.observe()
    assert [w.name for w in view.workers] == ["airflow-worker-a", "airflow-worker-b"]
    actuator.mark_for_removal(["airflow-worker-b"])
    actuator.clear_marks(["airflow-worker-b"])
    actuator.mark_for_removal(["airflow-worker-b"])
    actuator.remove(["airflow-worker-b"], view.scale.replicas - 1, view.scale)
    # A decision's event, then the same again (its count is patched).
    controller.events.recorder.event("Normal", "ScaledDown", "replicas 3 -> 2")
    controller.events.recorder.event("Normal", "ScaledDown", "replicas 3 -> 2")
    assert [e["count"] for e in kube.events.values()] == [2]
    lease.release()

    used: set[tuple[int, str]] = set()
    for request in kube.requests:
        verb, group, resource, name = authorization(request, settings.namespace)
        allowed = matching_rules(rules, verb, group, resource, name)
        assert allowed, f"the Role does not allow {verb} {group or 'core'}/{resource} {name!r} ({request.method} {request.path})"
        used |= {(i, verb) for i in allowed}
    granted = {(i, verb) for i, rule in enumerate(rules) for verb in rule["verbs"]}
    assert granted == used, f"granted but never used: {granted - used}"
    assert kube.replicas[settings.deployment] == 2 and kube.leases[settings.lease_name]["spec"].get("holderIdentity") is None


# --- pod: probes, metrics, security, placement, availability ---------------------------------------------------


def test_probes_and_scrape_annotations_reach_the_real_metrics_server(run):
    from airflow_on_k8s.autoscaler.metrics import Health, Metrics, MetricsServer

    o = objects(run)
    c = container(run)
    (port,) = c["ports"]
    assert port["name"] == "metrics"
    probes = {kind: c[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {p["port"] for p in probes.values()} == {"metrics"}
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    service = o["Service"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == o["Deployment"]["spec"]["template"]["metadata"]["labels"]
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == "metrics" and service_port["port"] == port["containerPort"]
    scrape = service["metadata"]["annotations"]
    assert scrape == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port["containerPort"]), "prometheus.io/path": "/metrics"}

    clock = [0.0]
    health = Health(liveness_timeout_s=60, readiness_timeout_s=30, clock=lambda: clock[0])
    server = MetricsServer(Metrics(), health, "127.0.0.1", 0).start()

    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    try:
        assert status(probes["livenessProbe"]["path"]) == 200
        assert status(probes["readinessProbe"]["path"]) == 503  # no good iteration yet
        health.succeeded()
        assert status(probes["readinessProbe"]["path"]) == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{scrape['prometheus.io/path']}", timeout=5) as response:
            assert b"airflow_worker_autoscaler_desired_replicas" in response.read()
        clock[0] = 120.0  # no iteration for longer than the liveness timeout: the kubelet restarts it
        assert status(probes["livenessProbe"]["path"]) == 503
    finally:
        server.stop()


def test_pod_runs_non_root_read_only_with_requests_and_limits(run):
    spec = objects(run)["Deployment"]["spec"]["template"]["spec"]
    c = container(run)
    assert c["image"] == f"{AIRFLOW_IMAGE_REPOSITORY}:{AIRFLOW_IMAGE_TAG}"  # the image Airflow already pulls
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 50000
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
    }
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp"}
    assert [v for v in spec["volumes"] if v["name"] == "tmp"][0]["emptyDir"]["sizeLimit"]
    requests, limits = c["resources"]["requests"], c["resources"]["limits"]
    assert requests["cpu"] and requests["memory"] and limits["memory"]


def test_the_cluster_autoscaler_may_discard_every_local_volume_of_the_pod(run):
    # Without the annotation, an emptyDir keeps the Cluster Autoscaler from removing the node (cluster-autoscaler
    # 1.34.1 FAQ.md "What types of pods can prevent CA from removing a node?"; utils/drain/drain.go
    # isLocalVolume: hostPath, or emptyDir not in memory), and the two replicas would pin two system nodes.
    template = objects(run)["Deployment"]["spec"]["template"]
    local = {
        v["name"] for v in template["spec"]["volumes"]
        if "hostPath" in v or ("emptyDir" in v and v["emptyDir"].get("medium") != "Memory")
    }
    assert local == {"tmp"}
    listed = template["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes"]
    assert set(listed.split(",")) == local
    # Still evictable the normal way (no safe-to-evict override): the Lease hands over to the standby.
    assert "cluster-autoscaler.kubernetes.io/safe-to-evict" not in template["metadata"]["annotations"]


def test_pod_runs_on_the_system_pool(run):
    spec = objects(run)["Deployment"]["spec"]["template"]["spec"]
    assert "tolerations" not in spec and "nodeSelector" not in spec
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term == {"matchExpressions": [{"key": TASK_POOL.label_key, "operator": "NotIn", "values": [TASK_POOL.label_value]}]}
    assert "priorityClassName" not in spec  # none is created


def test_two_replicas_a_disruption_budget_and_a_spread(run):
    o = objects(run)
    spec = o["Deployment"]["spec"]
    assert spec["replicas"] == 2
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"] == labels
    assert o["PodDisruptionBudget"]["spec"] == {"minAvailable": 1, "selector": {"matchLabels": labels}}
    (spread,) = spec["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert spread["podAffinityTerm"] == {"labelSelector": {"matchLabels": labels}, "topologyKey": "kubernetes.io/hostname"}


def test_the_deployment_waits_for_the_airflow_release_and_its_own_objects(run):
    deployment = next(r for r in run.resources if r.parent == PARENT and r.type == "kubernetes:apps/v1:Deployment")
    others = {r.name for r in run.resources if r.parent == PARENT and r.type != deployment.type}
    depends = set(deployment.options["dependsOn"])
    assert run.one("kubernetes:helm.sh/v3:Release", "airflow").name in depends
    assert {n for n in others if not n.endswith(("-metrics", "-pdb"))} <= depends


# --- the image ---------------------------------------------------------------------------------------------


def _closure(roots: list[str]) -> set[str]:
    """Distributions installed with `roots` (requirement strings with extras), following markers and extras."""
    seen: set[tuple[str, frozenset]] = set()
    names: set[str] = set()
    pending = [Requirement(r) for r in roots]
    while pending:
        req = pending.pop()
        key = (req.name.lower().replace("_", "-"), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue
        names.add(key[0])
        for line in dist.requires or []:
            child = Requirement(line)
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                pending.append(child)
    return names


def test_the_airflow_image_has_every_library_the_package_imports():
    # The official image installs Airflow with (among others) the celery, cncf.kubernetes, postgres and redis
    # extras; the dev requirements pin the same Airflow with those providers.
    installed = _closure(["apache-airflow[celery,cncf-kubernetes,postgres]"])
    modules = set()
    for path in component.PACKAGE_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.startswith("airflow_on_k8s"):
                    # Only the autoscaler ships into the pod: it may not import the rest of the package.
                    assert node.module.startswith("airflow_on_k8s.autoscaler"), (path, node.module)
                modules.add(node.module.split(".")[0])
    third_party = {m for m in modules if m not in sys.stdlib_module_names and m != "airflow_on_k8s"}
    # SQLAlchemy and kombu load the drivers for the URLs the Secrets hold (postgresql://, redis://) by name.
    third_party |= {"psycopg2", "redis"}
    assert {"kubernetes", "celery", "prometheus_client", "pydantic", "sqlalchemy"} <= third_party
    owners = metadata.packages_distributions()
    for module in sorted(third_party):
        dists = {d.lower().replace("_", "-") for d in owners.get(module, [])}
        assert dists & installed, f"{module} ({dists}) is not installed with Airflow's image extras"


# --- the chart's workers -----------------------------------------------------------------------------------


def local_args(**scaling) -> AirflowArgs:
    return AirflowArgs.from_stack(parse_stack_config({"cloud": "local", "scaling": scaling}))


def test_stopped_workers_get_longer_than_the_autoscalers_own_drain():
    def celery(**scaling):
        return chart_values(local_args(**scaling), local_settings="")["workers"]["celery"]

    assert celery(mode="task-aware")["terminationGracePeriodSeconds"] == CHART_WORKER_GRACE_SECONDS
    long_drain = celery(mode="task-aware", drainTimeoutSeconds=3600, minWorkers=2)
    assert long_drain["terminationGracePeriodSeconds"] == 3660 and long_drain["replicas"] == 2
    for mode in ("keda", "hpa"):
        assert "terminationGracePeriodSeconds" not in celery(mode=mode, minWorkers=1)


def test_each_stacks_workers_outlast_a_drain_and_start_at_min_workers(run):
    cfg = stack_config(run.stack)
    celery = run.one("kubernetes:helm.sh/v3:Release", "airflow").inputs["values"]["workers"]["celery"]
    assert celery["replicas"] == cfg.scaling.min_workers
    assert celery["keda"] == {"enabled": False} and celery["hpa"] == {"enabled": False}
    assert celery["terminationGracePeriodSeconds"] >= parsed_settings(run).drain_timeout_s + 60


def test_an_unchanged_pulumi_up_leaves_the_release_alone():
    # Pulumi upgrades a Helm release only when its inputs change. The worker count survives an upgrade (the
    # post-renderer, tests/test_helm_postrender.py), but an upgrade still rolls pods whose template changed, so a
    # fresh run of the program must produce the very same release inputs (the post-renderer path included).
    stack = TASK_AWARE_STACKS[0]
    cached, fresh = program_run(stack), run_program(stack)

    def inputs(run: ProgramRun, type_: str, name: str) -> dict:
        return run.one(type_, name).inputs

    for type_, name in (("kubernetes:helm.sh/v3:Release", "airflow"), ("kubernetes:apps/v1:Deployment", "worker-autoscaler")):
        assert inputs(fresh, type_, name) == inputs(cached, type_, name), name
