"""Apache Airflow from the official chart: CeleryExecutor on the system pool, KubernetesPodOperator pods on the task pool.

What this component adds to the chart's defaults, and why:
- Secrets (Fernet key, API secret key, JWT secret, webserver secret key, database and Redis passwords, admin
  password) are generated once by pulumi_random and written to Kubernetes Secrets that the chart only
  references by name, so no secret appears in the Helm values (or in Helm's release record).
- `airflowLocalSettings` is this repository's pod mutation hook rendered with the task pool's label and taint
  (airflow_on_k8s.airflow.local_settings.render_local_settings), so KubernetesPodOperator pods land on the task pool unasked.
- The `kubernetes_default` connection points KubernetesPodOperator at the task namespace (in-cluster auth);
  the chart's own pod-launching Role is off, so workers can create pods only there (TaskNamespace's Role).
- Requests on every container the chart runs; PodDisruptionBudgets on the scheduler and API server.
- Workers are a Deployment (no per-worker volume): remote logs make a volume unnecessary, and the task-aware
  autoscaler relies on `controller.kubernetes.io/pod-deletion-cost`, which only ReplicaSets honour.
- Metadata database: the chart's Postgres (`airflow.database: bundled`) or the cloud's managed Postgres behind
  PgBouncer (`managed`). Remote task logs go to the cloud's bucket through workload identity; on a local
  cluster they stay on the pods.
- DAGs: git-sync from `airflow.gitSync.repo`; without a repo, the example DAGs in this repository's `airflow_on_k8s/airflow/dags/`
  are shipped in a ConfigMap mounted as the DAG folder (read-only; edit them here and `pulumi up`).
- The database migration and admin-user jobs are plain Jobs, not Helm hooks: Helm (atomic, so waiting) runs
  post-install hooks only after every workload is ready, and every Airflow pod waits in an init container
  for the migration, so hooks deadlock the first install (the chart's docs/index.rst, "Installing the Helm
  Chart with Argo CD, Flux, Rancher or Terraform": `useHelmHooks: false` and `applyCustomEnv: false` on both).
- Celery workers are never evictable by a node autoscaler (`safe-to-evict: "false"`): a busy worker would
  be drained with a grace capped at 10 minutes; idle ones are removed by the worker count's owner anyway.
- In task-aware mode the release never sets the worker Deployment's replica count: a post-renderer removes
  it from the rendered manifests, so upgrades and rollbacks leave the autoscaler's count alone
  (airflow_on_k8s/airflow/helm_postrender.py).
- Redis, the bundled Postgres and PgBouncer accept connections only from Airflow's own pods
  (airflow_on_k8s/airflow/network_policies.py); Pod Security Standards `baseline` on the namespace.
- `airflow.exposeUi` requires `airflow.uiSourceRanges` (the chart's `apiServer.service.loadBalancerSourceRanges`)
  or `airflow.uiInternalLoadBalancer`.
"""

from __future__ import annotations

import hashlib

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from airflow_on_k8s.airflow.local_settings import render_local_settings
from airflow_on_k8s.contract import (
    BucketGrant,
    CloudServices,
    KubernetesCluster,
    LogStore,
    PostgresDatabase,
    register_annotated_outputs,
)
from airflow_on_k8s.config import StackConfig
from airflow_on_k8s._helm import pinned_release
from airflow_on_k8s.airflow.helm_postrender import write_command
from airflow_on_k8s.addons.keda import KEDA_NAMESPACE
from airflow_on_k8s.airflow.network_policies import KEDA_OPERATOR, PSS_LABELS, namespace_selector, store_policy
from airflow_on_k8s.versions import AIRFLOW_CHART, AIRFLOW_IMAGE_REPOSITORY, AIRFLOW_IMAGE_TAG, AIRFLOW_VERSION

RELEASE = "airflow"
EXECUTOR = "CeleryExecutor"
AIRFLOW_HOME = "/opt/airflow"
# The chart renders its `config` values into this ConfigMap's `airflow.cfg` and mounts it read-only at
# <airflowHome>/airflow.cfg in its own pods (chart/templates/_helpers.yaml: "airflow_config",
# "airflow_config_path", "airflow_config_mount"; templates/configmaps/configmap.yaml).
AIRFLOW_CONFIG_CONFIGMAP = f"{RELEASE}-airflow-config"
AIRFLOW_CONFIG_PATH = f"{AIRFLOW_HOME}/airflow.cfg"
DAGS_DIR = Path(__file__).resolve().parent / "dags"

