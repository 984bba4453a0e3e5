"""A regional GKE cluster with a system node pool and a task node pool that scales from zero.

Resources (all children of the component, all through one explicit `gcp.Provider`):

- VPC network (custom subnets) and a subnet with secondary ranges for pods and services (VPC-native),
  Private Google Access on; with private nodes, a Cloud Router + Cloud NAT for egress (image pulls from
  Docker Hub, git-sync) and a firewall rule letting the control plane reach KEDA's webhook/metrics ports.
- The Google APIs the program uses, enabled first (`gcp.enableApis`) so a fresh project works.
- A node service account with only the roles nodes need (logs, metrics, image pulls).
- The cluster: default pool removed, Workload Identity, release channel, Dataplane V2, shielded nodes.
- Two node pools: "system" (Airflow, add-ons; never below one node) and "tasks" (the TASK_POOL label and
  taint, optionally spot, 0..N nodes).
- A Kubernetes provider from a kubeconfig that authenticates with `gke-gcloud-auth-plugin`.

Node scaling: GKE runs its own cluster autoscaler, so no Cluster Autoscaler chart is installed on GKE.
Its scale-down timing is not a flag we can set; it follows `gcp.autoscalingProfile`: OPTIMIZE_UTILIZATION
(the default here) removes idle nodes sooner and packs pods tighter than BALANCED, which keeps an idle
task node billed longer. The `clusterAutoscaler` config section (scale-down times) applies to EKS only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s
import yaml

from airflow_on_k8s.contract import WorkloadIdentity, register_annotated_outputs
from airflow_on_k8s.config import PROJECT, ConfigError, GcpConfig, PoolConfig, StackConfig
from airflow_on_k8s.gcp.workload_identity import GkeWorkloadIdentity, service_account_id
from airflow_on_k8s.task_pool import TASK_POOL, TaskPoolSelector

# Project roles for the node service account, and nothing broader. "At a minimum, these node service accounts must
# have the Kubernetes Engine Default Node Service Account (roles/container.defaultNodeServiceAccount) role"
# (cloud.google.com/kubernetes-engine/docs/how-to/service-accounts, "Configure GKE node service accounts"): logs,
# metrics, autoscaling metrics. Plus image pulls from Artifact Registry.
NODE_SERVICE_ACCOUNT_ROLES: tuple[str, ...] = (
    "roles/container.defaultNodeServiceAccount",
    "roles/artifactregistry.reader",
)

# The Google APIs the program calls. Enabling them (gcp.enableApis) makes a fresh project work on the first `up`;
# Service Usage, which enables the others, is on in every new project.
CLUSTER_APIS: tuple[str, ...] = (
    "container.googleapis.com",  # GKE
    "compute.googleapis.com",  # VPC, subnet, Cloud Router/NAT, firewall
    "iam.googleapis.com",  # service accounts
    "iamcredentials.googleapis.com",  # Workload Identity: tokens of the bound Google service accounts
    "cloudresourcemanager.googleapis.com",  # project IAM bindings
    "storage.googleapis.com",  # the task-log bucket
)
# Cloud SQL with a private IP (airflow.database: managed).
MANAGED_DATABASE_APIS: tuple[str, ...] = ("sqladmin.googleapis.com", "servicenetworking.googleapis.com")

# Access is decided by the IAM roles above; the broad OAuth scope only stops scopes from narrowing it further
# (Google's recommendation for custom node service accounts).
NODE_OAUTH_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]

# The stack config's defaults are the args' defaults: a component user gets what a stack file gets.
_GCP_DEFAULTS = GcpConfig.model_construct()
_POOL_DEFAULTS = PoolConfig.model_construct()

# GKE places a regional cluster's nodes in three of the region's zones unless told otherwise.
DEFAULT_ZONE_COUNT = 3

# Ports the control plane must reach on nodes besides 443/10250 (which GKE opens itself) on a private cluster:
# KEDA's metrics API server (6443) and KEDA's admission webhooks (9443).
CONTROL_PLANE_TO_NODE_PORTS = ["6443", "9443"]


@dataclass(frozen=True)
class GkeNodePoolSpec:
    """One node pool's shape. Sizes are pool-wide totals, not per zone."""

    machine_type: str
    """The Compute Engine machine type of every node, e.g. e2-standard-4 (a GKE pool has exactly one)."""
    min_nodes: int
    """Fewest nodes in the whole pool (0 lets it scale to zero; the system pool needs 1 or more)."""
    max_nodes: int
    """Most nodes in the whole pool GKE's autoscaler may add (at least `min_nodes`, at least 1)."""
    spot: bool = _POOL_DEFAULTS.spot
    """Spot VMs: cheaper, but Compute Engine may reclaim a node at 30 seconds' notice; fine for retryable tasks."""
    disk_size_gb: int = _POOL_DEFAULTS.disk_size_gb
    """Boot disk size of each node in GiB (pd-balanced)."""


@dataclass(frozen=True)
class GkeClusterArgs:
    """Everything `GkeCluster` needs; `from_stack` builds it from the stack config and checks what GKE cannot take.

    The defaults are the stack config's (airflow_on_k8s/config.py), so a component user and a stack file get the
    same cluster for the same settings.
    """

    cluster_name: str
    """The GKE cluster's name: 1-30 lowercase letters, digits and '-', starting with a letter (the stack config's
    clusterName rule, which keeps the names derived from it, such as the node service account's, within GCP's
    limits). Not checked here: `from_stack` input is validated by the stack config."""
    project: str
    """The Google Cloud project ID."""
    region: str
    """The region of the regional cluster, e.g. europe-west1."""
    master_authorized_cidrs: tuple[str, ...]
    """Who may reach the API (no open default): public egress addresses such as yours as a /32 (public endpoint),
    or internal ranges (`private_endpoint`)."""
    system_pool: GkeNodePoolSpec
    """The system node pool: Airflow and the add-ons; starts with one node per zone."""
    task_pool: GkeNodePoolSpec
    """The task node pool: KubernetesPodOperator pods only (TASK_POOL label and taint); min_nodes 0 scales from zero."""
    node_zones: tuple[str, ...] = tuple(_GCP_DEFAULTS.node_zones)
    """Zones of the region for the node pools, e.g. ("europe-west1-b", "europe-west1-c"); empty: GKE's three."""
    subnet_cidr: str = _GCP_DEFAULTS.subnet_cidr
    """Primary IPv4 range of the node subnet."""
    pods_cidr: str = _GCP_DEFAULTS.pods_cidr
    """Secondary range for pod IPs (VPC-native)."""
    services_cidr: str = _GCP_DEFAULTS.services_cidr
    """Secondary range for Service IPs."""
    private_nodes: bool = _GCP_DEFAULTS.private_nodes
    """Nodes without public IPs, with egress through Cloud NAT."""
    master_cidr: str = _GCP_DEFAULTS.master_cidr
    """The control plane's /28 when nodes are private."""
    private_endpoint: bool = _GCP_DEFAULTS.private_endpoint
    """The API only on its internal address (needs `private_nodes`); the kubeconfig then points there."""
    release_channel: str = _GCP_DEFAULTS.release_channel
    """GKE release channel: RAPID, REGULAR, STABLE or EXTENDED."""
    autoscaling_profile: str = _GCP_DEFAULTS.autoscaling_profile
    """GKE autoscaler profile: OPTIMIZE_UTILIZATION (removes idle nodes sooner) or BALANCED."""
    protect: bool = False
    """Deletion protection on the cluster (GKE's flag and Pulumi's protect): true for production."""
    labels: dict[str, str] = field(default_factory=dict)
    """GCP labels on every resource (lowercase keys and values; see `gcp_labels`)."""
    apis: tuple[str, ...] = CLUSTER_APIS
    """Google APIs to enable before anything else (kept enabled on destroy); empty when the project manages its
    APIs itself. Add MANAGED_DATABASE_APIS for Cloud SQL."""

    @property
    def workload_pool(self) -> str:
        return f"{self.project}.svc.id.goog"

    @property
    def pods_range_name(self) -> str:
        """The subnet's secondary range for pod IPs."""
        return f"{self.cluster_name}-pods"

    @property
    def services_range_name(self) -> str:
        """The subnet's secondary range for Service cluster IPs."""
        return f"{self.cluster_name}-services"

    @classmethod
    def from_stack(cls, config: StackConfig) -> GkeClusterArgs:
        """Args for `config` (a gcp stack), or ConfigError naming each key GKE cannot take as set."""
        gcp_cfg = config.gcp
        if config.cloud != "gcp" or gcp_cfg is None:
            raise ConfigError([f"{PROJECT}:cloud: GkeCluster needs cloud: gcp and a gcp section, got {config.cloud!r}"])
        problems: list[str] = []
        pools: dict[str, GkeNodePoolSpec] = {}
        for pool in ("system", "task"):
            key = f"{pool}Pool"
            types = config.instance_types(pool)
            # A GKE node pool has exactly one machine type (unlike an EKS node group). Picking the first
            # silently would hide the others, so we ask the user to choose.
            if len(types) != 1:
                problems.append(
                    f"{PROJECT}:{key}.instanceTypes: GKE node pools take one machine type, got {types}; "
                    f"keep one, e.g. [{types[0]}]"
                )
            cfg = config.system_pool if pool == "system" else config.task_pool
            pools[pool] = GkeNodePoolSpec(
                machine_type=types[0],
                min_nodes=cfg.min_size,
                max_nodes=cfg.max_size,
                spot=cfg.spot,
                disk_size_gb=cfg.disk_size_gb,
            )
        zone_count = len(gcp_cfg.node_zones) or DEFAULT_ZONE_COUNT
        # The system pool starts with one node per zone (initial_node_count is per zone).
        if config.system_pool.max_size < zone_count:
            problems.append(
                f"{PROJECT}:systemPool.maxSize: {config.system_pool.max_size} is below the {zone_count} zones "
                f"the system pool starts one node in; raise maxSize to {zone_count} or list fewer gcp.nodeZones"
            )
        if problems:
            raise ConfigError(problems)
        return cls(
            cluster_name=config.cluster_name,
            project=gcp_cfg.project,
            region=gcp_cfg.region,
            node_zones=tuple(gcp_cfg.node_zones),
            subnet_cidr=gcp_cfg.subnet_cidr,
            pods_cidr=gcp_cfg.pods_cidr,
            services_cidr=gcp_cfg.services_cidr,
            private_nodes=gcp_cfg.private_nodes,
            master_cidr=gcp_cfg.master_cidr,
            master_authorized_cidrs=tuple(gcp_cfg.master_authorized_cidrs),
            private_endpoint=gcp_cfg.private_endpoint,
            release_channel=gcp_cfg.release_channel,
            autoscaling_profile=gcp_cfg.autoscaling_profile,
            system_pool=pools["system"],
            task_pool=pools["task"],
            protect=config.protect,
            labels=gcp_labels({**config.tags, "airflow-cluster": config.cluster_name}),
            apis=(
                (CLUSTER_APIS + (MANAGED_DATABASE_APIS if config.airflow.database == "managed" else ()))
                if gcp_cfg.enable_apis
                else ()
            ),
        )


