"""The task-aware Celery worker autoscaler (`python -m airflow_on_k8s.autoscaler`), deployed next to Airflow.

How it runs, and why:
- On the Airflow image the cluster already pulls (airflow_on_k8s/versions.py): it has every library the package
  imports (a test checks), so no image is built or pushed. The package's source ships in a ConfigMap, read
  from this repository at `pulumi up` time and mounted as a package directory on PYTHONPATH; a checksum of it
  on the pod template rolls the pods when the code changes.
- Settings are the autoscaler's own flags (airflow_on_k8s/autoscaler/settings.py): the policy from `scaling.*` and
  `airflow.workerConcurrency`, the target from the Airflow component (the chart's worker Deployment and its
  pod labels). The database and broker URLs come from the Secrets the Airflow component writes, through
  `secretKeyRef` only.
- RBAC: exactly the calls the code makes (a test drives the real actuator and checks each against this Role).
- Two replicas: leader election on a Lease keeps one active and the other a hot standby that only reads the
  Lease once a poll (0.1 request/s), so losing a node costs one Lease duration (30 s) instead of the minutes it
  takes to evict and reschedule a lone pod. Seed 003 advises against HA controllers that hold large requests
  and load the API server; this one asks for 50m CPU and a standby makes no other API call.
- On the system pool (it is not a task): no task-pool toleration, and a node affinity that rules the task
  pool out even where a node carries its label without the taint.
- Non-root (the image's uid 50000), read-only root filesystem (PYTHONDONTWRITEBYTECODE=1, /tmp on an emptyDir
  that the Cluster Autoscaler is told it may discard, so the replicas never pin a system node), no capabilities. A ClusterIP Service with the usual `prometheus.io/*` annotations serves /metrics; the
  probes use /healthz and /readyz on the same port.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from airflow_on_k8s.airflow.component import (
    AIRFLOW_CONFIG_CONFIGMAP,
    AIRFLOW_CONFIG_PATH,
    EXECUTOR,
    RELEASE,
    WORKER_AUTOSCALER_POD_LABELS,
    WORKER_POD_LABELS,
    Airflow,
    SecretNames,
)
from airflow_on_k8s.contract import KubernetesCluster, register_annotated_outputs
from airflow_on_k8s.config import StackConfig
from airflow_on_k8s.versions import AIRFLOW_IMAGE_REPOSITORY, AIRFLOW_IMAGE_TAG

PACKAGE = "airflow_on_k8s.autoscaler"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / "autoscaler"
# The autoscaler imports nothing else from airflow_on_k8s; the top-level __init__ (import-free) makes it a package.
TOP_INIT = PACKAGE_DIR.parent / "__init__.py"

APP = f"{RELEASE}-worker-autoscaler"  # ServiceAccount, Role, RoleBinding, Deployment, Service, PDB
SOURCE_CONFIGMAP = f"{APP}-source"
LEASE = APP
# The source is mounted at SOURCE_ROOT (SOURCE_ROOT/airflow_on_k8s/autoscaler/...), on PYTHONPATH.
SOURCE_ROOT = "/opt/worker-autoscaler"
METRICS_PORT = 9090
AIRFLOW_UID = 50000  # the Airflow image's `airflow` user
# A ConfigMap holds at most 1 MiB; stop well before that rather than fail at apply time.
MAX_SOURCE_BYTES = 512 * 1024

# The Airflow namespace's NetworkPolicies admit pods with these labels to Redis and the metadata database.
POD_LABELS = WORKER_AUTOSCALER_POD_LABELS
CHECKSUM_ANNOTATION = "checksum/worker-autoscaler-source"
CONFIG_CHECKSUM_ANNOTATION = "checksum/airflow-config"
# The Cluster Autoscaler keeps any node whose pods have an emptyDir it was not told it may discard
# (cluster-autoscaler-1.34.1 FAQ.md "What types of pods can prevent CA from removing a node?";
# utils/drain/drain.go HasBlockingLocalStorage): without this the two replicas pin two system nodes for good.
LOCAL_VOLUMES_ANNOTATION = "cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes"
SCRATCH_VOLUME = "tmp"
# Measured: the package with its imports (kubernetes, celery, SQLAlchemy, pydantic) holds about 105 MiB.
RESOURCES = {"requests": {"cpu": "50m", "memory": "192Mi"}, "limits": {"memory": "384Mi"}}


def package_files(root: Path = PACKAGE_DIR) -> dict[str, str]:
    """Every .py file of the autoscaler package, and the top-level `__init__.py`, by import path (POSIX, e.g.
    `airflow_on_k8s/autoscaler/policy.py`), with its exact text."""
    files = {}
    for path in [root.parent / "__init__.py", *sorted(root.rglob("*.py"))]:
        relative = path.relative_to(root.parent.parent).as_posix()
        # bytes -> str without newline translation, so the pod gets the repository's bytes exactly.
        files[relative] = path.read_bytes().decode("utf-8")
    return files


def configmap_key(relative_path: str) -> str:
    """ConfigMap keys cannot contain '/': `actuators/kubernetes.py` is stored as `actuators.kubernetes.py`."""
    return relative_path.replace("/", ".")


def source_configmap_data(files: dict[str, str]) -> dict[str, str]:
    data = {configmap_key(path): text for path, text in files.items()}
    if len(data) != len(files):
        raise ValueError(f"{PACKAGE}/: two files map to the same ConfigMap key; rename the file with a '.' in its stem")
    size = sum(len(k) + len(v.encode()) for k, v in data.items())
    if size > MAX_SOURCE_BYTES:
        raise ValueError(
            f"{PACKAGE}/: {size} bytes of source is over the {MAX_SOURCE_BYTES}-byte budget for one ConfigMap "
            "(the API server's limit is 1 MiB); ship the package in an image instead"
        )
    return data


def source_volume_items(files: dict[str, str]) -> list[dict[str, str]]:
    """The volume's `items`: each key back at its path, so subpackages become directories again."""
    return [{"key": configmap_key(path), "path": str(PurePosixPath(path))} for path in files]


