"""The Airflow chart component: Helm values, generated secrets, logs, database, DAG source and scaling modes.

Program runs are the real __main__.py per stack under Pulumi mocks; `chart_values` is also called directly for
settings no stack file uses. The example-DAG ConfigMap is laid out on disk the way the kubelet mounts it and
read with Airflow's own DAG discovery and DagBag.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))

import pytest  # noqa: E402

from airflow_on_k8s.airflow.local_settings import render_local_settings  # noqa: E402
from airflow_on_k8s.airflow import component  # noqa: E402
from airflow_on_k8s.airflow.component import (  # noqa: E402
    RESOURCES,
    SecretNames,
    AirflowArgs,
    chart_values,
    example_dag_files,
    kpo_connection,
)
from airflow_on_k8s.config import parse_stack_config  # noqa: E402
from airflow_on_k8s.task_pool import TASK_POOL  # noqa: E402
from airflow_on_k8s.versions import AIRFLOW_CHART, AIRFLOW_IMAGE_REPOSITORY, AIRFLOW_IMAGE_TAG, AIRFLOW_VERSION  # noqa: E402
from dataclasses import replace  # noqa: E402

from airflow_on_k8s.config import ConfigError  # noqa: E402
from tests.conftest import program_run  # noqa: E402
from tests.test_addons import stack_config  # noqa: E402
from airflow_on_k8s.testing.mock_runtime import ProgramRun, available_stacks  # noqa: E402

RELEASE = "kubernetes:helm.sh/v3:Release"
SECRET = "kubernetes:core/v1:Secret"


@pytest.fixture(params=available_stacks())
def run(request) -> ProgramRun:
    return program_run(request.param)


def values(run: ProgramRun) -> dict:
    return run.one(RELEASE, "airflow").inputs["values"]


def secrets(run: ProgramRun) -> dict[str, dict]:
    return {r.inputs["metadata"]["name"]: r for r in run.by_type(SECRET)}


def local_args(**changes) -> AirflowArgs:
    raw = {"cloud": "local", "airflow": {}, "scaling": {}}
    for key, value in changes.items():
        section, field = key.split("__")
        raw[section][field] = value
    return AirflowArgs.from_stack(parse_stack_config(raw))


# --- release and core values -------------------------------------------------------------------------------


def test_release_is_the_pinned_chart_in_the_airflow_namespace(run):
    cfg = stack_config(run.stack)
    release = run.one(RELEASE, "airflow")
    assert (release.inputs["chart"], release.inputs["version"], release.inputs["repositoryOpts"]["repo"]) == (
        AIRFLOW_CHART.chart,
        AIRFLOW_CHART.version,
        AIRFLOW_CHART.repo,
    )
    assert release.inputs["namespace"] == cfg.airflow.namespace
    assert release.inputs["atomic"] is True
    v = values(run)
    assert v["executor"] == "CeleryExecutor"
    assert (v["defaultAirflowRepository"], v["defaultAirflowTag"], v["airflowVersion"]) == (
        AIRFLOW_IMAGE_REPOSITORY,
        AIRFLOW_IMAGE_TAG,
        AIRFLOW_VERSION,
    )
    assert v["config"]["celery"]["worker_concurrency"] == cfg.airflow.worker_concurrency


def test_local_settings_carry_the_task_pools_label_and_taint(run):
    text = values(run)["airflowLocalSettings"]
    assert text == render_local_settings(TASK_POOL)
    namespace: dict = {}
    exec(compile(text, "airflow_local_settings.py", "exec"), namespace)  # the shipped module loads as is
    assert namespace["TASK_POOL"] == TASK_POOL.as_dict()
    assert "{{" not in text  # the chart passes this value through Helm's tpl


def test_kpo_connection_names_the_task_namespace(run):
    cfg = stack_config(run.stack)
    env = {e["name"]: e["value"] for e in values(run)["env"]}
    connection = json.loads(env["AIRFLOW_CONN_KUBERNETES_DEFAULT"])
    assert connection == {"conn_type": "kubernetes", "extra": {"in_cluster": True, "namespace": cfg.airflow.task_namespace}}
    assert env["AIRFLOW_CONN_KUBERNETES_DEFAULT"] == kpo_connection(cfg.airflow.task_namespace)


def test_scheduler_and_api_server_have_disruption_budgets(run):
    v = values(run)
    for part in ("scheduler", "apiServer"):
        assert v[part]["podDisruptionBudget"] == {"enabled": True, "config": {"maxUnavailable": 1}}, part


def test_ui_stays_on_a_cluster_ip_unless_exposed(run):
    cfg = stack_config(run.stack)
    assert values(run)["apiServer"]["service"]["type"] == ("LoadBalancer" if cfg.airflow.expose_ui else "ClusterIP")
    exposed = chart_values(local_args(airflow__exposeUi=True, airflow__uiSourceRanges=["203.0.113.7/32"]), local_settings="")
    assert exposed["apiServer"]["service"] == {"type": "LoadBalancer", "loadBalancerSourceRanges": ["203.0.113.7/32"]}


def test_an_exposed_ui_needs_source_ranges_or_an_internal_load_balancer():
    with pytest.raises(ConfigError, match=r"airflow-on-k8s:airflow.uiSourceRanges: exposeUi makes an internet-facing"):
        local_args(airflow__exposeUi=True)
    with pytest.raises(ConfigError, match=r"airflow.uiSourceRanges: '203.0.113.7/24' is not a CIDR block"):
        local_args(airflow__exposeUi=True, airflow__uiSourceRanges=["203.0.113.7/24"])  # host bits set
    with pytest.raises(ConfigError, match=r"airflow.exposeUi: is false"):
        local_args(airflow__uiSourceRanges=["203.0.113.0/24"])


@pytest.mark.parametrize(
    ("cloud", "annotation"),
    [
        ("aws", {"service.beta.kubernetes.io/aws-load-balancer-internal": "true", "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal"}),
        ("gcp", {"networking.gke.io/load-balancer-type": "Internal"}),
    ],
)
def test_an_internal_ui_load_balancer_carries_the_clouds_annotation(cloud, annotation):
    args = replace(local_args(airflow__exposeUi=True, airflow__uiInternalLoadBalancer=True), cloud=cloud)
    service = chart_values(args, local_settings="")["apiServer"]["service"]
    assert service == {"type": "LoadBalancer", "annotations": annotation}


def test_exports_tell_how_to_reach_the_ui(run):
    cfg = stack_config(run.stack)
    out = run.outputs
    assert out["airflowNamespace"] == cfg.airflow.namespace
    assert out["taskNamespace"] == cfg.airflow.task_namespace
    assert out["airflowUiService"] == component.UI_SERVICE
    assert out["airflowUiPortForward"] == (
        f"kubectl --namespace {cfg.airflow.namespace} port-forward svc/{component.UI_SERVICE} 8080:8080"
    )
    assert set(out["airflowAdminPassword"]) == {"secret"}


# --- secrets -----------------------------------------------------------------------------------------------


REFERENCED = {
    ("fernetKeySecretName",): (SecretNames.fernet_key, "fernet-key"),
    ("apiSecretKeySecretName",): (SecretNames.api_secret_key, "api-secret-key"),
    ("jwtSecretName",): (SecretNames.jwt_secret, "jwt-secret"),
    ("webserverSecretKeySecretName",): (SecretNames.webserver_secret_key, "webserver-secret-key"),
    ("data", "metadataSecretName"): (SecretNames.metadata, "connection"),
    ("data", "brokerUrlSecretName"): (SecretNames.broker_url, "connection"),
    ("redis", "passwordSecretName"): (SecretNames.redis_password, "password"),
}


def test_chart_reads_every_secret_from_a_kubernetes_secret_the_program_writes(run):
    cfg = stack_config(run.stack)
    v, written = values(run), secrets(run)
    for path, (name, key) in REFERENCED.items():
        node = v
        for part in path:
            node = node[part]
        assert node == name, path
        assert written[name].inputs["metadata"]["namespace"] == cfg.airflow.namespace
        assert key in written[name].inputs["stringData"]["secret"], (name, key)
    admin_env = v["createUserJob"]["env"][0]
    assert admin_env["valueFrom"]["secretKeyRef"] == {"name": SecretNames.admin, "key": "password"}
    assert v["createUserJob"]["defaultUser"]["password"] == "$(AIRFLOW_ADMIN_PASSWORD)"


def test_secret_data_is_recorded_as_pulumi_secrets_and_never_in_helm_values(run):
    plaintexts = []
    for secret in run.by_type(SECRET):
        data = secret.inputs["stringData"]
        assert set(data) == {"secret"}, secret.name  # the whole map is a Pulumi secret
        plaintexts += [v for v in data["secret"].values() if len(v) >= 16]
    assert plaintexts
    dumped = json.dumps(values(run))
    for text in plaintexts:
        for token in {text, *text.replace("@", ":").replace("/", ":").split(":")}:
            if len(token) >= 16 and "mock-password" in token:
                assert token not in dumped


def test_fernet_key_is_32_url_safe_bytes(run):
    import base64

    key = secrets(run)[SecretNames.fernet_key].inputs["stringData"]["secret"]["fernet-key"]
    assert len(base64.urlsafe_b64decode(key)) == 32
    assert "+" not in key and "/" not in key


# --- logs and database ------------------------------------------------------------------------------------


def test_remote_logs_per_cloud(run):
    cfg = stack_config(run.stack)
    v = values(run)
    logging = v["config"].get("logging", {})
    env = {e["name"]: e["value"] for e in v["env"]}
    if cfg.cloud == "local":
        assert "remote_logging" not in logging
        assert v["triggerer"]["persistence"]["enabled"] is True
        for sa in ("scheduler", "apiServer", "dagProcessor", "triggerer"):
            assert v[sa]["serviceAccount"]["annotations"] == {}
        return
    scheme, conn_id, uri = {"aws": ("s3://", "aws_default", "aws://"), "gcp": ("gs://", "google_cloud_default", "google-cloud-platform://")}[cfg.cloud]
    assert logging["remote_logging"] == "True"
    assert logging["remote_base_log_folder"].startswith(scheme) and logging["remote_base_log_folder"].endswith("/logs")
    assert logging["remote_log_conn_id"] == conn_id
    assert env[f"AIRFLOW_CONN_{conn_id.upper()}"] == uri  # no credentials: workload identity supplies them
    annotation = {"aws": "eks.amazonaws.com/role-arn", "gcp": "iam.gke.io/gcp-service-account"}[cfg.cloud]
    for part in (v["workers"]["celery"], v["triggerer"], v["dagProcessor"], v["apiServer"]):
        assert annotation in part["serviceAccount"]["annotations"], part["serviceAccount"]["name"]
    assert v["scheduler"]["serviceAccount"]["annotations"] == {}  # writes no task logs
    assert v["triggerer"]["persistence"] == {"enabled": False}


def test_workers_are_a_deployment_under_the_named_service_account(run):
    celery = values(run)["workers"]["celery"]
    assert celery["persistence"] == {"enabled": False}  # Deployment: pod-deletion-cost works on ReplicaSets only
    assert celery["serviceAccount"]["name"] == component.WORKER_SERVICE_ACCOUNT


def test_database_bundled_or_managed_behind_pgbouncer(run):
    cfg = stack_config(run.stack)
    v, written = values(run), secrets(run)
    connection = written[SecretNames.metadata].inputs["stringData"]["secret"]["connection"]
    if cfg.airflow.database == "bundled":
        assert v["postgresql"]["enabled"] is True
        assert v["postgresql"]["auth"]["existingSecret"] == SecretNames.postgres
        assert "postgres-password" in written[SecretNames.postgres].inputs["stringData"]["secret"]
        assert v["pgbouncer"]["enabled"] is False
        assert f"@airflow-postgresql.{cfg.airflow.namespace}:5432/" in connection
        return
    assert v["postgresql"] == {"enabled": False}
    assert v["pgbouncer"]["enabled"] is True
    assert v["pgbouncer"]["configSecretName"] == SecretNames.pgbouncer_config
    assert v["pgbouncer"]["metricsExporterSidecar"]["statsSecretName"] == SecretNames.pgbouncer_stats
    assert f"@airflow-pgbouncer.{cfg.airflow.namespace}:6543/airflow-metadata" in connection
    ini = written[SecretNames.pgbouncer_config].inputs["stringData"]["secret"]["pgbouncer.ini"]
    assert "server_tls_sslmode = require" in ini
    database = {"aws": "aws:rds/instance:Instance", "gcp": "gcp:sql/databaseInstance:DatabaseInstance"}[cfg.cloud]
    (instance,) = run.by_type(database)
    assert instance.options.get("protect", False) is cfg.protect


def test_managed_database_on_a_local_cluster_is_refused():
    from airflow_on_k8s.contract import NoCloudServices

    with pytest.raises(ValueError, match="airflow.database.*set airflow.database to bundled"):
        NoCloudServices().postgres("airflow-db", parent=None)


# --- DAG source --------------------------------------------------------------------------------------------


def test_dags_from_git_sync_when_a_repo_is_set():
    v = chart_values(local_args(airflow__gitSync={"repo": "https://github.com/org/dags.git", "branch": "prod", "subPath": "flows"}), local_settings="")
    sync = v["dags"]["gitSync"]
    assert (sync["enabled"], sync["repo"], sync["ref"], sync["branch"], sync["subPath"]) == (
        True,
        "https://github.com/org/dags.git",
        "prod",
        "prod",
        "flows",
    )
    assert sync["resources"] == RESOURCES["gitSync"]
    assert "volumes" not in v


def test_example_dags_ship_in_a_configmap_mounted_as_the_dag_folder(run):
    cfg = stack_config(run.stack)
    v = values(run)
    # The worker autoscaler ships its source in a ConfigMap of its own.
    dag_configmaps = [
        r for r in run.by_type("kubernetes:core/v1:ConfigMap") if r.parent == "airflow-on-k8s:airflow:Airflow::airflow"
    ]
    if cfg.airflow.git_sync.repo:
        assert v["dags"]["gitSync"]["enabled"] is True
        assert dag_configmaps == [] and "volumes" not in v
        return
    (configmap,) = dag_configmaps
    assert configmap.inputs["data"] == example_dag_files()
    assert v["volumes"] == [{"name": "example-dags", "configMap": {"name": configmap.inputs["metadata"]["name"]}}]
    assert v["volumeMounts"] == [{"name": "example-dags", "mountPath": "/opt/airflow/dags", "readOnly": True}]


def mount_like_kubelet(data: dict[str, str], root: Path) -> Path:
    """A ConfigMap volume as the kubelet writes it: files in a timestamped folder, `..data` and top-level symlinks."""
    stamp = root / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    for name, text in data.items():
        (stamp / name).write_text(text)
    (root / "..data").symlink_to(stamp.name)
    for name in data:
        (root / name).symlink_to(Path("..data") / name)
    return root


def test_mounted_example_dags_parse_once_each_with_kpo_tasks_and_no_affinity(tmp_path):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.utils.file import list_py_file_paths

    folder = mount_like_kubelet(example_dag_files(), tmp_path / "dags")
    files = list_py_file_paths(folder)
    assert sorted(Path(f).name for f in files) == sorted(n for n in example_dag_files() if n.endswith(".py"))
    assert all("..data" not in f and "..2026" not in f for f in files)

    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    assert set(bag.dags) == {"example_task_pool"}
    dag = bag.dags["example_task_pool"]
    kpo_tasks = [t for t in dag.tasks if isinstance(t, KubernetesPodOperator)]
    assert len(kpo_tasks) == len(dag.tasks) >= 2
    for task in kpo_tasks:
        assert not task.affinity and not task.tolerations and not task.node_selector  # the hook adds them


# --- scaling modes -----------------------------------------------------------------------------------------


def test_keda_mode_enables_the_charts_scaled_object_within_the_stack_bounds():
    celery = chart_values(local_args(scaling__mode="keda", scaling__minWorkers=0, scaling__maxWorkers=7), local_settings="")["workers"]["celery"]
    keda = celery["keda"]
    assert keda["enabled"] is True and celery["hpa"] == {"enabled": False}
    assert (keda["minReplicaCount"], keda["maxReplicaCount"]) == (0, 7)
    assert keda["pollingInterval"] <= 10  # a queued task is noticed within seconds
    assert keda["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0
    assert "replicas" not in celery


def test_hpa_mode_scales_on_cpu_within_the_stack_bounds():
    celery = chart_values(local_args(scaling__mode="hpa", scaling__minWorkers=2, scaling__maxWorkers=9), local_settings="")["workers"]["celery"]
    hpa = celery["hpa"]
    assert hpa["enabled"] is True and celery["keda"] == {"enabled": False}
    assert (hpa["minReplicaCount"], hpa["maxReplicaCount"]) == (2, 9)
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"


def test_task_aware_mode_leaves_a_static_worker_count_for_the_autoscaler():
    celery = chart_values(local_args(scaling__mode="task-aware", scaling__minWorkers=3), local_settings="")["workers"]["celery"]
    assert celery["keda"] == {"enabled": False} and celery["hpa"] == {"enabled": False}
    assert celery["replicas"] == 3


def test_every_stack_sets_its_scaling_mode(run):
    cfg = stack_config(run.stack)
    celery = values(run)["workers"]["celery"]
    assert celery["keda"]["enabled"] is (cfg.scaling.mode == "keda")
    assert celery["hpa"]["enabled"] is (cfg.scaling.mode == "hpa")


# --- first install, eviction, the worker count (issue 8 items 1, 7, 8) ------------------------------------


def test_migration_and_user_jobs_are_plain_jobs_not_post_install_hooks(run):
    # With atomic (so --wait), Helm runs post-install hooks after every workload is ready, and every Airflow
    # pod waits for the migration: the chart's docs/index.rst ("Installing the Helm Chart with Argo CD, Flux,
    # Rancher or Terraform") requires these four values.
    v = values(run)
    for job in ("migrateDatabaseJob", "createUserJob"):
        assert v[job]["useHelmHooks"] is False, job
        assert v[job]["applyCustomEnv"] is False, job
        assert v[job]["ttlSecondsAfterFinished"] == 300, job  # recreated, not patched, by the next upgrade
    assert run.one(RELEASE, "airflow").inputs["atomic"] is True


def test_workers_are_never_evictable_by_a_node_autoscaler(run):
    workers = values(run)["workers"]
    # workers.celery.safeToEvict (chart 1.21.0, apache/airflow#61915) and the deprecated workers.safeToEvict.
    assert workers["celery"]["safeToEvict"] is False
    assert workers["safeToEvict"] is False


def test_keys_a_1_21_template_may_read_at_either_level_are_set_identically(run):
    workers = values(run)["workers"]
    for key in component.WORKER_KEYS_SET_TWICE:
        if key in workers["celery"]:
            assert workers[key] == workers["celery"][key], key
    assert set(workers) - {"celery"} <= set(component.WORKER_KEYS_SET_TWICE)


def test_the_worker_service_account_and_its_log_identity_are_under_both_keys(run):
    # apache/airflow#67261 / #66579: chart 1.21.0 templates read workers.celery.serviceAccount in some places
    # and the deprecated workers.serviceAccount in others; the IRSA / Workload Identity annotation must land.
    cfg = stack_config(run.stack)
    workers = values(run)["workers"]
    assert workers["serviceAccount"] == workers["celery"]["serviceAccount"]
    assert workers["serviceAccount"]["name"] == component.WORKER_SERVICE_ACCOUNT
    if cfg.cloud != "local":
        annotation = {"aws": "eks.amazonaws.com/role-arn", "gcp": "iam.gke.io/gcp-service-account"}[cfg.cloud]
        assert annotation in workers["serviceAccount"]["annotations"]


@pytest.mark.parametrize("min_workers", [0, 1, 4])
def test_task_aware_sets_the_replica_count_under_both_keys_so_zero_renders_as_zero(min_workers):
    # The chart renders `workers.celery.replicas | default workers.replicas`, and `default` treats 0 as unset
    # (tests/test_helm_postrender.py renders it with a real Helm).
    workers = chart_values(local_args(scaling__mode="task-aware", scaling__minWorkers=min_workers), local_settings="")["workers"]
    assert workers["celery"]["replicas"] == workers["replicas"] == min_workers


def test_task_aware_releases_drop_the_worker_replicas_through_a_post_renderer(run):
    cfg = stack_config(run.stack)
    release = run.one(RELEASE, "airflow").inputs
    if cfg.scaling.mode != "task-aware":
        assert not release.get("postrender")  # the chart renders no replicas with its KEDA or HPA on
        return
    # Relative to the project directory Pulumi runs providers in: the same inputs from every checkout.
    assert release["postrender"] == f"./{component.POSTRENDER_COMMAND.as_posix()}"
    assert str(Path.cwd()) not in release["postrender"]
    command = Path.cwd() / component.POSTRENDER_COMMAND
    assert os.access(command, os.X_OK)
    assert "--drop-replicas=Deployment/airflow-worker" in command.read_text()
    assert component.POSTRENDER_TARGETS == (("Deployment", component.WORKER_DEPLOYMENT),)


def test_workers_consume_exactly_the_queues_the_autoscaler_counts_and_drains():
    # Case 4 of issue 11: scaling.queues is the one source of the workers' queues; before, the chart's workers
    # consumed [operators] default_queue whatever scaling.queues said.
    cfg = parse_stack_config({"cloud": "local", "scaling": {"queues": ["etl", "default"]}})
    celery = chart_values(AirflowArgs.from_stack(cfg), local_settings="")["workers"]["celery"]
    shell, flag, command = celery["args"]
    assert (shell, flag) == ("bash", "-c")
    words = command.replace("\\\n", " ").split()
    assert words[:4] == ["exec", "airflow", "celery", "worker"]
    consumed = words[words.index("--queues") + 1].split(",")
    autoscaler = dict(a.split("=", 1) for a in cfg.scaling.autoscaler_args(cfg.airflow.worker_concurrency))
    assert consumed == autoscaler["--queues"].split(",") == ["etl", "default"]


def airflow_env_from_chart_config(config: dict) -> dict[str, str]:
    """The chart writes `config` into airflow.cfg (`key = value | toString`); the same as AIRFLOW__SECTION__KEY."""
    def text(v):
        return str(v).lower() if isinstance(v, bool) else str(v)

    return {f"AIRFLOW__{s.upper()}__{k.upper()}": text(v) for s, opts in config.items() for k, v in opts.items()}


def test_parallelism_never_caps_the_workers_and_pod_operators_defer(tmp_path):
    # Case 9 of issue 11: [core] parallelism (32 per scheduler by default) caps queued + running, so with
    # 10 workers x 16 slots the extra tasks stayed `scheduled`, uncounted; and a non-deferrable KPO holds a
    # worker slot while it only waits for its pod.
    cfg = parse_stack_config({"cloud": "local", "airflow": {"workerConcurrency": 16}, "scaling": {"maxWorkers": 10}})
    config = chart_values(AirflowArgs.from_stack(cfg), local_settings="")["config"]
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), **airflow_env_from_chart_config(config)}
    probe = (
        "from airflow.configuration import conf\n"
        "from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator\n"
        "print(conf.getint('core', 'parallelism'), KubernetesPodOperator(task_id='t', image='busybox').deferrable)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    parallelism, deferrable = out.stdout.split()[-2:]
    assert int(parallelism) >= cfg.scaling.max_workers * cfg.airflow.worker_concurrency
    assert deferrable == "True"
    flags = dict(a.split("=", 1) for a in cfg.scaling.autoscaler_args(cfg.airflow.worker_concurrency))
    assert int(flags["--parallelism"]) == int(parallelism)  # the autoscaler knows the same cap
