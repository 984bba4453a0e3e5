"""Airflow on a cluster given as plain data: a kubeconfig and the task pool's label and taint.

`AirflowOnCluster` builds a Kubernetes provider from the kubeconfig, a `KubernetesCluster` (contract.py) around
it, maps its settings (the stack config's `airflow`, `scaling`, `addons`, `observability` sections, generated as
`settings.py`) onto a stack config, and runs the same composition as the platform (`platform.install_on_cluster`):
metrics-server, KEDA, the task namespace, Airflow, the worker autoscaler and observability. Nothing of the cloud
is created, so what needs the cloud's identity or services is refused with the fix: a managed metadata database,
remote logs in a bucket, Amazon Managed Prometheus.
"""

# No `from __future__ import annotations`: the component provider reads these annotations as real types.
from dataclasses import dataclass, field
from typing import NotRequired, TypedDict

import pulumi
import pulumi_kubernetes as k8s
from pydantic.alias_generators import to_camel

from airflow_on_k8s.config import (
    PROJECT,
    AddonsConfig,
    AirflowConfig,
    ConfigError,
    ObservabilityConfig,
    ScalingConfig,
    StackConfig,
    TaskPoolConfig,
    parse_section,
)
from airflow_on_k8s.contract import NoCloudServices, NoWorkloadIdentity, WorkloadIdentity, register_annotated_outputs
from airflow_on_k8s.portable.clusters import ClusterTaskPool, TaskPool, without_none
from airflow_on_k8s.portable.settings import AddonsSettings, AirflowSettings, ObservabilitySettings, ScalingSettings
from airflow_on_k8s.task_pool import TASK_POOL, TaskPoolSelector

CLOUDS = ("aws", "gcp", "local")
TAINT_EFFECTS = ("NoSchedule", "NoExecute", "PreferNoSchedule")


class AirflowOnClusterArgs(TypedDict):
    """The inputs of `AirflowOnCluster`: how to reach the cluster, and the stack config's in-cluster sections."""

    kubeconfig: pulumi.Input[str]
    """A kubeconfig for the cluster (e.g. an `EksCluster`'s or `GkeCluster`'s `kubeconfig` output, or a file's
    text); its current context is used unless `context` is set. Kept secret."""
    context: NotRequired[str]
    """The kubeconfig context to use. Default: the kubeconfig's current context."""
    cloud: NotRequired[str]
    """Where the cluster runs: aws, gcp or local (kind, k3d, minikube). Decides the internal load balancer's
    annotations, whether metrics-server is installed (not on gcp, whose clusters run one), its kubelet TLS (skipped
    on local), and what `observability.scrape: auto` means. Default: local."""
    cluster_name: NotRequired[str]
    """The cluster's name, for outputs and the names of observability objects. Default: airflow."""
    task_pool: NotRequired[TaskPool]
    """The task pool's node label and taint: KubernetesPodOperator pods require the label and tolerate the taint
    (the pod mutation hook in airflow_local_settings). Leave it out for an `EksCluster` or `GkeCluster`, whose task
    pool has the defaults; set it for a pool of your own. Default: TASK_POOL (airflow_on_k8s/task_pool.py)."""
    task_pool_max_nodes: NotRequired[int]
    """The task pool's most nodes: the task namespace's ResourceQuota grows with it. Default: 10."""
    airflow: NotRequired[AirflowSettings]
    """The Airflow release (the stack config's `airflow` section). `database` must be `bundled`: no cloud database is
    created here. Default: the stack config's."""
    scaling: NotRequired[ScalingSettings]
    """Celery worker autoscaling (the stack config's `scaling` section). Default: the stack config's."""
    addons: NotRequired[AddonsSettings]
    """Cluster add-ons (the stack config's `addons` section). Default: the stack config's."""
    observability: NotRequired[ObservabilitySettings]
    """Metrics scraping, the Grafana dashboard and alerts (the stack config's `observability` section); `scrape` may
    not be amazon-managed (it needs the EKS cluster's AWS details): on aws set it explicitly. Default: the stack
    config's."""


@dataclass(frozen=True)
class ClusterRef:
    """A `KubernetesCluster` (contract.py) from plain data: the provider is the only way in, and there is no cloud
    identity (a grant fails with the fix)."""

    cloud: str
    cluster_name: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    provider: k8s.Provider
    task_pool: TaskPoolSelector
    workload_identity: WorkloadIdentity = field(default_factory=NoWorkloadIdentity)


def task_pool_selector(data: dict | None) -> TaskPoolSelector:
    """A `TaskPool` input as the selector; keys left out take TASK_POOL's values."""
    values = {**TASK_POOL.as_dict(), **without_none(dict(data or {}))}
    problems = [
        f"{PROJECT}:taskPool.{to_camel(key)}: must be a plain string known before deployment, got {value!r}"
        for key, value in values.items()
        if not isinstance(value, str) or not value
    ]
    if not problems and values["taint_effect"] not in TAINT_EFFECTS:
        problems.append(f"{PROJECT}:taskPool.taintEffect: {values['taint_effect']!r} is not one of {', '.join(TAINT_EFFECTS)}")
    if problems:
        raise ConfigError(problems)
    return TaskPoolSelector(**values)


def in_cluster_config(args: dict) -> StackConfig:
    """The stack config that `install_on_cluster` reads, from `AirflowOnCluster`'s inputs: each section validated by
    its config model, then the rules that need the cloud, or ConfigError naming each key and the fix."""
    args = without_none(dict(args))
    cloud = args.get("cloud", "local")
    problems: list[str] = []
    if cloud not in CLOUDS:
        problems.append(f"{PROJECT}:cloud: {cloud!r} is not one of {', '.join(CLOUDS)}")
    sections = {}
    pool = {"max_size": args["task_pool_max_nodes"]} if "task_pool_max_nodes" in args else {}
    for key, model, raw in (
        ("airflow", AirflowConfig, args.get("airflow", {})),
        ("scaling", ScalingConfig, args.get("scaling", {})),
        ("addons", AddonsConfig, args.get("addons", {})),
        ("observability", ObservabilityConfig, args.get("observability", {})),
        ("taskPool", TaskPoolConfig, pool),
    ):
        try:
            sections[key] = parse_section(model, key, raw)
        except ConfigError as e:
            problems += e.problems
    if "airflow" in sections and sections["airflow"].database == "managed":
        problems.append(
            f"{PROJECT}:airflow.database: managed needs the cloud's database, which AirflowOnCluster does not "
            "create; set it to bundled, or use AirflowOnKubernetes"
        )
    if "observability" in sections and cloud in CLOUDS:
        scraper = sections["observability"].scraper(cloud)
        if scraper == "amazon-managed":
            problems.append(
                f"{PROJECT}:observability.scrape: amazon-managed needs the EKS cluster's AWS details, which "
                "AirflowOnCluster does not have; set it to prometheus-operator or none, or use AirflowOnKubernetes"
            )
        elif scraper == "google-managed" and cloud != "gcp":
            problems.append(f"{PROJECT}:observability.scrape: google-managed needs cloud gcp, not {cloud}")
    if problems:
        raise ConfigError(problems)
    # Every section is validated above; the cloud sections are not needed inside a cluster.
    return StackConfig.model_construct(
        cloud=cloud,
        cluster_name=args.get("cluster_name", "airflow"),
        airflow=sections["airflow"],
        scaling=sections["scaling"],
        addons=sections["addons"],
        observability=sections["observability"],
        task_pool=sections["taskPool"],
    )


class AirflowOnCluster(pulumi.ComponentResource):
    """Apache Airflow (CeleryExecutor) with metrics-server, KEDA, the task namespace, the task-aware Celery worker
    autoscaler and observability, on a cluster reached through a kubeconfig: an `EksCluster`'s, a `GkeCluster`'s or
    any existing cluster's. KubernetesPodOperator pods go to the task pool given as `taskPool`."""

    cluster_name: pulumi.Output[str]
    """The cluster's name, as given."""
    task_pool: pulumi.Output[ClusterTaskPool]
    """The task pool's label and taint that KubernetesPodOperator pods are given."""
    airflow_namespace: pulumi.Output[str]
    """The namespace Airflow runs in."""
    task_namespace: pulumi.Output[str]
    """The namespace KubernetesPodOperator task pods run in."""
    airflow_ui_service: pulumi.Output[str]
    """The name of the Service in front of Airflow's UI, in the Airflow namespace."""
    airflow_port_forward: pulumi.Output[str]
    """The kubectl command that opens the UI on localhost."""
    airflow_admin_user: pulumi.Output[str]
    """The Airflow admin user's name."""
    airflow_admin_password: pulumi.Output[str]
    """The Airflow admin user's password (secret)."""
    keda_namespace: pulumi.Output[str]
    """The namespace KEDA runs in."""
    metrics_server_namespace: pulumi.Output[str]
    """The namespace metrics-server runs in; empty where it is not installed (gcp, or addons.metricsServer skip)."""
    worker_autoscaler_deployment: pulumi.Output[str]
    """The worker autoscaler's Deployment; empty unless scaling.mode is task-aware."""
    dashboard_configmap: pulumi.Output[str]
    """`namespace/name` of the Grafana dashboard ConfigMap; empty when observability.dashboard is off."""

    def __init__(self, name: str, args: AirflowOnClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        from airflow_on_k8s.platform import install_on_cluster

        # Validated before anything is registered: a wrong key fails with its name and the fix.
        config = in_cluster_config(args)
        selector = task_pool_selector(args.get("task_pool"))
        super().__init__("airflow-on-k8s:index:AirflowOnCluster", name, None, opts)
        kubeconfig = pulumi.Output.secret(args["kubeconfig"])
        provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=kubeconfig,
            context=args.get("context") or None,
            opts=pulumi.ResourceOptions(parent=self),
        )
        cluster = ClusterRef(
            cloud=config.cloud,
            cluster_name=pulumi.Output.from_input(config.cluster_name),
            kubeconfig=kubeconfig,
            provider=provider,
            task_pool=selector,
        )
        installed = install_on_cluster(config, cluster, NoCloudServices(), pulumi.ResourceOptions(parent=self))
        self.cluster_name = cluster.cluster_name
        self.task_pool = pulumi.Output.from_input(selector.as_dict())
        self.airflow_namespace = installed.airflow.namespace
        self.task_namespace = installed.task_namespace.name
        self.airflow_ui_service = pulumi.Output.from_input(installed.airflow.ui_service)
        self.airflow_port_forward = installed.airflow.port_forward
        self.airflow_admin_user = pulumi.Output.from_input(installed.airflow.admin_user)
        self.airflow_admin_password = installed.airflow.admin_password
        self.keda_namespace = installed.keda.namespace
        self.metrics_server_namespace = (
            installed.metrics_server.namespace if installed.metrics_server else pulumi.Output.from_input("")
        )
        self.worker_autoscaler_deployment = (
            installed.worker_autoscaler.deployment if installed.worker_autoscaler else pulumi.Output.from_input("")
        )
        self.dashboard_configmap = installed.observability.dashboard_configmap
        register_annotated_outputs(self)