def source_checksum(files: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for path, text in sorted(files.items()):
        digest.update(path.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()


def worker_label_selector(labels: dict[str, str] = WORKER_POD_LABELS) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def role_rules(deployment: str, lease: str) -> list[dict[str, list[str]]]:
    """What airflow_on_k8s/autoscaler/actuators/kubernetes.py and actuators/events.py call, and nothing more."""
    return [
        # Read and change the worker count through the scale subresource only (not the Deployment itself): patch
        # to scale up, update (a replace carrying the resourceVersion read before the drain) to scale down.
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "resourceNames": [deployment],
         "verbs": ["get", "patch", "update"]},
        # Which pods the Deployment owns (through its ReplicaSets) and whether a rollout is under way.
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["list"]},
        # Worker pods: list them, and patch the pod-deletion-cost annotation on the ones chosen for removal.
        # Their names are generated by the ReplicaSet, so these cannot be limited by name.
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "patch"]},
        # Leader election: the API server authorises `create` before the object (and its name) exists, so
        # create cannot be limited by name; reading and renewing can.
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [lease], "verbs": ["get", "update"]},
        # Events on the worker Deployment for each scaling decision (actuators/events.py): create a new one,
        # patch the count of a repeated one. Their names are generated, so not limited by name.
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    ]