def gcp_labels(tags: dict[str, str]) -> dict[str, str]:
    """Stack tags as GCP labels: lowercase letters, digits, '_' and '-', at most 63 chars, keys start with a letter."""

    def clean(text: str) -> str:
        return "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "_" for c in text.lower())[:63]

    labels = {}
    for key, value in tags.items():
        k = clean(key)
        labels[k if k[:1].isalpha() else f"k_{k}"[:63]] = clean(value)
    return labels


def gke_kubeconfig(endpoint: str, ca_data: str, context: str) -> str:
    """A kubeconfig whose tokens come from `gke-gcloud-auth-plugin`, as `gcloud ... get-credentials` writes it."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": context, "cluster": {"server": f"https://{endpoint}", "certificate-authority-data": ca_data}}
            ],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
            "current-context": context,
            "users": [
                {
                    "name": context,
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1beta1",
                            "command": "gke-gcloud-auth-plugin",
                            "installHint": "Install gke-gcloud-auth-plugin: "
                            "gcloud components install gke-gcloud-auth-plugin",
                            "provideClusterInfo": True,
                        }
                    },
                }
            ],
        },
        sort_keys=False,
    )


class GkeCluster(pulumi.ComponentResource):
    """A GKE cluster implementing `KubernetesCluster` (airflow_on_k8s/contract.py), plus what components that place
    GCP resources next to the cluster (e.g. Cloud SQL) need."""

    cloud: str = "gcp"
    """"gcp" (Python-only: the same for every instance)."""
    cluster_name: pulumi.Output[str]
    """The GKE cluster's name."""
    kubeconfig: pulumi.Output[str]
    """A kubeconfig for the cluster that authenticates with `gke-gcloud-auth-plugin` (secret)."""
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
    provider: k8s.Provider
    """A Kubernetes provider for the cluster that waits for both node pools (Python-only)."""
    task_pool: TaskPoolSelector
    """TASK_POOL: the task node pool's label and taint (Python-only)."""
    workload_identity: WorkloadIdentity
    """GKE Workload Identity: binds a Kubernetes service account to a Google service account (Python-only)."""
    gcp_provider: gcp.Provider
    """The explicit Google provider every GCP resource here uses; reuse it for more GCP resources (Python-only)."""
    enabled_apis: list[pulumi.Resource]
    """The resources that enable `args.apis`; GCP resources created later should depend on them (Python-only)."""
    system_node_pool: gcp.container.NodePool
    """The system node pool (Python-only)."""
    task_node_pool: gcp.container.NodePool
    """The task node pool (Python-only)."""

    def __init__(self, name: str, args: GkeClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("airflow-on-k8s:cluster:GkeCluster", name, None, opts)
        self.project = pulumi.Output.from_input(args.project)
        self.region = pulumi.Output.from_input(args.region)
        self.task_pool = TASK_POOL

        self.gcp_provider = gcp.Provider(
            f"{name}-gcp",
            project=args.project,
            region=args.region,
            default_labels=args.labels,
            opts=pulumi.ResourceOptions(parent=self),
        )
        # Kept enabled on destroy: other things in the project may use them.
        self.enabled_apis = [
            gcp.projects.Service(
                f"{name}-api-{api.split('.')[0]}",
                project=args.project,
                service=api,
                disable_on_destroy=False,
                opts=pulumi.ResourceOptions(parent=self, provider=self.gcp_provider),
            )
            for api in args.apis
        ]
        # Every GCP resource waits for the APIs ("API has not been used in project ..." otherwise).
        child = pulumi.ResourceOptions(parent=self, provider=self.gcp_provider, depends_on=self.enabled_apis)

        network, subnet = self._network(name, args, child)
        node_sa, node_sa_roles = self._node_service_account(name, args, child)
        nat = self._nat(name, args, network, subnet, child) if args.private_nodes else None

        cluster = gcp.container.Cluster(
            name,
            name=args.cluster_name,
            location=args.region,
            node_locations=list(args.node_zones) or None,
            network=network.id,
            subnetwork=subnet.id,
            networking_mode="VPC_NATIVE",
            ip_allocation_policy=gcp.container.ClusterIpAllocationPolicyArgs(
                cluster_secondary_range_name=args.pods_range_name,
                services_secondary_range_name=args.services_range_name,
            ),
            # GKE cannot create a cluster without a pool: it creates a one-node default pool and we delete it
            # at once, managing our own pools. The throwaway pool runs as the minimal node account, not the
            # Compute Engine default account (which may be disabled or over-privileged).
            remove_default_node_pool=True,
            initial_node_count=1,
            node_config=gcp.container.ClusterNodeConfigArgs(
                service_account=node_sa.email,
                oauth_scopes=NODE_OAUTH_SCOPES,
                workload_metadata_config=gcp.container.ClusterNodeConfigWorkloadMetadataConfigArgs(mode="GKE_METADATA"),
                shielded_instance_config=gcp.container.ClusterNodeConfigShieldedInstanceConfigArgs(
                    enable_secure_boot=True, enable_integrity_monitoring=True
                ),
            ),
            # No min_master_version: a release channel is always set, GKE rejects a minimum version the channel
            # does not offer (STABLE runs a minor or two behind RAPID), and the channel upgrades the cluster past
            # any minimum anyway. The channel's default version is what a new cluster gets.
            release_channel=gcp.container.ClusterReleaseChannelArgs(channel=args.release_channel),
            workload_identity_config=gcp.container.ClusterWorkloadIdentityConfigArgs(workload_pool=args.workload_pool),
            # Node auto-provisioning stays off (we own the pools); the profile sets how eagerly GKE's own
            # autoscaler removes idle nodes, i.e. how soon an empty task node stops costing money.
            cluster_autoscaling=gcp.container.ClusterClusterAutoscalingArgs(
                enabled=False, autoscaling_profile=args.autoscaling_profile
            ),
            private_cluster_config=(
                gcp.container.ClusterPrivateClusterConfigArgs(
                    enable_private_nodes=True,
                    # Default: the public endpoint stays on, open only to the authorized networks below (the
                    # deployer's public address), so the same `up` that creates the cluster can deploy to it.
                    enable_private_endpoint=args.private_endpoint,
                    master_ipv4_cidr_block=args.master_cidr,
                    # The internal endpoint answers only clients in the cluster's region unless global access is
                    # on; a runner or VPN gateway in another region of the VPC needs it.
                    master_global_access_config=(
                        gcp.container.ClusterPrivateClusterConfigMasterGlobalAccessConfigArgs(enabled=True)
                        if args.private_endpoint
                        else None
                    ),
                )
                if args.private_nodes
                else None
            ),
            master_authorized_networks_config=gcp.container.ClusterMasterAuthorizedNetworksConfigArgs(
                cidr_blocks=[
                    gcp.container.ClusterMasterAuthorizedNetworksConfigCidrBlockArgs(cidr_block=c, display_name=c)
                    for c in args.master_authorized_cidrs
                ],
                # Only the listed networks: not every Google Cloud VM's public address as well.
                gcp_public_cidrs_access_enabled=False,
            ),
            # Dataplane V2 (eBPF): NetworkPolicy enforcement built in, no separate Calico add-on.
            datapath_provider="ADVANCED_DATAPATH",
            enable_shielded_nodes=True,
            addons_config=gcp.container.ClusterAddonsConfigArgs(
                # The bundled Postgres and Redis (dev) need persistent volumes.
                gce_persistent_disk_csi_driver_config=gcp.container.ClusterAddonsConfigGcePersistentDiskCsiDriverConfigArgs(
                    enabled=True
                ),
            ),
            logging_config=gcp.container.ClusterLoggingConfigArgs(enable_components=["SYSTEM_COMPONENTS", "WORKLOADS"]),
            # Managed Service for Prometheus' managed collection (GKE's default on 1.27+, stated so an update
            # cannot turn it off): the PodMonitoring objects of observability/component.py need it, and only
            # what they select is ingested (billed).
            monitoring_config=gcp.container.ClusterMonitoringConfigArgs(
                enable_components=["SYSTEM_COMPONENTS"],
                managed_prometheus=gcp.container.ClusterMonitoringConfigManagedPrometheusArgs(enabled=True),
            ),
            deletion_protection=args.protect,
            opts=pulumi.ResourceOptions.merge(
                child,
                pulumi.ResourceOptions(
                    protect=args.protect,
                    # node_config only shapes the deleted default pool; once it is gone GKE reports none, and a
                    # diff on it would replace the whole cluster.
                    ignore_changes=["nodeConfig", "initialNodeCount"],
                ),
            ),
        )

        pool_depends_on: list[pulumi.Resource] = [*node_sa_roles, *([nat] if nat else [])]
        self.system_node_pool = self._node_pool(
            f"{name}-system",
            "system",
            args,
            cluster,
            node_sa,
            args.system_pool,
            labels={},
            taints=[],
            # Keep system nodes spread over the zones so one zone outage leaves Airflow a node.
            location_policy="BALANCED",
            initial_node_count=1,
            depends_on=pool_depends_on,
            opts=child,
        )
        self.task_node_pool = self._node_pool(
            f"{name}-tasks",
            "tasks",
            args,
            cluster,
            node_sa,
            args.task_pool,
            labels=TASK_POOL.labels,
            taints=[
                gcp.container.NodePoolNodeConfigTaintArgs(
                    key=TASK_POOL.taint_key, value=TASK_POOL.taint_value, effect=TASK_POOL.gke_taint_effect
                )
            ],
            # ANY: take capacity in whichever zone has it, which matters most for spot VMs.
            location_policy="ANY",
            initial_node_count=0,
            depends_on=pool_depends_on,
            opts=child,
        )

        if args.private_nodes:
            gcp.compute.Firewall(
                # Pulumi names it "<logical name>-<7 random characters>"; Compute Engine takes 63 at most, so the
                # logical name stays within 30 (cluster name) + 1 + 24. The alias keeps rules made under the old
                # logical name.
                f"{name}-control-plane-to-keda",
                network=network.id,
                description="GKE control plane to KEDA metrics API (6443) and admission webhooks (9443) on nodes",
                direction="INGRESS",
                source_ranges=[args.master_cidr],
                target_service_accounts=[node_sa.email],
                allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=CONTROL_PLANE_TO_NODE_PORTS)],
                opts=pulumi.ResourceOptions.merge(
                    child, pulumi.ResourceOptions(aliases=[pulumi.Alias(name=f"{name}-control-plane-to-webhooks")])
                ),
            )

        context = f"gke_{args.project}_{args.region}_{args.cluster_name}"
        self.cluster_name = cluster.name
        # The address Pulumi and kubectl use: the internal one when that is the only endpoint. (`cluster.endpoint`
        # is the public address whenever the public endpoint is on.)
        api_address = (
            cluster.private_cluster_config.apply(lambda c: c.private_endpoint)  # type: ignore[union-attr]
            if args.private_endpoint
            else cluster.endpoint
        )
        self.kubeconfig = pulumi.Output.secret(
            pulumi.Output.all(api_address, cluster.master_auth.cluster_ca_certificate).apply(
                lambda values: gke_kubeconfig(values[0], values[1], context)
            )
        )
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            # What makes this the same cluster. Unset, the Kubernetes provider takes a new API server address for a
            # new cluster and replaces every Kubernetes resource (pulumi/pulumi-kubernetes#577), so turning on
            # gcp.privateEndpoint would recreate Airflow. The cluster's CA changes only with a new cluster (or a CA
            # rotation). pulumi-kubernetes 4.34.2 Provider `cluster_identifier`: "the provider will _only_ be
            # replaced when clusterIdentifier changes".
            cluster_identifier=cluster.master_auth.cluster_ca_certificate.apply(
                lambda ca: f"{context}-{hashlib.sha256((ca or '').encode()).hexdigest()[:16]}"
            ),
            # Kubernetes resources wait for both pools; otherwise Helm releases time out on a node-less cluster.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.system_node_pool, self.task_node_pool]),
        )
        self.workload_identity = GkeWorkloadIdentity(
            args.cluster_name, args.project, self.gcp_provider, cluster, depends_on=self.enabled_apis
        )
        self.network_id = network.id
        self.network_self_link = network.self_link
        self.subnetwork_self_link = subnet.self_link
        self.node_service_account_email = node_sa.email

        register_annotated_outputs(self)

    def _network(
        self, name: str, args: GkeClusterArgs, opts: pulumi.ResourceOptions
    ) -> tuple[gcp.compute.Network, gcp.compute.Subnetwork]:
        network = gcp.compute.Network(
            f"{name}-network",
            auto_create_subnetworks=False,
            routing_mode="REGIONAL",
            opts=opts,
        )
        subnet = gcp.compute.Subnetwork(
            f"{name}-subnet",
            network=network.id,
            region=args.region,
            ip_cidr_range=args.subnet_cidr,
            secondary_ip_ranges=[
                gcp.compute.SubnetworkSecondaryIpRangeArgs(range_name=args.pods_range_name, ip_cidr_range=args.pods_cidr),
                gcp.compute.SubnetworkSecondaryIpRangeArgs(
                    range_name=args.services_range_name, ip_cidr_range=args.services_cidr
                ),
            ],
            # Nodes without public IPs still reach Google APIs (Artifact Registry, GCS, Logging).
            private_ip_google_access=True,
            opts=opts,
        )
        return network, subnet

    def _nat(
        self,
        name: str,
        args: GkeClusterArgs,
        network: gcp.compute.Network,
        subnet: gcp.compute.Subnetwork,
        opts: pulumi.ResourceOptions,
    ) -> gcp.compute.RouterNat:
        # Private nodes have no public IPs; Cloud NAT gives them (and pods) egress to the internet.
        router = gcp.compute.Router(f"{name}-router", network=network.id, region=args.region, opts=opts)
        return gcp.compute.RouterNat(
            f"{name}-nat",
            router=router.name,
            region=args.region,
            nat_ip_allocate_option="AUTO_ONLY",
            source_subnetwork_ip_ranges_to_nat="LIST_OF_SUBNETWORKS",
            subnetworks=[
                gcp.compute.RouterNatSubnetworkArgs(name=subnet.id, source_ip_ranges_to_nats=["ALL_IP_RANGES"])
            ],
            log_config=gcp.compute.RouterNatLogConfigArgs(enable=True, filter="ERRORS_ONLY"),
            opts=opts,
        )

    def _node_service_account(
        self, name: str, args: GkeClusterArgs, opts: pulumi.ResourceOptions
    ) -> tuple[gcp.serviceaccount.Account, list[gcp.projects.IAMMember]]:
        account = gcp.serviceaccount.Account(
            f"{name}-nodes",
            account_id=service_account_id(args.cluster_name, "nodes"),
            display_name=f"GKE nodes of {args.cluster_name}",
            project=args.project,
            opts=opts,
        )
        member = account.email.apply(lambda email: f"serviceAccount:{email}")
        roles = [
            gcp.projects.IAMMember(
                f"{name}-nodes-{role.removeprefix('roles/').replace('.', '-')}",
                project=args.project,
                role=role,
                member=member,
                opts=opts,
            )
            for role in NODE_SERVICE_ACCOUNT_ROLES
        ]
        return account, roles

    def _node_pool(
        self,
        resource_name: str,
        pool_name: str,
        args: GkeClusterArgs,
        cluster: gcp.container.Cluster,
        node_sa: gcp.serviceaccount.Account,
        spec: GkeNodePoolSpec,
        labels: dict[str, str],
        taints: list[gcp.container.NodePoolNodeConfigTaintArgs],
        location_policy: Literal["BALANCED", "ANY"],
        initial_node_count: int,
        depends_on: list[pulumi.Resource],
        opts: pulumi.ResourceOptions,
    ) -> gcp.container.NodePool:
        return gcp.container.NodePool(
            resource_name,
            # Explicit: unset, Pulumi would name it "<cluster>-<pool>-<7 random characters>", past GKE's 40-character
            # limit for cluster names over 25 characters (pulumi/pulumi-gcp#1510). Pool names are per cluster.
            name=pool_name,
            cluster=cluster.name,
            location=args.region,
            node_locations=list(args.node_zones) or None,
            # initial_node_count is per zone; the autoscaler takes over from there.
            initial_node_count=initial_node_count,
            # total_* limits count the whole pool; min/max_node_count would count per zone, so a regional pool
            # with min 1 would keep one node in every zone and max would multiply by the zone count.
            autoscaling=gcp.container.NodePoolAutoscalingArgs(
                total_min_node_count=spec.min_nodes,
                total_max_node_count=spec.max_nodes,
                location_policy=location_policy,
            ),
            management=gcp.container.NodePoolManagementArgs(auto_repair=True, auto_upgrade=True),
            node_config=gcp.container.NodePoolNodeConfigArgs(
                machine_type=spec.machine_type,
                disk_size_gb=spec.disk_size_gb,
                disk_type="pd-balanced",
                spot=spec.spot,
                # Left unset (not empty lists) on a pool that has none.
                labels=labels or None,
                taints=taints or None,
                service_account=node_sa.email,
                oauth_scopes=NODE_OAUTH_SCOPES,
                # Pods get credentials only through Workload Identity, never the node's own account.
                workload_metadata_config=gcp.container.NodePoolNodeConfigWorkloadMetadataConfigArgs(mode="GKE_METADATA"),
                shielded_instance_config=gcp.container.NodePoolNodeConfigShieldedInstanceConfigArgs(
                    enable_secure_boot=True, enable_integrity_monitoring=True
                ),
            ),
            opts=pulumi.ResourceOptions.merge(
                opts,
                pulumi.ResourceOptions(
                    # The autoscaler owns the node count; Pulumi must not scale the pool back on the next `up`.
                    ignore_changes=["nodeCount", "initialNodeCount"],
                    depends_on=depends_on,
                    # A fixed name cannot exist twice: a replacement must delete the old pool first.
                    delete_before_replace=True,
                ),
            ),
        )

