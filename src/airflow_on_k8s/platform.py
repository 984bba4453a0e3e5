"""The whole platform from one stack config: cluster → add-ons → Airflow → worker autoscaler.

`build_platform` is the composition this repository's program (`__main__.py`) runs; `AirflowOnKubernetes` wraps
the same composition in one component resource, the form other Pulumi languages get through the component
provider (`provider/`) and a Python program can use when it wants everything at once. The config is the stack
config's own model (`airflow_on_k8s.config`): the keys of a stack file's `airflow-on-k8s:` namespace, validated
with the same errors.
"""

# No `from __future__ import annotations`: the component provider reads these annotations as real types.
from dataclasses import dataclass
from typing import Any, TypedDict

import pulumi

from airflow_on_k8s.addons.keda import Keda, KedaArgs
from airflow_on_k8s.addons.metrics_server import MetricsServer, MetricsServerArgs
from airflow_on_k8s.airflow.component import Airflow, AirflowArgs
from airflow_on_k8s.airflow.task_namespace import TaskNamespace, TaskNamespaceArgs
from airflow_on_k8s.airflow.worker_autoscaler import WorkerAutoscaler, WorkerAutoscalerArgs
from airflow_on_k8s.clusters import create_cloud_services, create_cluster
from airflow_on_k8s.config import StackConfig, parse_stack_config
from airflow_on_k8s.contract import CloudServices, KubernetesCluster
from airflow_on_k8s.observability.component import Observability, ObservabilityArgs


@dataclass(frozen=True)
class Platform:
    """What `build_platform` created; the optional parts are None where the config turns them off."""

    config: StackConfig
    cluster: KubernetesCluster
    services: CloudServices
    metrics_server: MetricsServer | None
    keda: Keda
    task_namespace: TaskNamespace
    airflow: Airflow
    worker_autoscaler: WorkerAutoscaler | None
    observability: Observability


@dataclass(frozen=True)
class InCluster:
    """What `install_on_cluster` created on a cluster; the optional parts are None where the config turns them off."""

    metrics_server: MetricsServer | None
    keda: Keda
    task_namespace: TaskNamespace
    airflow: Airflow
    worker_autoscaler: WorkerAutoscaler | None
    observability: Observability


def install_on_cluster(
    config: StackConfig,
    cluster: KubernetesCluster,
    services: CloudServices,
    opts: pulumi.ResourceOptions | None = None,
) -> InCluster:
    """Everything after the cluster, for `config`: add-ons, Airflow, the worker autoscaler, observability. `opts` (e.g.
    a parent) applies to each top-level component. `build_platform` and `portable.AirflowOnCluster` both run it."""
    # Add-ons: metrics-server where the cloud has none (not GKE), KEDA everywhere.
    metrics_server_args = MetricsServerArgs.from_stack(config)
    metrics_server = (
        MetricsServer("metrics-server", metrics_server_args, cluster, opts) if metrics_server_args.install else None
    )
    keda = Keda("keda", KedaArgs.from_stack(config), cluster, opts)

    # Airflow, and the namespace its KubernetesPodOperator pods run in.
    tasks = TaskNamespace("airflow-tasks", TaskNamespaceArgs.from_stack(config), cluster, opts)
    airflow = Airflow("airflow", AirflowArgs.from_stack(config), cluster, services, opts, depends_on=[keda.release])

    # scaling.mode task-aware: the autoscaler that owns the Celery worker count (keda and hpa live in the chart).
    autoscaler_args = WorkerAutoscalerArgs.from_stack(config)
    autoscaler = (
        WorkerAutoscaler("worker-autoscaler", autoscaler_args, cluster, airflow, opts) if autoscaler_args.enabled else None
    )
    # Scrape targets, the Grafana dashboard and alerts for all of the above (observability.* switches).
    observability = Observability(
        "observability", ObservabilityArgs.from_stack(config), cluster, airflow, autoscaler, opts
    )
    return InCluster(metrics_server, keda, tasks, airflow, autoscaler, observability)