# Service accounts, named here so RBAC and workload identity can refer to them before the chart exists.
WORKER_SERVICE_ACCOUNT = f"{RELEASE}-worker"
TRIGGERER_SERVICE_ACCOUNT = f"{RELEASE}-triggerer"
DAG_PROCESSOR_SERVICE_ACCOUNT = f"{RELEASE}-dag-processor"
API_SERVER_SERVICE_ACCOUNT = f"{RELEASE}-api-server"
SCHEDULER_SERVICE_ACCOUNT = f"{RELEASE}-scheduler"
# Run KubernetesPodOperator code: workers execute tasks, the triggerer watches deferred ones.
POD_LAUNCHER_SERVICE_ACCOUNTS = (WORKER_SERVICE_ACCOUNT, TRIGGERER_SERVICE_ACCOUNT)

UI_SERVICE = f"{RELEASE}-api-server"
UI_PORT = 8080
ADMIN_USER = "admin"

# Chart 1.21.0 labels (tier/component/release on every Airflow pod; the bundled Postgres is a Bitnami-style
# subchart labelled by chart name and release). The worker autoscaler's own labels are added by its component.
AIRFLOW_POD_LABELS = {"tier": "airflow", "release": RELEASE}
REDIS_POD_LABELS = {"tier": "airflow", "component": "redis", "release": RELEASE}
PGBOUNCER_POD_LABELS = {"tier": "airflow", "component": "pgbouncer", "release": RELEASE}
POSTGRES_POD_LABELS = {"app.kubernetes.io/name": "postgresql", "app.kubernetes.io/instance": RELEASE}
REDIS_PORT, POSTGRES_PORT, PGBOUNCER_PORT, PGBOUNCER_METRICS_PORT = 6379, 5432, 6543, 9127
# Pods outside the chart that talk to Redis and the metadata database (airflow_on_k8s/airflow/worker_autoscaler.py).
WORKER_AUTOSCALER_POD_LABELS = {"app.kubernetes.io/name": "worker-autoscaler", "app.kubernetes.io/part-of": RELEASE}

# Load-balancer annotations that make the UI's Service internal to the VPC/network, per cloud.
INTERNAL_LB_ANNOTATIONS: dict[str, dict[str, str]] = {
    # The in-tree AWS cloud provider, and the AWS Load Balancer Controller where one is installed.
    "aws": {
        "service.beta.kubernetes.io/aws-load-balancer-internal": "true",
        "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal",
    },
    "gcp": {"networking.gke.io/load-balancer-type": "Internal"},
    "local": {},
}
# Where the post-renderer command is written, relative to the directory Pulumi runs the program and its
# providers from (the project directory): a relative path keeps the release's inputs the same on every
# machine, so a `pulumi up` from another checkout does not upgrade the release. Under `pulumi package add` the
# component provider and the Kubernetes provider both start in the program's directory too (pulumi
# sdk/go/common/resource/plugin/plugin.go: `cmd.Dir = pwd` for binaries, `WorkingDirectory: ctx.Pwd` for
# PulumiPlugin.yaml plugins); tests/test_package.py runs the written script as Helm would.
POSTRENDER_COMMAND = Path(".airflow-on-k8s") / "helm-postrender-airflow"


class SecretNames:
    """Kubernetes Secrets this component writes; the chart reads them by these names and keys."""

    fernet_key = f"{RELEASE}-fernet-key"  # key fernet-key
    api_secret_key = f"{RELEASE}-api-secret-key"  # key api-secret-key
    jwt_secret = f"{RELEASE}-jwt-secret"  # key jwt-secret
    webserver_secret_key = f"{RELEASE}-webserver-secret-key"  # key webserver-secret-key
    metadata = f"{RELEASE}-metadata-connection"  # key connection
    broker_url = f"{RELEASE}-broker-url"  # key connection
    redis_password = f"{RELEASE}-redis-password"  # key password
    postgres = f"{RELEASE}-postgresql-auth"  # key postgres-password (bundled database)
    pgbouncer_config = f"{RELEASE}-pgbouncer-config"  # keys pgbouncer.ini, users.txt (managed database)
    pgbouncer_stats = f"{RELEASE}-pgbouncer-stats"  # key connection (managed database)
    admin = f"{RELEASE}-admin"  # key password


def _res(cpu: str, memory: str, memory_limit: str) -> dict[str, Any]:
    # Memory limits stop a leak from taking the node; no CPU limits, since throttling Airflow's loops only adds lag.
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory_limit}}


RESOURCES: dict[str, dict[str, Any]] = {
    "scheduler": _res("500m", "1Gi", "2Gi"),
    "apiServer": _res("250m", "1Gi", "2Gi"),
    "dagProcessor": _res("250m", "768Mi", "1536Mi"),
    "triggerer": _res("250m", "512Mi", "1Gi"),
    "logGroomer": _res("10m", "32Mi", "128Mi"),
    "redis": _res("100m", "128Mi", "512Mi"),
    "statsd": _res("50m", "64Mi", "128Mi"),
    "pgbouncer": _res("50m", "64Mi", "256Mi"),
    "pgbouncerExporter": _res("10m", "32Mi", "64Mi"),
    "postgresql": _res("250m", "512Mi", "1Gi"),
    "gitSync": _res("20m", "64Mi", "256Mi"),
    "migrateDatabaseJob": _res("200m", "512Mi", "1Gi"),
    "createUserJob": _res("100m", "512Mi", "1Gi"),
}