@dataclass(frozen=True)
class WorkerAutoscalerArgs:
    """How the autoscaler is deployed; `from_stack` maps the stack config's `scaling` section onto it."""

    enabled: bool
    """Deploy it (scaling.mode task-aware); the platform skips the component otherwise."""
    policy_flags: tuple[str, ...]
    """The autoscaler's policy and loop flags (ScalingConfig.autoscaler_args: min/max workers, load factor,
    stabilization, cooldown, drain timeout, queues, worker concurrency), e.g. ("--min-workers=0", ...)."""
    replicas: int = 2
    """Autoscaler pods: one leads through the Lease, the others stand by."""
    log_level: str = "INFO"
    """The autoscaler's log level (DEBUG, INFO, WARNING)."""

    @classmethod
    def from_stack(cls, config: StackConfig) -> WorkerAutoscalerArgs:
        return cls(
            enabled=config.scaling.mode == "task-aware",
            policy_flags=tuple(config.scaling.autoscaler_args(config.airflow.worker_concurrency)),
        )


class WorkerAutoscaler(pulumi.ComponentResource):
    """The autoscaler's source ConfigMap, ServiceAccount and Role, Deployment, metrics Service and PDB."""

    namespace: pulumi.Output[str]
    """Where it runs: the Airflow namespace, next to the worker Deployment it scales."""
    deployment: pulumi.Output[str]
    """The autoscaler's Deployment name."""
    metrics_service: pulumi.Output[str]
    """The Service in front of its /metrics endpoint."""
    metrics_port: int
    """Python-only: the port /metrics, /healthz and /readyz are served on."""
    lease: str
    """Python-only: the coordination.k8s.io Lease its replicas elect a leader on."""

    def __init__(
        self,
        name: str,
        args: WorkerAutoscalerArgs,
        cluster: KubernetesCluster,
        airflow: Airflow,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("airflow-on-k8s:scaling:WorkerAutoscaler", name, None, opts)
        namespace = airflow.namespace
        child = pulumi.ResourceOptions(parent=self, provider=cluster.provider)

        def meta(object_name: str, **extra: Any) -> k8s.meta.v1.ObjectMetaArgs:
            return k8s.meta.v1.ObjectMetaArgs(name=object_name, namespace=namespace, labels=POD_LABELS, **extra)

        files = package_files()
        source = k8s.core.v1.ConfigMap(
            f"{name}-source",
            metadata=meta(SOURCE_CONFIGMAP),
            data=source_configmap_data(files),
            opts=child,
        )
        account = k8s.core.v1.ServiceAccount(f"{name}-service-account", metadata=meta(APP), opts=child)
        role = k8s.rbac.v1.Role(
            f"{name}-role", metadata=meta(APP), rules=role_rules(airflow.worker_deployment, LEASE), opts=child
        )
        binding = k8s.rbac.v1.RoleBinding(
            f"{name}-role-binding",
            metadata=meta(APP),
            role_ref=k8s.rbac.v1.RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="Role", name=APP),
            subjects=[k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=APP, namespace=namespace)],
            opts=child,
        )

        container = {
            "name": "autoscaler",
            "image": f"{AIRFLOW_IMAGE_REPOSITORY}:{AIRFLOW_IMAGE_TAG}",
            "imagePullPolicy": "IfNotPresent",
            "command": ["python", "-m", PACKAGE],
            "args": [
                "--actuator=kubernetes",
                pulumi.Output.concat("--namespace=", namespace),
                f"--deployment={airflow.worker_deployment}",
                f"--label-selector={worker_label_selector()}",
                f"--lease-name={LEASE}",
                f"--executor={EXECUTOR}",
                f"--metrics-port={METRICS_PORT}",
                f"--log-level={args.log_level}",
                *args.policy_flags,
            ],
            "env": [
                _secret_env("WORKER_AUTOSCALER_DB_URL", SecretNames.metadata, "connection"),
                _secret_env("WORKER_AUTOSCALER_BROKER_URL", SecretNames.broker_url, "connection"),
                # The leader's identity in the Lease (the --identity flag's fallback variable).
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "PYTHONPATH", "value": SOURCE_ROOT},
                # The Celery control app is built from Airflow's own config: the chart's airflow.cfg, mounted where
                # the chart mounts it in its workers, so options set through the chart's `config` (broker
                # transport options, the Celery config class) reach the autoscaler too. Anything else Airflow
                # writes stays off the read-only root filesystem.
                {"name": "AIRFLOW_CONFIG", "value": AIRFLOW_CONFIG_PATH},
                {"name": "AIRFLOW_HOME", "value": "/tmp/airflow"},
                # The source mount and the root filesystem are read-only: no __pycache__.
                {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
                {"name": "PYTHONUNBUFFERED", "value": "1"},
            ],
            "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
            # Imports and the first connections take a few seconds; then liveness is the loop's own verdict
            # (it reports 503 once no iteration has finished for a drain timeout plus a few polls).
            "startupProbe": _probe("/healthz", period=5, failures=24),
            "livenessProbe": _probe("/healthz", period=10, failures=3),
            # Ready after one good iteration (a standby is ready once it has seen the Lease held).
            "readinessProbe": _probe("/readyz", period=10, failures=3),
            "resources": RESOURCES,
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [
                {"name": "source", "mountPath": SOURCE_ROOT, "readOnly": True},
                {"name": SCRATCH_VOLUME, "mountPath": "/tmp"},
                {"name": "airflow-config", "mountPath": AIRFLOW_CONFIG_PATH, "subPath": "airflow.cfg", "readOnly": True},
            ],
        }
        task_pool = cluster.task_pool
        pod_spec = {
            "serviceAccountName": APP,
            "automountServiceAccountToken": True,
            "enableServiceLinks": False,
            # On SIGTERM the loop aborts a drain at its next check, gives the worker its queues back and
            # releases the Lease, which takes seconds.
            "terminationGracePeriodSeconds": 30,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": AIRFLOW_UID,
                "runAsGroup": 0,  # the image's files belong to group root
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": task_pool.label_key, "operator": "NotIn", "values": [task_pool.label_value]}
                                ]
                            }
                        ]
                    }
                },
                # The standby is only useful on another node.
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "podAffinityTerm": {
                                "labelSelector": {"matchLabels": POD_LABELS},
                                "topologyKey": "kubernetes.io/hostname",
                            },
                        }
                    ]
                },
            },
            "containers": [container],
            "volumes": [
                {
                    "name": "source",
                    "configMap": {"name": SOURCE_CONFIGMAP, "items": source_volume_items(files), "defaultMode": 0o444},
                },
                {"name": SCRATCH_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}},
                {"name": "airflow-config", "configMap": {"name": AIRFLOW_CONFIG_CONFIGMAP}},
            ],
        }
        deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=meta(APP),
            spec={
                "replicas": args.replicas,
                "selector": {"matchLabels": POD_LABELS},
                "template": {
                    "metadata": {
                        "labels": POD_LABELS,
                        "annotations": {
                            CHECKSUM_ANNOTATION: source_checksum(files),
                            CONFIG_CHECKSUM_ANNOTATION: airflow.config_checksum,
                            # /tmp is scratch space: losing it with the pod is fine.
                            LOCAL_VOLUMES_ANNOTATION: SCRATCH_VOLUME,
                        },
                    },
                    "spec": pod_spec,
                },
            },
            # The Secrets it reads and the Deployment it scales come with the Airflow release.
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(depends_on=[source, account, role, binding, airflow.release])
            ),
        )
        service = k8s.core.v1.Service(
            f"{name}-metrics",
            metadata=meta(
                APP,
                annotations={
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(METRICS_PORT),
                    "prometheus.io/path": "/metrics",
                },
            ),
            spec={
                "type": "ClusterIP",
                "selector": POD_LABELS,
                "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}],
            },
            opts=child,
        )
        if args.replicas > 1:
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-pdb",
                metadata=meta(APP),
                spec={"minAvailable": 1, "selector": {"matchLabels": POD_LABELS}},
                opts=child,
            )

        self.namespace = namespace
        self.deployment = deployment.metadata.name
        self.metrics_service = service.metadata.name
        self.metrics_port = METRICS_PORT
        self.lease = LEASE
        register_annotated_outputs(self)


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "metrics"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }
