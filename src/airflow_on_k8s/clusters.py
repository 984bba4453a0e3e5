"""Pick the cluster component for the stack's cloud. The only place that branches on `cloud`."""

from __future__ import annotations

import pulumi

from airflow_on_k8s.contract import CloudServices, KubernetesCluster, NoCloudServices
from airflow_on_k8s.config import StackConfig


def create_cluster(config: StackConfig, opts: pulumi.ResourceOptions | None = None) -> KubernetesCluster:
    """The cluster for `config.cloud`, behind the common `KubernetesCluster` contract."""
    if config.cloud == "aws":
        from airflow_on_k8s.aws.cluster import EksCluster, EksClusterArgs

        return EksCluster(config.cluster_name, EksClusterArgs.from_stack(config), opts)
    if config.cloud == "gcp":
        from airflow_on_k8s.gcp.cluster import GkeCluster, GkeClusterArgs

        return GkeCluster(config.cluster_name, GkeClusterArgs.from_stack(config), opts)
    from airflow_on_k8s.local.cluster import LocalCluster, LocalClusterArgs

    return LocalCluster(config.cluster_name, LocalClusterArgs.from_stack(config), opts)


def create_cloud_services(config: StackConfig, cluster: KubernetesCluster) -> CloudServices:
    """The cloud's log bucket and managed database for `config.cloud` (none on a local cluster)."""
    if config.cloud == "aws":
        from airflow_on_k8s.aws.services import AwsServices

        return AwsServices.from_stack(config, cluster)
    if config.cloud == "gcp":
        from airflow_on_k8s.gcp.services import GcpServices

        return GcpServices.from_stack(config, cluster)
    return NoCloudServices()