def worker_resources(concurrency: int) -> dict[str, Any]:
    """A Celery worker: the worker process plus one forked task process per slot (KPO tasks mostly wait)."""
    memory = 512 + 192 * concurrency
    return _res(f"{200 + 50 * concurrency}m", f"{memory}Mi", f"{memory * 2}Mi")


def kpo_connection(task_namespace: str) -> str:
    """`kubernetes_default` for KubernetesPodOperator: in-cluster credentials, pods in the task namespace."""
    return json.dumps({"conn_type": "kubernetes", "extra": {"in_cluster": True, "namespace": task_namespace}})


def example_dag_files() -> dict[str, str]:
    """The ConfigMap data that serves airflow_on_k8s/airflow/dags/ as the DAG folder when no git repository is configured."""
    files = {p.name: p.read_text() for p in sorted(DAGS_DIR.glob("*.py"))}
    # A mounted ConfigMap keeps its files in a hidden `..<timestamp>` folder, linked again as `..data`, behind
    # the visible symlinks; Airflow's DAG walker follows links, meets that folder twice and stops with a
    # "recursive loop" error unless both are ignored (tests/test_airflow_component.py mounts it the same way).
    files[".airflowignore"] = "..*\n"
    return files


@dataclass(frozen=True)
class AirflowArgs:
    """How Airflow is installed; `from_stack` maps the stack config's `airflow` and `scaling` sections onto it."""

    cloud: str
    """Where the cluster runs (aws, gcp, local): picks the remote-log store and the internal load balancer kind."""
    namespace: str
    """The namespace Airflow's components run in (created)."""
    task_namespace: str
    """The namespace KubernetesPodOperator pods run in (TaskNamespace creates it)."""
    worker_concurrency: int
    """Task slots per Celery worker ([celery] worker_concurrency)."""
    database: str
    """`bundled` (the chart's PostgreSQL) or `managed` (the cloud's, from CloudServices, behind PgBouncer)."""
    git_repo: str
    """A git repository to sync DAGs from; empty ships this package's example DAGs in a ConfigMap."""
    git_branch: str
    """The branch git-sync follows."""
    git_sub_path: str
    """The folder of the repository that holds the DAGs."""
    expose_ui: bool
    """Put the UI behind a LoadBalancer Service (needs ui_source_ranges or ui_internal_load_balancer)."""
    scaling_mode: str
    """How the Celery workers scale: `task-aware` (the worker autoscaler), `keda` or `hpa` (in the chart)."""
    min_workers: int
    """Fewest Celery workers."""
    max_workers: int
    """Most Celery workers."""
    drain_timeout_seconds: int = 300
    """task-aware: the longest the autoscaler waits for a worker to finish its tasks; the workers' grace period
    outlasts it (worker_grace_seconds)."""
    ui_source_ranges: tuple[str, ...] = ()
    """expose_ui: the CIDRs that may reach the UI's load balancer."""
    ui_internal_load_balancer: bool = False
    """expose_ui: an internal load balancer (reachable from the VPC only) instead of an internet-facing one."""
    worker_queues: tuple[str, ...] = ("default",)
    """The Celery queues every worker consumes: the autoscaler counts and drains the same ones."""
    parallelism: int = 32
    """Airflow's [core] parallelism (ScalingConfig.parallelism), so it never caps the workers."""

    @classmethod
    def from_stack(cls, config: StackConfig) -> AirflowArgs:
        a, s = config.airflow, config.scaling
        return cls(
            cloud=config.cloud,
            namespace=a.namespace,
            task_namespace=a.task_namespace,
            worker_concurrency=a.worker_concurrency,
            database=a.database,
            git_repo=a.git_sync.repo,
            git_branch=a.git_sync.branch,
            git_sub_path=a.git_sync.sub_path,
            expose_ui=a.expose_ui,
            scaling_mode=s.mode,
            min_workers=s.min_workers,
            max_workers=s.max_workers,
            drain_timeout_seconds=s.drain_timeout_seconds,
            ui_source_ranges=tuple(a.ui_source_ranges),
            ui_internal_load_balancer=a.ui_internal_load_balancer,
            worker_queues=tuple(s.queues),
            parallelism=s.parallelism(a.worker_concurrency),
        )