def build_platform(config: StackConfig, opts: pulumi.ResourceOptions | None = None) -> Platform:
    """Create every component for `config`; `opts` (e.g. a parent) applies to each top-level component."""
    cluster = create_cluster(config, opts)
    services = create_cloud_services(config, cluster)
    i = install_on_cluster(config, cluster, services, opts)
    return Platform(
        config, cluster, services, i.metrics_server, i.keda, i.task_namespace, i.airflow, i.worker_autoscaler,
        i.observability,
    )


class AirflowOnKubernetesArgs(TypedDict):
    """The inputs of `AirflowOnKubernetes`."""

    config: dict[str, Any]
    """The stack config: the keys of a stack file's `airflow-on-k8s:` namespace without the prefix, e.g.
    {"cloud": "aws", "clusterName": "airflow-dev", "aws": {"region": "eu-west-1", "publicAccessCidrs": [...]}}.
    See the README's config reference; an invalid key fails the deployment with the key and the fix."""


class AirflowOnKubernetes(pulumi.ComponentResource):
    """Apache Airflow (CeleryExecutor) on a new EKS or GKE cluster or an existing one, with a task node pool that
    autoscales from zero, metrics-server, KEDA and the task-aware Celery worker autoscaler."""

    cloud: pulumi.Output[str]
    """The cloud the cluster runs on: aws, gcp or local."""
    cluster_name: pulumi.Output[str]
    """The Kubernetes cluster's name."""
    kubeconfig: pulumi.Output[str]
    """A kubeconfig for the cluster (secret)."""
    task_pool: pulumi.Output[dict[str, str]]
    """The task pool's node label and taint: label, value, taintEffect."""
    airflow_namespace: pulumi.Output[str]
    """The namespace Airflow runs in."""
    task_namespace: pulumi.Output[str]
    """The namespace KubernetesPodOperator task pods run in."""
    airflow_ui_service: pulumi.Output[str]
    """The Service in front of Airflow's UI (namespace/name)."""
    airflow_admin_user: pulumi.Output[str]
    """The Airflow admin user's name."""
    airflow_admin_password: pulumi.Output[str]
    """The Airflow admin user's password (secret)."""

    def __init__(self, name: str, args: AirflowOnKubernetesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("airflow-on-k8s:index:AirflowOnKubernetes", name, None, opts)
        platform = build_platform(parse_stack_config(dict(args["config"])), pulumi.ResourceOptions(parent=self))
        outputs = platform_outputs(platform)
        self.cloud = pulumi.Output.from_input(outputs["cloud"])
        self.cluster_name = pulumi.Output.from_input(outputs["clusterName"])
        self.kubeconfig = pulumi.Output.secret(outputs["kubeconfig"])
        self.task_pool = pulumi.Output.from_input(outputs["taskPool"])
        self.airflow_namespace = pulumi.Output.from_input(outputs["airflowNamespace"])
        self.task_namespace = pulumi.Output.from_input(outputs["taskNamespace"])
        self.airflow_ui_service = pulumi.Output.from_input(outputs["airflowUiService"])
        self.airflow_admin_user = pulumi.Output.from_input(outputs["airflowAdminUser"])
        self.airflow_admin_password = pulumi.Output.secret(outputs["airflowAdminPassword"])
        self.register_outputs({key: getattr(self, key) for key in AirflowOnKubernetes.__annotations__})


def platform_outputs(platform: Platform) -> dict[str, Any]:
    """The stack outputs of a platform, by their exported (camelCase) names."""
    return {
        "cloud": platform.config.cloud,
        "clusterName": platform.cluster.cluster_name,
        "kubeconfig": platform.cluster.kubeconfig,
        "taskPool": platform.cluster.task_pool.as_dict(),
        "airflowNamespace": platform.airflow.namespace,
        "taskNamespace": platform.task_namespace.name,
        "airflowUiService": platform.airflow.ui_service,
        "airflowUiPortForward": platform.airflow.port_forward,
        "airflowAdminUser": platform.airflow.admin_user,
        "airflowAdminPassword": platform.airflow.admin_password,
    }
