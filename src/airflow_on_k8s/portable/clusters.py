"""EKS and GKE clusters with plain-data inputs and outputs, for programs in other languages.

Each is a thin adapter: its inputs are the stack config's keys for that cloud (`settings.py`, generated from
airflow_on_k8s/config.py), validated by the config model, mapped by the cloud's `from_stack` onto its typed args,
and built by the Python component (`aws.cluster.EksCluster`, `gcp.cluster.GkeCluster`) as a child. Its outputs are
plain values, among them what `AirflowOnCluster` takes: the kubeconfig and the task pool's label and taint.
"""

# No `from __future__ import annotations`: the component provider reads these annotations as real types.
from typing import Any, NotRequired, TypedDict

import pulumi

from airflow_on_k8s.config import StackConfig, parse_stack_config
from airflow_on_k8s.contract import output_names, register_annotated_outputs
from airflow_on_k8s.portable.settings import (
    AwsSettings,
    ClusterAutoscalerSettings,
    GcpSettings,
    SystemPoolSettings,
    TaskPoolSettings,
)
from airflow_on_k8s.task_pool import TaskPoolSelector


class TaskPool(TypedDict):
    """How pods reach a task pool: the node label they require and the taint they tolerate (Kubernetes spelling).
    Every key is optional; one left out takes airflow_on_k8s/task_pool.py's (TASK_POOL), which is what the cluster
    components put on their task pool."""

    label_key: NotRequired[str]
    """The node label's key. Default: airflow-on-k8s/pool."""
    label_value: NotRequired[str]
    """The node label's value. Default: tasks."""
    taint_key: NotRequired[str]
    """The taint's key. Default: airflow-on-k8s/pool."""
    taint_value: NotRequired[str]
    """The taint's value. Default: tasks."""
    taint_effect: NotRequired[str]
    """The taint's effect: NoSchedule, NoExecute or PreferNoSchedule. Default: NoSchedule."""


class ClusterTaskPool(TypedDict):
    """A cluster's task pool as its pods reach it: the node label they require and the taint they tolerate
    (Kubernetes spelling)."""

    label_key: str
    """The node label's key."""
    label_value: str
    """The node label's value."""
    taint_key: str
    """The taint's key."""
    taint_value: str
    """The taint's value."""
    taint_effect: str
    """The taint's effect: NoSchedule, NoExecute or PreferNoSchedule."""


def task_pool_data(selector: TaskPoolSelector) -> ClusterTaskPool:
    """The selector as plain data."""
    return ClusterTaskPool(**selector.as_dict())  # type: ignore[typeddict-item]


def without_none(value: Any) -> Any:
    """`value` with None dropped from every dict in it: an input left out takes the stack config's default."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


def stack_config(cloud: str, args: dict[str, Any]) -> StackConfig:
    """A component's inputs as the stack config of `cloud`, validated with the stack file's rules and messages."""
    return parse_stack_config({"cloud": cloud, **without_none(dict(args))})


class EksClusterArgs(TypedDict):
    """The inputs of `EksCluster`: the stack config's keys for an EKS cluster."""

    cluster_name: str
    """The EKS cluster's name: 1-30 lowercase letters, digits and '-', starting with a letter; also names its VPC,
    log group and subnets."""
    aws: AwsSettings
    """The AWS settings (the stack config's `aws` section): region and publicAccessCidrs at least."""
    kubernetes_version: NotRequired[str]
    """The Kubernetes minor, e.g. "1.35": one in EKS standard support. Default: the project's default version."""
    system_pool: NotRequired[SystemPoolSettings]
    """The system node group (Airflow and the add-ons). Default: the stack config's."""
    task_pool: NotRequired[TaskPoolSettings]
    """The task node group (KubernetesPodOperator pods only, scales from zero). Default: the stack config's."""
    cluster_autoscaler: NotRequired[ClusterAutoscalerSettings]
    """The Cluster Autoscaler's scale-down timing and expander. Default: the stack config's."""
    protect: NotRequired[bool]
    """Production safety: Pulumi protect and deletion protection on the cluster and its Secrets key, longer log
    retention. Default: false."""
    tags: NotRequired[dict[str, str]]
    """AWS tags on every resource, besides project and cluster. Default: none."""