def scaling_values(args: AirflowArgs) -> dict[str, Any]:
    """The `workers.celery` keys that decide how many Celery workers run."""
    keda_off, hpa_off = {"enabled": False}, {"enabled": False}
    if args.scaling_mode == "keda":
        return {
            "keda": {
                "enabled": True,
                # The chart's SQL trigger: ceil((queued + running) / worker_concurrency) on the default queue.
                "pollingInterval": 5,
                # Seconds with no queued/running task before the last worker goes (scale to zero).
                "cooldownPeriod": 120,
                "minReplicaCount": args.min_workers,
                "maxReplicaCount": args.max_workers,
                # Scale down one worker a minute after two quiet minutes: a draining worker finishes its tasks
                # (terminationGracePeriodSeconds) and a burst right after a lull finds workers still up.
                "advanced": {
                    "horizontalPodAutoscalerConfig": {
                        "behavior": {
                            "scaleDown": {
                                "stabilizationWindowSeconds": 120,
                                "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                            }
                        }
                    }
                },
            },
            "hpa": hpa_off,
        }
    if args.scaling_mode == "hpa":
        return {
            "keda": keda_off,
            "hpa": {
                "enabled": True,
                "minReplicaCount": args.min_workers,
                "maxReplicaCount": args.max_workers,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
            },
        }
    # task-aware: the worker autoscaler (airflow_on_k8s/airflow/worker_autoscaler.py) owns the replica count. The chart
    # renders `replicas` unless its KEDA or HPA is on (either would fight the autoscaler); the release's
    # post-renderer removes it again (airflow_on_k8s/airflow/helm_postrender.py), so no upgrade or rollback resets it and a
    # new Deployment starts at Kubernetes' default of one worker. `replicas` stays here for a release rendered
    # without the post-renderer (`helm template`); worker_values repeats it under the deprecated key because
    # the chart renders `workers.celery.replicas | default workers.replicas`, and `default` treats 0 as unset.
    return {
        "replicas": args.min_workers,
        "keda": keda_off,
        "hpa": hpa_off,
        "terminationGracePeriodSeconds": worker_grace_seconds(args.drain_timeout_seconds),
    }


# The chart's default grace period for a Celery worker's warm shutdown.
CHART_WORKER_GRACE_SECONDS = 600


def worker_grace_seconds(drain_timeout_seconds: int) -> int:
    """Time a stopped worker gets to finish its running tasks: never less than the chart's default, and
    always more than the autoscaler's drain timeout (plus a minute to shut down), as the last line of
    defence when something other than the autoscaler stops a busy worker (Helm upgrade, node drain)."""
    return max(CHART_WORKER_GRACE_SECONDS, drain_timeout_seconds + 60)


def worker_args(queues: tuple[str, ...]) -> list[str]:
    """The chart's default worker command (values.yaml `workers.celery.args`: bash -c "exec airflow celery
    worker") with the queues named: without --queues a worker consumes only [operators] default_queue."""
    return ["bash", "-c", f"exec \\\nairflow celery worker --queues {','.join(queues)}"]


WORKER_DEPLOYMENT = f"{RELEASE}-worker"
# What the post-renderer takes `spec.replicas` away from in task-aware mode.
POSTRENDER_TARGETS = (("Deployment", WORKER_DEPLOYMENT),)

# Worker keys that chart 1.21.0 moved under `workers.celery` while still reading the old `workers` ones in some
# templates (1.19-1.21 release notes: "deprecated in favor of workers.celery.*"; apache/airflow#67261 and
# #66579 show 1.21.0 templates mixing both). Where a wrong read would kill tasks or lose the log identity,
# the value goes under both keys, so the rendering is right whichever one a template reads.
WORKER_KEYS_SET_TWICE = ("safeToEvict", "serviceAccount", "replicas", "terminationGracePeriodSeconds")


def worker_values(args: AirflowArgs, service_account: dict[str, Any], groomer: dict[str, Any]) -> dict[str, Any]:
    """The chart's `workers` section: `workers.celery` plus the deprecated twins of WORKER_KEYS_SET_TWICE."""
    celery: dict[str, Any] = {
        "resources": worker_resources(args.worker_concurrency),
        "logGroomerSidecar": groomer,
        "persistence": {"enabled": False},
        "serviceAccount": service_account,
        # The chart renders cluster-autoscaler.kubernetes.io/safe-to-evict from this on every worker pod.
        # "false": the Cluster Autoscaler (and GKE's) never drains a node under a busy worker; idle workers
        # are removed by the worker count's owner (the task-aware autoscaler, KEDA or the HPA).
        "safeToEvict": False,
        "args": worker_args(args.worker_queues),
        **scaling_values(args),
    }
    workers = {key: celery[key] for key in WORKER_KEYS_SET_TWICE if key in celery}
    return {**workers, "celery": celery}
# The chart's labels on worker pods (its Deployment's selector).
WORKER_POD_LABELS = {"tier": "airflow", "component": "worker", "release": RELEASE}


def chart_values(
    args: AirflowArgs,
    *,
    local_settings: str,
    log_store: LogStore | None = None,
    service_account_annotations: dict[str, Any] | None = None,
    managed_database: bool = False,
) -> dict[str, Any]:
    """The Helm values for the Airflow chart. Secrets appear only by Secret name."""
    sa = service_account_annotations or {}

    def service_account(name: str) -> dict[str, Any]:
        return {"create": True, "name": name, "annotations": sa.get(name, {})}

    def groomer() -> dict[str, Any]:
        return {"resources": RESOURCES["logGroomer"]}

    env = [{"name": "AIRFLOW_CONN_KUBERNETES_DEFAULT", "value": kpo_connection(args.task_namespace)}]
    config: dict[str, Any] = {
        "celery": {"worker_concurrency": args.worker_concurrency},
        # The scheduler queues at most this many tasks; the autoscaler gets the same number (--parallelism).
        "core": {"parallelism": args.parallelism},
        # A non-deferrable KubernetesPodOperator holds a Celery slot (and blocks a drain) for its pod's whole
        # life; deferred, it waits in the triggerer instead (KPO reads operators.default_deferrable).
        "operators": {"default_deferrable": True},
    }
    if log_store is not None:
        env.append({"name": f"AIRFLOW_CONN_{log_store.connection_id.upper()}", "value": log_store.connection_uri})
        config["logging"] = {
            "remote_logging": "True",
            "remote_base_log_folder": log_store.base_url,
            "remote_log_conn_id": log_store.connection_id,
            "delete_local_logs": "True",
        }

    values: dict[str, Any] = {
        "executor": EXECUTOR,
        "defaultAirflowRepository": AIRFLOW_IMAGE_REPOSITORY,
        "defaultAirflowTag": AIRFLOW_IMAGE_TAG,
        "airflowVersion": AIRFLOW_VERSION,
        "airflowLocalSettings": local_settings,
        # Workers get pod rights in the task namespace only (TaskNamespace), not in Airflow's own namespace.
        "allowPodLaunching": False,
        "env": env,
        "config": config,
        "fernetKeySecretName": SecretNames.fernet_key,
        "apiSecretKeySecretName": SecretNames.api_secret_key,
        "jwtSecretName": SecretNames.jwt_secret,
        "webserverSecretKeySecretName": SecretNames.webserver_secret_key,
        "data": {"metadataSecretName": SecretNames.metadata, "brokerUrlSecretName": SecretNames.broker_url},
        "scheduler": {
            "resources": RESOURCES["scheduler"],
            "logGroomerSidecar": groomer(),
            "podDisruptionBudget": {"enabled": True, "config": {"maxUnavailable": 1}},
            "serviceAccount": service_account(SCHEDULER_SERVICE_ACCOUNT),
        },
        "apiServer": {
            "resources": RESOURCES["apiServer"],
            "podDisruptionBudget": {"enabled": True, "config": {"maxUnavailable": 1}},
            "service": ui_service_values(args),
            "serviceAccount": service_account(API_SERVER_SERVICE_ACCOUNT),
        },
        "dagProcessor": {
            "resources": RESOURCES["dagProcessor"],
            "logGroomerSidecar": groomer(),
            "serviceAccount": service_account(DAG_PROCESSOR_SERVICE_ACCOUNT),
        },
        "triggerer": {
            "resources": RESOURCES["triggerer"],
            "logGroomerSidecar": groomer(),
            "serviceAccount": service_account(TRIGGERER_SERVICE_ACCOUNT),
            # With remote logs the triggerer needs no volume of its own.
            "persistence": {"enabled": False} if log_store else {"enabled": True, "size": "10Gi"},
        },
        "workers": worker_values(args, service_account(WORKER_SERVICE_ACCOUNT), groomer()),
        "redis": {"resources": RESOURCES["redis"], "passwordSecretName": SecretNames.redis_password},
        "statsd": {"resources": RESOURCES["statsd"]},
        # Plain Jobs, not post-install hooks (see the module docstring): the deadlock fix from the chart's docs.
        "migrateDatabaseJob": {"resources": RESOURCES["migrateDatabaseJob"], **NO_HOOKS},
        "createUserJob": {
            "resources": RESOURCES["createUserJob"],
            **NO_HOOKS,
            # Kubernetes expands $(VAR) in args from the container's env, so the password never enters the values.
            "defaultUser": {"username": ADMIN_USER, "password": "$(AIRFLOW_ADMIN_PASSWORD)"},
            "env": [
                {
                    "name": "AIRFLOW_ADMIN_PASSWORD",
                    "valueFrom": {"secretKeyRef": {"name": SecretNames.admin, "key": "password"}},
                }
            ],
        },
        "pgbouncer": {
            "enabled": managed_database,
            "resources": RESOURCES["pgbouncer"],
            "metricsExporterSidecar": {"resources": RESOURCES["pgbouncerExporter"]},
        },
        "postgresql": {"enabled": not managed_database},
        # The chart's own policies would cut off the worker autoscaler; ours are in airflow_network_policies.
        "networkPolicies": {"enabled": False},
    }
    if managed_database:
        values["pgbouncer"].update(
            configSecretName=SecretNames.pgbouncer_config,
            metricsExporterSidecar={
                "resources": RESOURCES["pgbouncerExporter"],
                "statsSecretName": SecretNames.pgbouncer_stats,
                "statsSecretKey": "connection",
            },
        )
    else:
        values["postgresql"].update(
            auth={"enablePostgresUser": True, "existingSecret": SecretNames.postgres},
            primary={"resources": RESOURCES["postgresql"]},
        )
    if args.git_repo:
        values["dags"] = {
            "gitSync": {
                "enabled": True,
                "repo": args.git_repo,
                "branch": args.git_branch,
                "ref": args.git_branch,
                "subPath": args.git_sub_path,
                "resources": RESOURCES["gitSync"],
            }
        }
    else:
        values["volumes"] = [{"name": "example-dags", "configMap": {"name": f"{RELEASE}-example-dags"}}]
        values["volumeMounts"] = [{"name": "example-dags", "mountPath": f"{AIRFLOW_HOME}/dags", "readOnly": True}]
    return values


# chart/docs/index.rst, "Installing the Helm Chart with Argo CD, Flux, Rancher or Terraform": with these
# off the jobs are ordinary release objects that start with everything else; `applyCustomEnv: false` keeps
# the release-wide `env` (connections for tasks) out of them.
# `ttlSecondsAfterFinished`: a finished Job is deleted, so the next upgrade creates it afresh (and migrates a
# new Airflow version) instead of patching a Job whose pod template is immutable.
NO_HOOKS = {"useHelmHooks": False, "applyCustomEnv": False, "ttlSecondsAfterFinished": 300}


def ui_service_values(args: AirflowArgs) -> dict[str, Any]:
    """`apiServer.service`: ClusterIP, or a LoadBalancer limited to `uiSourceRanges` and/or internal."""
    if not args.expose_ui:
        return {"type": "ClusterIP"}
    service: dict[str, Any] = {"type": "LoadBalancer"}
    if args.ui_source_ranges:
        # chart 1.21.0 templates/api-server/api-server-service.yaml renders it as spec.loadBalancerSourceRanges.
        service["loadBalancerSourceRanges"] = list(args.ui_source_ranges)
    if args.ui_internal_load_balancer:
        service["annotations"] = dict(INTERNAL_LB_ANNOTATIONS[args.cloud])
    if not args.ui_source_ranges and not args.ui_internal_load_balancer:
        raise ValueError("exposeUi needs uiSourceRanges or uiInternalLoadBalancer (the config checks this)")
    return service


def airflow_network_policies(namespace: str, *, managed_database: bool, scaling_mode: str) -> list[dict[str, Any]]:
    """Ingress policies for Redis and the metadata database (bundled Postgres or PgBouncer)."""
    clients: list[dict[str, Any]] = [
        {"podSelector": {"matchLabels": AIRFLOW_POD_LABELS}},
        {"podSelector": {"matchLabels": WORKER_AUTOSCALER_POD_LABELS}},
    ]
    db_clients = list(clients)
    if scaling_mode == "keda":
        # The chart's ScaledObject runs its SQL trigger from the KEDA operator, in KEDA's namespace.
        db_clients.append({"namespaceSelector": namespace_selector(KEDA_NAMESPACE), "podSelector": {"matchLabels": KEDA_OPERATOR}})
    labels = {"app.kubernetes.io/part-of": "airflow"}
    policies = [store_policy(f"{RELEASE}-redis-clients", namespace, REDIS_POD_LABELS, [REDIS_PORT], clients, labels)]
    if managed_database:
        policies.append(
            store_policy(
                f"{RELEASE}-pgbouncer-clients",
                namespace,
                PGBOUNCER_POD_LABELS,
                [PGBOUNCER_PORT, PGBOUNCER_METRICS_PORT],
                db_clients,
                labels,
            )
        )
    else:
        policies.append(
            store_policy(f"{RELEASE}-postgresql-clients", namespace, POSTGRES_POD_LABELS, [POSTGRES_PORT], db_clients, labels)
        )
    return policies


def pgbouncer_ini(db: PostgresDatabase, host: str, port: int, release: str = RELEASE) -> str:
    """pgbouncer.ini as the chart would write it, with the managed database as the backend (TLS required)."""
    return "\n".join(
        [
            "[databases]",
            f"{release}-metadata = host={host} dbname={db.database} port={port} pool_size=10",
            f"{release}-result-backend = host={host} dbname={db.database} port={port} pool_size=5",
            "",
            "[pgbouncer]",
            "pool_mode = transaction",
            "listen_port = 6543",
            "listen_addr = *",
            "auth_type = scram-sha-256",
            "auth_file = /etc/pgbouncer/users.txt",
            f"stats_users = {db.user}",
            "ignore_startup_parameters = extra_float_digits",
            "max_client_conn = 100",
            f"server_tls_sslmode = {db.sslmode}",
            "",
        ]
    )


class Airflow(pulumi.ComponentResource):
    """Airflow's namespace, generated secrets, DAG source, remote-log identity and the pinned chart release."""

    namespace: pulumi.Output[str]
    """The namespace Airflow runs in."""
    port_forward: pulumi.Output[str]
    """The kubectl command that opens the UI on localhost."""
    admin_password: pulumi.Output[str]
    """The UI login's password (secret), the one the create-user job sets."""
    ui_service: str
    """Python-only: the API server / UI Service's name (ClusterIP unless exposed), fixed by the chart."""
    ui_port: int
    """Python-only: the UI Service's port."""
    admin_user: str
    """Python-only: the UI login's user name."""
    worker_deployment: str
    """Python-only: the Celery worker Deployment's name (the task-aware autoscaler scales it)."""
    config_checksum: pulumi.Output[str]
    """A digest of the chart's `config` values (the rendered airflow.cfg): pods that mount it roll when it changes."""
    release: k8s.helm.v3.Release
    """Python-only: the Helm release; depend on it to wait for Airflow."""

    def __init__(
        self,
        name: str,
        args: AirflowArgs,
        cluster: KubernetesCluster,
        services: CloudServices,
        opts: pulumi.ResourceOptions | None = None,
        depends_on: list[pulumi.Resource] | None = None,
    ) -> None:
        super().__init__("airflow-on-k8s:airflow:Airflow", name, None, opts)
        self._cluster = cluster
        namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=args.namespace, labels={"app.kubernetes.io/part-of": "airflow", **PSS_LABELS}
            ),
            opts=pulumi.ResourceOptions(parent=self, provider=cluster.provider),
        )
        self.namespace = namespace.metadata.name
        self._in_namespace = pulumi.ResourceOptions(parent=self, provider=cluster.provider, depends_on=[namespace])
        prerequisites: list[pulumi.Resource] = [namespace]
        # Cloud-side resources (bucket, database, identities) live under the cluster component, next to the rest
        # of the cloud account's resources; everything inside Kubernetes lives under this component.
        cloud_parent = cluster if isinstance(cluster, pulumi.Resource) else self

        def secret(suffix: str, length: int) -> pulumi.Output[str]:
            # Generated once and kept in the stack's state; no special characters, as they end up in URLs.
            return random.RandomPassword(
                f"{name}-{suffix}", length=length, special=False, opts=pulumi.ResourceOptions(parent=self)
            ).result

        fernet = random.RandomBytes(f"{name}-fernet-key", length=32, opts=pulumi.ResourceOptions(parent=self))
        # Fernet keys are URL-safe base64 of 32 bytes.
        fernet_key = fernet.base64.apply(lambda b: b.replace("+", "-").replace("/", "_"))
        admin_password = secret("admin-password", 24)
        redis_password = secret("redis-password", 32)
        prerequisites += [
            self._secret(SecretNames.fernet_key, {"fernet-key": fernet_key}),
            self._secret(SecretNames.api_secret_key, {"api-secret-key": secret("api-secret-key", 48)}),
            self._secret(SecretNames.jwt_secret, {"jwt-secret": secret("jwt-secret", 64)}),
            self._secret(SecretNames.webserver_secret_key, {"webserver-secret-key": secret("webserver-secret-key", 48)}),
            self._secret(SecretNames.admin, {"password": admin_password}),
            self._secret(SecretNames.redis_password, {"password": redis_password}),
            self._secret(
                SecretNames.broker_url,
                {"connection": pulumi.Output.concat("redis://:", redis_password, f"@{RELEASE}-redis:6379/0")},
            ),
        ]

        managed = args.database == "managed"
        if managed:
            database = services.postgres(f"{name}-db", parent=cloud_parent)
            prerequisites += self._managed_database_secrets(args, database)
        else:
            postgres_password = secret("postgres-password", 32)
            host = f"{RELEASE}-postgresql.{args.namespace}"
            prerequisites += [
                self._secret(SecretNames.postgres, {"postgres-password": postgres_password}),
                self._secret(
                    SecretNames.metadata,
                    {
                        "connection": pulumi.Output.concat(
                            "postgresql://postgres:", postgres_password, f"@{host}:5432/postgres?sslmode=disable"
                        )
                    },
                ),
            ]

        if not args.git_repo:
            prerequisites.append(
                k8s.core.v1.ConfigMap(
                    f"{name}-example-dags",
                    metadata=k8s.meta.v1.ObjectMetaArgs(name=f"{RELEASE}-example-dags", namespace=self.namespace),
                    data=example_dag_files(),
                    opts=self._in_namespace,
                )
            )

        log_store = services.log_store(f"{name}-logs", parent=cloud_parent)
        annotations: dict[str, Any] = {}
        if log_store is not None:
            grants = {
                WORKER_SERVICE_ACCOUNT: "read-write",
                TRIGGERER_SERVICE_ACCOUNT: "read-write",
                DAG_PROCESSOR_SERVICE_ACCOUNT: "read-write",
                API_SERVER_SERVICE_ACCOUNT: "read",  # shows task logs in the UI
            }
            for service_account, access in grants.items():
                annotations[service_account] = cluster.workload_identity.bind_service_account(
                    f"{name}-{service_account.removeprefix(RELEASE + '-')}",
                    args.namespace,
                    service_account,
                    [BucketGrant(bucket=log_store.bucket, access=access)],
                    parent=cloud_parent,
                )

        # Stores before the release, so Redis and Postgres never run unprotected.
        for policy in airflow_network_policies(args.namespace, managed_database=managed, scaling_mode=args.scaling_mode):
            prerequisites.append(
                k8s.networking.v1.NetworkPolicy(
                    f"{name}-{policy['metadata']['name'].removeprefix(RELEASE + '-')}",
                    metadata=policy["metadata"],
                    spec=policy["spec"],
                    opts=self._in_namespace,
                )
            )

        postrender = None
        if args.scaling_mode == "task-aware":
            # The worker autoscaler owns spec.replicas of the worker Deployment; Helm must not set it.
            write_command(Path.cwd() / POSTRENDER_COMMAND, POSTRENDER_TARGETS)
            postrender = f"./{POSTRENDER_COMMAND.as_posix()}"

        values = chart_values(
            args,
            local_settings=render_local_settings(cluster.task_pool),
            log_store=log_store,
            service_account_annotations=annotations,
            managed_database=managed,
        )
        self.release = pinned_release(
            RELEASE,
            AIRFLOW_CHART,
            namespace=self.namespace,
            values=values,
            provider=cluster.provider,
            parent=self,
            depends_on=prerequisites + list(depends_on or []),
            # First install runs the database migration job; give it time on a cold cluster.
            timeout_seconds=1200,
            postrender=postrender,
        )
        self.ui_service = UI_SERVICE
        self.ui_port = UI_PORT
        self.port_forward = self.namespace.apply(
            lambda ns: f"kubectl --namespace {ns} port-forward svc/{UI_SERVICE} {UI_PORT}:{UI_PORT}"
        )
        self.admin_user = ADMIN_USER
        self.admin_password = pulumi.Output.secret(admin_password)
        self.worker_deployment = WORKER_DEPLOYMENT
        self.config_checksum = pulumi.Output.json_dumps(values["config"]).apply(
            lambda text: hashlib.sha256(text.encode()).hexdigest()
        )
        register_annotated_outputs(self)

    def _secret(self, name: str, data: dict[str, pulumi.Input[str]]) -> k8s.core.v1.Secret:
        return k8s.core.v1.Secret(
            name,
            metadata=k8s.meta.v1.ObjectMetaArgs(name=name, namespace=self.namespace),
            type="Opaque",
            string_data={k: pulumi.Output.secret(v) for k, v in data.items()},
            opts=self._in_namespace,
        )

    def _managed_database_secrets(self, args: AirflowArgs, db: PostgresDatabase) -> list[pulumi.Resource]:
        # Airflow talks to PgBouncer in its namespace; PgBouncer talks TLS to the managed database.
        pgbouncer = f"{RELEASE}-pgbouncer.{args.namespace}:6543"
        user_password = pulumi.Output.all(db.user, db.password)
        return [
            self._secret(
                SecretNames.metadata,
                {
                    "connection": db.password.apply(
                        lambda pw: f"postgresql://{db.user}:{pw}@{pgbouncer}/{RELEASE}-metadata?sslmode=disable"
                    )
                },
            ),
            self._secret(
                SecretNames.pgbouncer_config,
                {
                    "pgbouncer.ini": pulumi.Output.all(db.host, db.port).apply(
                        lambda hp: pgbouncer_ini(db, hp[0], hp[1])
                    ),
                    "users.txt": user_password.apply(lambda up: f'"{up[0]}" "{up[1]}"\n'),
                },
            ),
            self._secret(
                SecretNames.pgbouncer_stats,
                {
                    "connection": db.password.apply(
                        lambda pw: f"postgresql://{db.user}:{pw}@127.0.0.1:6543/pgbouncer?sslmode=disable"
                    )
                },
            ),
        ]
