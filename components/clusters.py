"""Pick the cluster component for the stack's cloud. The only place that branches on `cloud`."""

from __future__ import annotations

import pulumi

from components.cluster import CloudServices, KubernetesCluster, NoCloudServices
from components.config import StackConfig


def create_cluster(config: StackConfig, opts: pulumi.ResourceOptions | None = None) -> KubernetesCluster:
    """The cluster for `config.cloud`, behind the common `KubernetesCluster` contract."""
    if config.cloud == "aws":
        from components.eks_cluster import EksCluster, EksClusterArgs

        return EksCluster(config.cluster_name, EksClusterArgs.from_stack(config), opts)
    if config.cloud == "gcp":
        from components.gke_cluster import GkeCluster, GkeClusterArgs

        return GkeCluster(config.cluster_name, GkeClusterArgs.from_stack(config), opts)
    from components.local_cluster import LocalCluster, LocalClusterArgs

    return LocalCluster(config.cluster_name, LocalClusterArgs.from_stack(config), opts)


def create_cloud_services(config: StackConfig, cluster: KubernetesCluster) -> CloudServices:
    """The cloud's log bucket and managed database for `config.cloud` (none on a local cluster)."""
    if config.cloud == "aws":
        from components.aws_services import AwsServices

        return AwsServices.from_stack(config, cluster)
    if config.cloud == "gcp":
        from components.gcp_services import GcpServices

        return GcpServices.from_stack(config, cluster)
    return NoCloudServices()