class EksCluster(pulumi.ComponentResource):
    """An EKS cluster with a system node group and a task node group that scales from zero, the Cluster Autoscaler,
    IRSA and the EBS CSI driver: `aws.cluster.EksCluster` from plain data. Give its `kubeconfig` and `taskPool` to
    `AirflowOnCluster`."""

    cloud: pulumi.Output[str]
    """"aws"."""
    cluster_name: pulumi.Output[str]
    """The EKS cluster's name."""
    kubeconfig: pulumi.Output[str]
    """A kubeconfig that authenticates with `aws eks get-token` (secret). It resolves once the cluster can run pods
    (a system node, CoreDNS and the EBS CSI driver are up), so what is installed with it waits for them."""
    task_pool: pulumi.Output[ClusterTaskPool]
    """The task node group's label and taint."""
    cluster_arn: pulumi.Output[str]
    """The EKS cluster's ARN."""
    vpc_id: pulumi.Output[str]
    """The cluster's VPC."""
    private_subnet_ids: pulumi.Output[list[str]]
    """The VPC's private subnets, one per AZ: where the nodes run."""
    cluster_security_group_id: pulumi.Output[str]
    """The security group EKS gives the control plane and every node; allow ingress from it to reach a database
    from pods."""
    oidc_provider_arn: pulumi.Output[str]
    """The cluster's IAM OIDC provider, which IRSA roles trust."""
    node_role_arn: pulumi.Output[str]
    """The IAM role of both node groups' instances."""

    def __init__(self, name: str, args: EksClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        from airflow_on_k8s.aws import cluster as eks

        # Validated before anything is registered: a wrong key fails with its name and the fix.
        typed = eks.EksClusterArgs.from_stack(stack_config("aws", args))
        super().__init__("airflow-on-k8s:index:EksCluster", name, None, opts)
        inner = eks.EksCluster(name, typed, pulumi.ResourceOptions(parent=self))
        _adopt(self, inner)
        register_annotated_outputs(self)


class GkeClusterArgs(TypedDict):
    """The inputs of `GkeCluster`: the stack config's keys for a GKE cluster."""

    cluster_name: str
    """The GKE cluster's name: 1-30 lowercase letters, digits and '-', starting with a letter; also names its
    network and node pools."""
    gcp: GcpSettings
    """The Google Cloud settings (the stack config's `gcp` section): project, region and masterAuthorizedCidrs at
    least."""
    kubernetes_version: NotRequired[str]
    """The Kubernetes minor, e.g. "1.35": one GKE offers. Default: the project's default version."""
    system_pool: NotRequired[SystemPoolSettings]
    """The system node pool (Airflow and the add-ons). Default: the stack config's."""
    task_pool: NotRequired[TaskPoolSettings]
    """The task node pool (KubernetesPodOperator pods only, scales from zero). Default: the stack config's."""
    protect: NotRequired[bool]
    """Production safety: Pulumi protect and deletion protection on the cluster. Default: false."""
    tags: NotRequired[dict[str, str]]
    """Labels on every Google Cloud resource that takes them. Default: none."""


class GkeCluster(pulumi.ComponentResource):
    """A regional GKE cluster with a system node pool and a task node pool that scales from zero, and Workload
    Identity: `gcp.cluster.GkeCluster` from plain data. Give its `kubeconfig` and `taskPool` to `AirflowOnCluster`
    (with cloud "gcp", which skips metrics-server: GKE runs its own)."""

    cloud: pulumi.Output[str]
    """"gcp"."""
    cluster_name: pulumi.Output[str]
    """The GKE cluster's name."""
    kubeconfig: pulumi.Output[str]
    """A kubeconfig that authenticates with `gke-gcloud-auth-plugin` (secret). It resolves once both node pools
    exist, so what is installed with it waits for them."""
    task_pool: pulumi.Output[ClusterTaskPool]
    """The task node pool's label and taint."""
    project: pulumi.Output[str]
    """The project the cluster lives in."""
    region: pulumi.Output[str]
    """The cluster's region."""
    network_id: pulumi.Output[str]
    """The VPC network's ID."""
    network_self_link: pulumi.Output[str]
    """The VPC network's self link (Cloud SQL with a private IP peers with it)."""
    subnetwork_self_link: pulumi.Output[str]
    """The nodes' subnet."""
    node_service_account_email: pulumi.Output[str]
    """The Google service account the nodes (not the pods) run as."""

    def __init__(self, name: str, args: GkeClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        from airflow_on_k8s.gcp import cluster as gke

        typed = gke.GkeClusterArgs.from_stack(stack_config("gcp", args))
        super().__init__("airflow-on-k8s:index:GkeCluster", name, None, opts)
        inner = gke.GkeCluster(name, typed, pulumi.ResourceOptions(parent=self))
        _adopt(self, inner)
        register_annotated_outputs(self)


def _adopt(component: pulumi.ComponentResource, cluster: Any) -> None:
    """Set `component`'s outputs from the Python cluster component: the same names, as plain Outputs.

    The kubeconfig resolves after the cluster's own Kubernetes provider is created, which waits for what the
    cluster needs before a workload can run; a provider built from it elsewhere (`AirflowOnCluster`) then waits too.
    """
    component.cloud = pulumi.Output.from_input(cluster.cloud)  # type: ignore[attr-defined]
    component.task_pool = pulumi.Output.from_input(task_pool_data(cluster.task_pool))  # type: ignore[attr-defined]
    ready = pulumi.Output.all(cluster.kubeconfig, cluster.provider.urn).apply(lambda values: values[0])
    component.kubeconfig = pulumi.Output.secret(ready)  # type: ignore[attr-defined]
    for name in output_names(type(component)):
        if not hasattr(component, name):
            setattr(component, name, getattr(cluster, name))
