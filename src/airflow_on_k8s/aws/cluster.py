"""An EKS cluster with a system node group and a task node group that scales from zero.

Resources (all children of the component, all through one explicit `aws.Provider` for the stack's region):

- Network: a VPC carved from `aws.vpcCidr` into a large private and a small public subnet per AZ, an
  internet gateway, NAT gateways (one per AZ, or one shared) and route tables. Subnets carry the tags the
  AWS load balancer integrations look for.
- The cluster: access entries only (authentication mode API, no aws-auth ConfigMap), Secrets encrypted
  with a KMS key that rotates, control-plane logs in a log group with retention, the upgrade policy
  (`aws.supportType`), private endpoint always on (reachable on 443 from `aws.privateAccessCidrs`), public
  endpoint per `aws.publicEndpoint`, open only to `aws.publicAccessCidrs`.
- An S3 gateway endpoint on the private route tables: task logs and ECR image layers (served from S3) skip the
  NAT gateway and its per-GB charge.
- IRSA: an IAM OIDC provider for the cluster's issuer, behind `workload_identity`.
- Managed add-ons: VPC CNI (through its own IRSA role, so nodes do not carry its permissions; its network
  policy agent per `aws.networkPolicy`), kube-proxy, CoreDNS, and the EBS CSI driver (its own IRSA role) with
  an encrypted gp3 StorageClass as the cluster default.
- Two managed node groups: "system" (Airflow and the add-ons; at least one node) and "tasks" (the
  TASK_POOL label and taint, spot when asked, 0..N nodes), plus Cluster Autoscaler tags on the task group.
- The Cluster Autoscaler (airflow_on_k8s/aws/cluster_autoscaler.py) and a Kubernetes provider from a kubeconfig
  that authenticates with `aws eks get-token`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from airflow_on_k8s.aws.workload_identity import IrsaWorkloadIdentity
from airflow_on_k8s.contract import register_annotated_outputs
from airflow_on_k8s.aws.cluster_autoscaler import ClusterAutoscaler, ClusterAutoscalerArgs
from airflow_on_k8s.config import PROJECT, AwsConfig, ConfigError, PoolConfig, StackConfig
from airflow_on_k8s.task_pool import TASK_POOL, TaskPoolSelector
from airflow_on_k8s.versions import DEFAULT_KUBERNETES_VERSION, EKS_STANDARD_SUPPORT_ENDS

# Cluster-admin for the principals in `aws.adminRoleArns`.
CLUSTER_ADMIN_POLICY = "cluster-access-policy/AmazonEKSClusterAdminPolicy"

# Managed policies every EKS node needs. Image pulls use PullOnly, the narrower successor of ReadOnly.
# The CNI policy is not here: the VPC CNI add-on gets it through its own IRSA role.
NODE_MANAGED_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEC2ContainerRegistryPullOnly")

# The EBS CSI driver's AWS-managed policy. V2 is the least-privilege successor of AmazonEBSCSIDriverPolicy: it
# acts only on volumes and snapshots tagged ebs.csi.aws.com/cluster=true, which the driver puts on every volume it
# provisions (kubernetes-sigs/aws-ebs-csi-driver v1.64.0 docs/install.md, issue #2918).
EBS_CSI_POLICY = "service-role/AmazonEBSCSIDriverPolicyV2"
EBS_CSI_NAMESPACE = "kube-system"
EBS_CSI_SERVICE_ACCOUNT = "ebs-csi-controller-sa"
DEFAULT_STORAGE_CLASS = "gp3-encrypted"

# AZ IDs in which EKS refuses control-plane subnets (EKS user guide, network-reqs.html#network-requirements-subnets).
# IDs, not names: names map to different physical zones in each account.
EKS_UNSUPPORTED_ZONE_IDS = frozenset({"use1-az3", "usw1-az2", "cac1-az3"})

# Address blocks reserved for documentation (RFC 5737): the shipped stacks use one as a placeholder CIDR.
DOCUMENTATION_NETWORKS = tuple(
    ipaddress.IPv4Network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
)
# Never the source address of a request to the public endpoint (RFC 1918, shared, loopback, link-local).
NON_PUBLIC_NETWORKS = tuple(
    ipaddress.IPv4Network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16")
)
FIND_YOUR_ADDRESS = "find yours with `curl -s https://checkip.amazonaws.com` and add /32"

# Warn this long before a minor leaves EKS standard support.
SUPPORT_END_WARNING_DAYS = 60

# The stack config's defaults are the args' defaults: a component user gets what a stack file gets.
_AWS_DEFAULTS = AwsConfig.model_construct()
_POOL_DEFAULTS = PoolConfig.model_construct()

# A Graviton instance type has a "g" right after its generation digit (m7g.large, c7gn.xlarge, r8gd.2xlarge).
_GRAVITON_TYPE = re.compile(r"^[a-z]+\d+g[a-z-]*\.")


@dataclass(frozen=True)
class SubnetPlan:
    """The subnets of one AZ: a large private one (pods get VPC addresses) and a small public one."""

    private: ipaddress.IPv4Network
    public: ipaddress.IPv4Network


def plan_subnets(vpc_cidr: str, az_count: int) -> list[SubnetPlan]:
    """Carve the VPC: eighths 0..n-1 are the private subnets, the last eighth is cut into public subnets.

    The VPC CNI gives every pod an address from its node's subnet, so private subnets get the room;
    public subnets only hold NAT gateways and load balancers. Up to 6 AZs fit, with one eighth to spare.
    """
    vpc = ipaddress.IPv4Network(vpc_cidr, strict=True)
    if not 2 <= az_count <= 6:
        raise ValueError(f"aws.availabilityZones: {az_count} is outside 2..6")
    eighths = list(vpc.subnets(prefixlen_diff=3))
    public = list(eighths[-1].subnets(prefixlen_diff=3))
    return [SubnetPlan(private=eighths[i], public=public[i]) for i in range(az_count)]


def usable_zones(names: list[str], zone_ids: list[str]) -> list[str]:
    """The AZ names (sorted) whose zone IDs EKS accepts for control-plane subnets."""
    return sorted(name for name, zone in zip(names, zone_ids, strict=True) if zone not in EKS_UNSUPPORTED_ZONE_IDS)


def pick_zone(names: list[str], index: int, wanted: int, region: str) -> str:
    """The index-th usable AZ of the region, or a clear error when the region has too few."""
    if len(names) < wanted:
        raise ConfigError(
            [
                f"{PROJECT}:aws.availabilityZones: {wanted} asked, but {region} offers only {len(names)} "
                f"that EKS accepts ({', '.join(names)}); set it to {len(names)} or less"
            ]
        )
    return sorted(names)[index]


def s3_gateway_service(region: str) -> str:
    """The S3 gateway endpoint's service name (China regions put `cn.` in front)."""
    return f"{'cn.' if region.startswith('cn-') else ''}com.amazonaws.{region}.s3"


def _networks(key: str, cidrs: list[str], problems: list[str]) -> list[tuple[int, ipaddress.IPv4Network]]:
    """The parseable CIDRs with their positions in the list; a problem for each other one."""
    nets = []
    for i, cidr in enumerate(cidrs):
        try:
            nets.append((i, ipaddress.IPv4Network(cidr, strict=True)))
        except ValueError as e:
            problems.append(
                f"{PROJECT}:{key}[{i}]: {cidr!r} is not an IPv4 CIDR block ({e}); write it like 203.0.113.0/24"
            )
    return nets


def api_access_problems(public_endpoint: bool, public_cidrs: list[str], private_cidrs: list[str]) -> list[str]:
    """Endpoint settings under which nobody, `pulumi up` included, could reach the Kubernetes API.

    Requests to the public endpoint come from public addresses (your NAT or office egress), so only those belong
    in publicAccessCidrs. The private endpoint's network interfaces sit in the VPC behind the cluster security
    group, so it is reached only from the VPC or networks routed to it (VPN, peering, Transit Gateway), on 443
    from privateAccessCidrs.
    """
    problems: list[str] = []
    for i, net in _networks("aws.publicAccessCidrs", public_cidrs, problems):
        if any(net.subnet_of(private) for private in NON_PUBLIC_NETWORKS):
            problems.append(
                f"{PROJECT}:aws.publicAccessCidrs[{i}]: {net} is a private range, but the public endpoint sees your "
                f"public egress address ({FIND_YOUR_ADDRESS}); list private ranges in aws.privateAccessCidrs"
            )
    for i, net in _networks("aws.privateAccessCidrs", private_cidrs, problems):
        if net.is_global:
            problems.append(
                f"{PROJECT}:aws.privateAccessCidrs[{i}]: {net} is a public range, but the private endpoint is reached "
                "only from the VPC or networks routed to it; list the runner's or VPN's private range, or put your "
                "public address in aws.publicAccessCidrs"
            )
    if public_endpoint and not public_cidrs:
        problems.append(
            f"{PROJECT}:aws.publicAccessCidrs: is empty, so nobody could reach the public API endpoint; list the "
            f"addresses that deploy ({FIND_YOUR_ADDRESS}), or make the API private with aws.publicEndpoint: false "
            "and aws.privateAccessCidrs"
        )
    if not public_endpoint and public_cidrs:
        problems.append(
            f"{PROJECT}:aws.publicAccessCidrs: is set but aws.publicEndpoint is false, so it would be ignored; "
            "remove it, or set aws.publicEndpoint to true"
        )
    if not public_endpoint and not private_cidrs:
        problems.append(
            f"{PROJECT}:aws.privateAccessCidrs: is empty while aws.publicEndpoint is false, so only the nodes could "
            "reach the API, not `pulumi up`; list the CIDR of the runner or VPN that deploys (docs/clusters.md, "
            "\"Reaching the API\"), or set aws.publicEndpoint to true"
        )
    return problems


def documentation_cidrs(cidrs: list[str]) -> list[str]:
    """The CIDRs inside the RFC 5737 documentation blocks: placeholders nobody deploys from."""
    nets = [(c, ipaddress.IPv4Network(c, strict=False)) for c in cidrs]
    return [c for c, net in nets if any(net.subnet_of(doc) for doc in DOCUMENTATION_NETWORKS)]


def standard_support_warning(minor: str, support_type: str, today: date) -> str | None:
    """What happens soon (or has happened) to a cluster on `minor` when its EKS standard support ends, if anything."""
    ends = EKS_STANDARD_SUPPORT_ENDS[minor]
    if (ends - today).days > SUPPORT_END_WARNING_DAYS:
        return None
    verb = "left" if today >= ends else "leaves"
    outcome = (
        "EKS then upgrades the cluster to the next minor (aws.supportType STANDARD)"
        if support_type == "STANDARD"
        else "the cluster then bills extended support, $0.60 instead of $0.10 per hour (aws.supportType EXTENDED)"
    )
    return (
        f"{PROJECT}:kubernetesVersion: {minor} {verb} EKS standard support on {ends.isoformat()}; {outcome}. "
        "Upgrade: set kubernetesVersion to the next minor."
    )


def ami_type(arm: bool) -> str:
    return "AL2023_ARM_64_STANDARD" if arm else "AL2023_x86_64_STANDARD"


@dataclass(frozen=True)
class EksNodePoolSpec:
    """One managed node group's shape."""

    instance_types: tuple[str, ...]
    """EC2 instance types, e.g. ("m6i.xlarge", "m5.xlarge"): all Graviton when `arm`, none otherwise. Several
    types of one size give spot more pools to draw from."""
    min_size: int
    """Fewest nodes (0 lets the group scale to zero; the system group needs 1 or more)."""
    max_size: int
    """Most nodes the Cluster Autoscaler may add (at least `min_size`, at least 1)."""
    spot: bool = _POOL_DEFAULTS.spot
    """Spot capacity: cheaper, but AWS may reclaim a node at two minutes' notice; fine for retryable tasks."""
    disk_size_gb: int = _POOL_DEFAULTS.disk_size_gb
    """Root volume size of each node in GiB (encrypted gp3)."""
    arm: bool = _POOL_DEFAULTS.arm
    """Graviton (ARM64) nodes with the AL2023 ARM AMI; every image the pool runs must be multi-arch."""

    @property
    def capacity_type(self) -> str:
        return "SPOT" if self.spot else "ON_DEMAND"


def _pool_spec(config: StackConfig, pool: str, key: str, problems: list[str]) -> EksNodePoolSpec:
    cfg = config.system_pool if pool == "system" else config.task_pool
    types = tuple(config.instance_types(pool))  # type: ignore[arg-type]
    wrong = [t for t in types if bool(_GRAVITON_TYPE.match(t)) != cfg.arm]
    if wrong:
        if cfg.arm:
            problems.append(
                f"{PROJECT}:{key}.instanceTypes: {', '.join(wrong)} are not Graviton (ARM) types but {key}.arm "
                "is true; list Graviton types such as m7g.xlarge, or set arm to false"
            )
        else:
            problems.append(
                f"{PROJECT}:{key}.instanceTypes: {', '.join(wrong)} are Graviton (ARM) types; set {key}.arm "
                "to true or list x86 types such as m6i.xlarge"
            )
    return EksNodePoolSpec(
        instance_types=types,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        spot=cfg.spot,
        disk_size_gb=cfg.disk_size_gb,
        arm=cfg.arm,
    )


@dataclass(frozen=True)
class EksClusterArgs:
    """Everything `EksCluster` needs; `from_stack` builds it from the stack config and checks what EKS cannot take.

    The defaults are the stack config's (airflow_on_k8s/config.py), so a component user and a stack file get the
    same cluster for the same settings.
    """

    cluster_name: str
    """The EKS cluster's name: 1-30 lowercase letters, digits and '-', starting with a letter (the stack config's
    clusterName rule, which keeps the names derived from it within AWS's limits); also names its VPC, log group,
    subnets and tags. Not checked here: `from_stack` input is validated by the stack config."""
    region: str
    """The AWS region, e.g. eu-west-1; every AWS resource goes through one provider for it."""
    public_access_cidrs: tuple[str, ...]
    """Who may reach the public API endpoint: public CIDR blocks, such as your egress address as a /32. Required
    (no open default) while `public_endpoint` is true; must be empty when it is false."""
    system_pool: EksNodePoolSpec
    """The system node group: Airflow and the add-ons (min_size 1 or more)."""
    task_pool: EksNodePoolSpec
    """The task node group: KubernetesPodOperator pods only (TASK_POOL label and taint); min_size 0 scales from zero."""
    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION
    """The Kubernetes minor, e.g. "1.35": one in EKS standard support (EKS_STANDARD_SUPPORT_ENDS, versions.py)."""
    availability_zones: int = _AWS_DEFAULTS.availability_zones
    """How many AZs get a private and a public subnet (and node capacity): 2 to 6."""
    vpc_cidr: str = _AWS_DEFAULTS.vpc_cidr
    """The VPC's IPv4 range, a /20 or larger: private subnets take an eighth each, public ones share the last."""
    service_cidr: str = _AWS_DEFAULTS.service_cidr
    """The range of Kubernetes Service IPs; must not overlap the VPC."""
    nat_gateway_per_az: bool = _AWS_DEFAULTS.nat_gateway_per_az
    """One NAT gateway per AZ (survives an AZ outage), or one shared NAT gateway (cheaper, for dev)."""
    public_endpoint: bool = _AWS_DEFAULTS.public_endpoint
    """Whether the API has a public endpoint (open to `public_access_cidrs` only); the private one is always on."""
    private_access_cidrs: tuple[str, ...] = tuple(_AWS_DEFAULTS.private_access_cidrs)
    """Private CIDR blocks admitted on 443 to the private API endpoint (a runner or VPN in or peered with the VPC);
    required when `public_endpoint` is false."""
    admin_role_arns: tuple[str, ...] = tuple(_AWS_DEFAULTS.admin_role_arns)
    """IAM role ARNs given cluster-admin through EKS access entries (the identity running `pulumi up` always is)."""
    control_plane_log_types: tuple[str, ...] | None = _AWS_DEFAULTS.control_plane_log_types
    """EKS control-plane log types sent to CloudWatch (api, audit, authenticator, controllerManager, scheduler);
    None: audit and authenticator, or all five when `protect` is true."""
    control_plane_log_retention_days: int | None = _AWS_DEFAULTS.control_plane_log_retention_days
    """Days CloudWatch keeps control-plane logs, one of CLOUDWATCH_RETENTION_DAYS (config.py); None: 7, or 90 when
    `protect` is true."""
    support_type: str = _AWS_DEFAULTS.support_type
    """STANDARD (EKS upgrades the cluster when its minor leaves standard support) or EXTENDED (stays, billed $0.60
    instead of $0.10 per cluster hour)."""
    network_policy: bool = _AWS_DEFAULTS.network_policy
    """Enforce NetworkPolicies with the VPC CNI's network policy agent; false stores them but enforces nothing."""
    autoscaler: ClusterAutoscalerArgs | None = None
    """The Cluster Autoscaler's settings; None: its defaults for this cluster (`cluster_autoscaler_args`)."""
    protect: bool = False
    """Pulumi `protect` and EKS deletion protection on the cluster and its Secrets key (and the longer log
    defaults above): true for production."""
    tags: dict[str, str] = field(default_factory=dict)
    """AWS tags on every resource, besides `project` and `cluster`."""

    @property
    def cluster_autoscaler_args(self) -> ClusterAutoscalerArgs:
        """`autoscaler`, or the Cluster Autoscaler's defaults for this cluster."""
        return self.autoscaler or ClusterAutoscalerArgs(self.cluster_name, self.region, self.kubernetes_version)

    @property
    def log_types(self) -> list[str]:
        """The control-plane log types to ship: as set, or by `protect` (the stack config's rule)."""
        return AwsConfig.model_construct(control_plane_log_types=self.control_plane_log_types).log_types(self.protect)

    @property
    def log_retention_days(self) -> int:
        """The control-plane logs' retention in days: as set, or by `protect` (the stack config's rule)."""
        settings = AwsConfig.model_construct(control_plane_log_retention_days=self.control_plane_log_retention_days)
        return settings.log_retention_days(self.protect)

    @classmethod
    def from_stack(cls, config: StackConfig) -> EksClusterArgs:
        """The EKS settings of a stack, or ConfigError naming each key that cannot work on EKS."""
        if config.cloud != "aws" or config.aws is None:
            raise ConfigError([f"{PROJECT}:aws: is required for an EKS cluster; set aws.region"])
        problems: list[str] = []
        system_pool = _pool_spec(config, "system", "systemPool", problems)
        task_pool = _pool_spec(config, "task", "taskPool", problems)
        for i, arn in enumerate(config.aws.admin_role_arns):
            if not re.match(r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$", arn):
                problems.append(
                    f"{PROJECT}:aws.adminRoleArns[{i}]: {arn!r} is not an IAM role ARN; "
                    "write it like arn:aws:iam::123456789012:role/platform-admins"
                )
        problems += api_access_problems(
            config.aws.public_endpoint, config.aws.public_access_cidrs, config.aws.private_access_cidrs
        )
        if config.kubernetes_version not in EKS_STANDARD_SUPPORT_ENDS:
            problems.append(
                f"{PROJECT}:kubernetesVersion: {config.kubernetes_version!r} is not in EKS standard support; use one "
                f"of {', '.join(EKS_STANDARD_SUPPORT_ENDS)}"
            )
        try:
            autoscaler = ClusterAutoscalerArgs.from_stack(config)
        except ConfigError as e:
            problems += e.problems
        if problems:
            raise ConfigError(problems)
        return cls(
            cluster_name=config.cluster_name,
            region=config.aws.region,
            kubernetes_version=config.kubernetes_version,
            availability_zones=config.aws.availability_zones,
            vpc_cidr=config.aws.vpc_cidr,
            service_cidr=config.aws.service_cidr,
            nat_gateway_per_az=config.aws.nat_gateway_per_az,
            public_endpoint=config.aws.public_endpoint,
            public_access_cidrs=tuple(config.aws.public_access_cidrs),
            private_access_cidrs=tuple(config.aws.private_access_cidrs),
            admin_role_arns=tuple(config.aws.admin_role_arns),
            control_plane_log_types=tuple(config.aws.log_types(config.protect)),
            control_plane_log_retention_days=config.aws.log_retention_days(config.protect),
            support_type=config.aws.support_type,
            network_policy=config.aws.network_policy,
            system_pool=system_pool,
            task_pool=task_pool,
            autoscaler=autoscaler,
            protect=config.protect,
            tags=dict(config.tags),
        )


def task_pool_asg_tags(selector: TaskPoolSelector = TASK_POOL) -> dict[str, str]:
    """Tags that tell the Cluster Autoscaler what a node of the task group looks like before one exists.

    With no node to copy, the autoscaler builds a template node from the group's tags. Without the label
    tag it would think a task pod fits nowhere; without the taint tag it would add task nodes for pods
    that do not tolerate them. The EKS API fallback (eks:DescribeNodegroup) only works while the group has
    never had a node, so after the first scale-up and scale-down to zero only these tags remain.

    The discovery tags (`k8s.io/cluster-autoscaler/enabled`, `k8s.io/cluster-autoscaler/<cluster>`) are
    not here: EKS sets them on every managed node group's Auto Scaling group. A second writer of the same
    keys would only race EKS, and deleting that resource would delete EKS's tag and hide the group.
    """
    prefix = "k8s.io/cluster-autoscaler/node-template"
    return {
        f"{prefix}/label/{selector.label_key}": selector.label_value,
        f"{prefix}/taint/{selector.taint_key}": selector.taint_string,
    }


def kubeconfig_for(cluster_name: str, endpoint: str, ca_data: str, region: str) -> str:
    """A kubeconfig (JSON) that authenticates with `aws eks get-token`, as `aws eks update-kubeconfig` writes."""
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "aws",
            "args": ["eks", "get-token", "--cluster-name", cluster_name, "--region", region, "--output", "json"],
            "interactiveMode": "Never",
        }
    }
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": cluster_name, "cluster": {"server": endpoint, "certificate-authority-data": ca_data}}],
            "users": [{"name": cluster_name, "user": user}],
            "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": cluster_name}}],
            "current-context": cluster_name,
        }
    )


def _assume_role_policy(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
        }
    )


def _deploying() -> bool:
    """True during `pulumi up`'s update, false during a preview (and under the mock runtime)."""
    return not pulumi.runtime.is_dry_run()


def _check_before_deploying(args: EksClusterArgs) -> None:
    """Warnings a preview shows, and the placeholder check that stops `pulumi up` before any resource exists.

    The shipped stacks list a documentation address (203.0.113.10/32) in aws.publicAccessCidrs, so that they
    preview anywhere; deploying with it would create the cluster (about 15 minutes) and then time out on the
    first Kubernetes resource, as the API admits nobody.
    """
    placeholders = documentation_cidrs(list(args.public_access_cidrs))
    if placeholders:
        problem = (
            f"{PROJECT}:aws.publicAccessCidrs: {', '.join(placeholders)} is a documentation address (RFC 5737) that "
            f"no deployer has; replace it with your egress address ({FIND_YOUR_ADDRESS})"
        )
        if _deploying():
            raise ConfigError([problem])
        pulumi.log.warn(problem)
    warning = standard_support_warning(args.kubernetes_version, args.support_type, date.today())
    if warning:
        pulumi.log.warn(warning)


class EksCluster(pulumi.ComponentResource):
    """An EKS cluster implementing `KubernetesCluster` (airflow_on_k8s/contract.py), plus what components that
    place AWS resources next to the cluster (e.g. RDS) need."""

    cloud: str = "aws"
    """"aws" (Python-only: the same for every instance)."""
    cluster_name: pulumi.Output[str]
    """The EKS cluster's name."""
    cluster_arn: pulumi.Output[str]
    """The EKS cluster's ARN (the source of the AMP managed collector, observability/component.py)."""
    kubeconfig: pulumi.Output[str]
    """A kubeconfig for the cluster that authenticates with `aws eks get-token` (secret)."""
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
    provider: k8s.Provider
    """A Kubernetes provider for the cluster that waits for a system node, CoreDNS and the EBS CSI driver
    (Python-only)."""
    task_pool: TaskPoolSelector
    """TASK_POOL: the task node group's label and taint (Python-only)."""
    workload_identity: IrsaWorkloadIdentity
    """IRSA: binds a Kubernetes service account to an IAM role (Python-only)."""
    aws_provider: aws.Provider
    """The explicit AWS provider every AWS resource here uses, with the region and default tags (Python-only)."""
    system_node_group: aws.eks.NodeGroup
    """The system managed node group (Python-only)."""
    task_node_group: aws.eks.NodeGroup
    """The task managed node group (Python-only)."""
    default_storage_class: k8s.storage.v1.StorageClass
    """The encrypted gp3 StorageClass, the cluster's default (Python-only)."""
    cluster_autoscaler: ClusterAutoscaler
    """The Cluster Autoscaler component (Python-only)."""

    def __init__(self, name: str, args: EksClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        _check_before_deploying(args)
        super().__init__("airflow-on-k8s:aws:EksCluster", name, None, opts)
        self.task_pool = TASK_POOL
        self._tags = {"project": PROJECT, "cluster": args.cluster_name, **args.tags}
        self.aws_provider = aws.Provider(
            f"{name}-aws",
            region=args.region,
            default_tags=aws.ProviderDefaultTagsArgs(tags=self._tags),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self._opts = pulumi.ResourceOptions(parent=self, provider=self.aws_provider)
        partition = aws.get_partition_output(
            opts=pulumi.InvokeOutputOptions(parent=self, provider=self.aws_provider)
        ).partition

        private_subnets, private_routes = self._network(name, args)
        cluster = self._control_plane(name, args, private_subnets, partition)
        self.cluster_name = cluster.name
        self.cluster_security_group_id = cluster.vpc_config.cluster_security_group_id
        self.cluster_arn = cluster.arn

        issuer = cluster.identities.apply(lambda ids: ids[0].oidcs[0].issuer)
        oidc = aws.iam.OpenIdConnectProvider(
            f"{name}-oidc",
            url=issuer,
            # EKS issuers are verified against AWS's trusted CAs; no thumbprint is needed.
            client_id_lists=["sts.amazonaws.com"],
            opts=self._opts,
        )
        self.oidc_provider_arn = oidc.arn
        self.workload_identity = IrsaWorkloadIdentity(
            oidc_provider_arn=oidc.arn,
            issuer_host=issuer.apply(lambda url: url.removeprefix("https://")),
            partition=partition,
            aws_provider=self.aws_provider,
        )

        node_prereqs = self._node_addons(name, args, cluster, partition) + private_routes
        node_role = aws.iam.Role(
            f"{name}-node", assume_role_policy=_assume_role_policy("ec2.amazonaws.com"), opts=self._opts
        )
        attachments = [
            aws.iam.RolePolicyAttachment(
                f"{name}-node-{policy}",
                role=node_role.name,
                policy_arn=pulumi.Output.concat("arn:", partition, ":iam::aws:policy/", policy),
                opts=self._opts,
            )
            for policy in NODE_MANAGED_POLICIES
        ]
        self.node_role_arn = node_role.arn
        common = dict(
            cluster=cluster,
            node_role=node_role,
            subnets=private_subnets,
            depends_on=node_prereqs + attachments,
        )
        self.system_node_group = self._node_group(f"{name}-system", args.system_pool, **common)
        self.task_node_group = self._node_group(
            f"{name}-tasks",
            args.task_pool,
            labels=TASK_POOL.labels,
            taints=[
                aws.eks.NodeGroupTaintArgs(
                    key=TASK_POOL.taint_key, value=TASK_POOL.taint_value, effect=TASK_POOL.eks_taint_effect
                )
            ],
            **common,
        )
        task_asg_name = self.task_node_group.resources.apply(lambda rs: rs[0].autoscaling_groups[0].name)
        for kind, (key, value) in zip(("label", "taint"), task_pool_asg_tags().items()):
            aws.autoscaling.Tag(
                f"{name}-tasks-template-{kind}",
                autoscaling_group_name=task_asg_name,
                # Only the autoscaler reads these; instances need no copy.
                tag=aws.autoscaling.TagTagArgs(key=key, value=value, propagate_at_launch=False),
                opts=self._opts,
            )

        ebs_csi = self._ebs_csi_driver(name, cluster, partition)

        # CoreDNS is a Deployment: its add-on turns ACTIVE only once a node can run it.
        coredns = aws.eks.Addon(
            f"{name}-coredns",
            cluster_name=cluster.name,
            addon_name="coredns",
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="PRESERVE",
            opts=pulumi.ResourceOptions.merge(self._opts, pulumi.ResourceOptions(depends_on=[self.system_node_group])),
        )

        self.kubeconfig = pulumi.Output.secret(
            pulumi.Output.all(cluster.name, cluster.endpoint, cluster.certificate_authority.data).apply(
                lambda a: kubeconfig_for(a[0], a[1], a[2], args.region)
            )
        )
        # Everything installed through this provider waits for a node and for cluster DNS.
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.system_node_group, coredns, ebs_csi]),
        )
        # Since 1.30 EKS marks no StorageClass as default, and the in-tree gp2 class needs the CSI driver anyway
        # (EKS 1.30 release notes; ebs-csi-migration-faq.html): without this, every PVC (Redis, the bundled
        # Postgres) stays Pending. The add-on's own defaultStorageClass sets no parameters, so its volumes would
        # be unencrypted unless the account encrypts EBS by default (aws-ebs-csi-driver chart ebs-csi-default-sc.yaml).
        self.default_storage_class = k8s.storage.v1.StorageClass(
            f"{name}-{DEFAULT_STORAGE_CLASS}",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=DEFAULT_STORAGE_CLASS,
                annotations={"storageclass.kubernetes.io/is-default-class": "true"},
            ),
            provisioner="ebs.csi.aws.com",
            # Encrypted with the account's aws/ebs key, which needs no KMS grant for the driver's role.
            parameters={"type": "gp3", "encrypted": "true"},
            # Created in the AZ of the node the pod is scheduled to, not a random one.
            volume_binding_mode="WaitForFirstConsumer",
            allow_volume_expansion=True,
            reclaim_policy="Delete",
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider),
        )

        self.cluster_autoscaler = ClusterAutoscaler(
            "cluster-autoscaler",
            args.cluster_autoscaler_args,
            identity=self.workload_identity,
            k8s_provider=self.provider,
            # EKS labels each node with its managed node group's name.
            node_selector=self.system_node_group.node_group_name.apply(
                lambda group: {"eks.amazonaws.com/nodegroup": group}
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )

        register_annotated_outputs(self)

    def _network(self, name: str, args: EksClusterArgs) -> tuple[list[aws.ec2.Subnet], list[pulumi.Resource]]:
        """VPC, subnets, NAT and routes. Returns the private subnets and what their egress depends on."""
        plans = plan_subnets(args.vpc_cidr, args.availability_zones)
        # Zones that need no opt-in: Local Zones and Wavelength Zones cannot host EKS nodes.
        # Read now (not as an Output) so a region with too few AZs stops the program before any resource.
        available = aws.get_availability_zones(
            state="available",
            filters=[aws.GetAvailabilityZonesFilterArgs(name="opt-in-status", values=["opt-in-not-required"])],
            opts=pulumi.InvokeOptions(parent=self, provider=self.aws_provider),
        )
        zones = usable_zones(available.names, available.zone_ids)
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.vpc_cidr,
            # EKS's private endpoint and IRSA need DNS inside the VPC.
            enable_dns_support=True,
            enable_dns_hostnames=True,
            tags={"Name": f"{args.cluster_name}"},
            opts=self._opts,
        )
        self.vpc_id = vpc.id
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, opts=self._opts)
        cluster_tag = {f"kubernetes.io/cluster/{args.cluster_name}": "shared"}

        public_subnets: list[aws.ec2.Subnet] = []
        private_subnets: list[aws.ec2.Subnet] = []
        for i, plan in enumerate(plans):
            zone = pick_zone(zones, i, args.availability_zones, args.region)
            public_subnets.append(
                aws.ec2.Subnet(
                    f"{name}-public-{i}",
                    vpc_id=vpc.id,
                    cidr_block=str(plan.public),
                    availability_zone=zone,
                    # Nothing in a public subnet gets a public address unless asked (NAT uses an Elastic IP).
                    map_public_ip_on_launch=False,
                    tags={"Name": f"{args.cluster_name}-public-{i}", "kubernetes.io/role/elb": "1", **cluster_tag},
                    opts=self._opts,
                )
            )
            private_subnets.append(
                aws.ec2.Subnet(
                    f"{name}-private-{i}",
                    vpc_id=vpc.id,
                    cidr_block=str(plan.private),
                    availability_zone=zone,
                    map_public_ip_on_launch=False,
                    tags={
                        "Name": f"{args.cluster_name}-private-{i}",
                        "kubernetes.io/role/internal-elb": "1",
                        **cluster_tag,
                    },
                    opts=self._opts,
                )
            )
        self.private_subnet_ids = pulumi.Output.all(*[s.id for s in private_subnets])

        public_routes = aws.ec2.RouteTable(
            f"{name}-public",
            vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
            tags={"Name": f"{args.cluster_name}-public"},
            opts=self._opts,
        )
        for i, subnet in enumerate(public_subnets):
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{i}", subnet_id=subnet.id, route_table_id=public_routes.id, opts=self._opts
            )

        nat_count = args.availability_zones if args.nat_gateway_per_az else 1
        nats = []
        for i in range(nat_count):
            eip = aws.ec2.Eip(
                f"{name}-nat-{i}", domain="vpc", tags={"Name": f"{args.cluster_name}-nat-{i}"}, opts=self._opts
            )
            nats.append(
                aws.ec2.NatGateway(
                    f"{name}-nat-{i}",
                    allocation_id=eip.id,
                    subnet_id=public_subnets[i].id,
                    tags={"Name": f"{args.cluster_name}-nat-{i}"},
                    opts=pulumi.ResourceOptions.merge(self._opts, pulumi.ResourceOptions(depends_on=[igw])),
                )
            )
        egress: list[pulumi.Resource] = []
        private_tables: list[aws.ec2.RouteTable] = []
        for i, subnet in enumerate(private_subnets):
            # Each AZ leaves through its own NAT when there is one per AZ, so an AZ outage stays in its AZ.
            nat = nats[i] if args.nat_gateway_per_az else nats[0]
            table = aws.ec2.RouteTable(
                f"{name}-private-{i}",
                vpc_id=vpc.id,
                routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nat.id)],
                tags={"Name": f"{args.cluster_name}-private-{i}"},
                opts=self._opts,
            )
            private_tables.append(table)
            egress.append(
                aws.ec2.RouteTableAssociation(
                    f"{name}-private-{i}", subnet_id=subnet.id, route_table_id=table.id, opts=self._opts
                )
            )
        # Free, unlike NAT processing (about $0.045/GB): task-log uploads and ECR image layers, which ECR serves
        # from S3, leave the private subnets through it.
        aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=vpc.id,
            service_name=s3_gateway_service(args.region),
            vpc_endpoint_type="Gateway",
            route_table_ids=[t.id for t in private_tables],
            tags={"Name": f"{args.cluster_name}-s3"},
            opts=self._opts,
        )
        return private_subnets, egress

    def _control_plane(
        self, name: str, args: EksClusterArgs, subnets: list[aws.ec2.Subnet], partition: pulumi.Output[str]
    ) -> aws.eks.Cluster:
        """The cluster, its IAM role, its Secrets key, its log group and its admin access entries."""
        protect = pulumi.ResourceOptions.merge(self._opts, pulumi.ResourceOptions(protect=args.protect))
        role = aws.iam.Role(
            f"{name}-cluster", assume_role_policy=_assume_role_policy("eks.amazonaws.com"), opts=self._opts
        )
        cluster_policy = aws.iam.RolePolicyAttachment(
            f"{name}-cluster-AmazonEKSClusterPolicy",
            role=role.name,
            policy_arn=pulumi.Output.concat("arn:", partition, ":iam::aws:policy/AmazonEKSClusterPolicy"),
            opts=self._opts,
        )
        # Losing this key makes every Secret in etcd unreadable: protected with the cluster.
        key = aws.kms.Key(
            f"{name}-secrets",
            description=f"Envelope encryption of Kubernetes Secrets in EKS cluster {args.cluster_name}",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            opts=protect,
        )
        # The key's default policy defers to IAM; the cluster role may use this key and no other.
        key_use = aws.iam.RolePolicy(
            f"{name}-cluster-secrets-key",
            role=role.id,
            policy=pulumi.Output.json_dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ListGrants", "kms:DescribeKey"],
                            "Resource": key.arn,
                        }
                    ],
                }
            ),
            opts=self._opts,
        )
        # EKS writes to this exact name; creating it first is what sets the retention.
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-control-plane",
            name=f"/aws/eks/{args.cluster_name}/cluster",
            retention_in_days=args.log_retention_days,
            opts=self._opts,
        )
        cluster = aws.eks.Cluster(
            name,
            name=args.cluster_name,
            role_arn=role.arn,
            version=args.kubernetes_version,
            access_config=aws.eks.ClusterAccessConfigArgs(
                authentication_mode="API",
                # The identity running `pulumi up` gets cluster-admin, so this program can install charts.
                bootstrap_cluster_creator_admin_permissions=True,
            ),
            # VPC CNI, kube-proxy and CoreDNS come as managed add-ons below instead.
            bootstrap_self_managed_addons=False,
            encryption_config=aws.eks.ClusterEncryptionConfigArgs(
                provider=aws.eks.ClusterEncryptionConfigProviderArgs(key_arn=key.arn), resources=["secrets"]
            ),
            enabled_cluster_log_types=args.log_types,
            kubernetes_network_config=aws.eks.ClusterKubernetesNetworkConfigArgs(
                service_ipv4_cidr=args.service_cidr
            ),
            vpc_config=aws.eks.ClusterVpcConfigArgs(
                subnet_ids=[s.id for s in subnets],
                endpoint_private_access=True,
                endpoint_public_access=args.public_endpoint,
                public_access_cidrs=list(args.public_access_cidrs) if args.public_endpoint else None,
            ),
            # EKS's own default is EXTENDED: a minor past standard support then bills $0.60 instead of $0.10 per
            # hour (docs.aws.amazon.com/eks/latest/userguide/kubernetes-versions.html: "Extended support is enabled
            # by default").
            upgrade_policy=aws.eks.ClusterUpgradePolicyArgs(support_type=args.support_type),
            deletion_protection=args.protect,
            opts=pulumi.ResourceOptions.merge(
                protect, pulumi.ResourceOptions(depends_on=[cluster_policy, key_use, log_group])
            ),
        )
        # The private endpoint's network interfaces carry the cluster security group, which admits only itself
        # (the control plane and the nodes): a runner or VPN that deploys needs its own rule on 443.
        for i, cidr in enumerate(args.private_access_cidrs):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-api-from-{i}",
                security_group_id=cluster.vpc_config.cluster_security_group_id,
                cidr_ipv4=cidr,
                ip_protocol="tcp",
                from_port=443,
                to_port=443,
                description="Kubernetes API (private endpoint) from aws.privateAccessCidrs",
                opts=self._opts,
            )
        for i, principal in enumerate(args.admin_role_arns):
            entry = aws.eks.AccessEntry(
                f"{name}-admin-{i}", cluster_name=cluster.name, principal_arn=principal, type="STANDARD", opts=self._opts
            )
            aws.eks.AccessPolicyAssociation(
                f"{name}-admin-{i}",
                cluster_name=cluster.name,
                principal_arn=entry.principal_arn,
                policy_arn=pulumi.Output.concat("arn:", partition, ":eks::aws:", CLUSTER_ADMIN_POLICY),
                access_scope=aws.eks.AccessPolicyAssociationAccessScopeArgs(type="cluster"),
                opts=self._opts,
            )
        return cluster

    def _ebs_csi_driver(self, name: str, cluster: aws.eks.Cluster, partition: pulumi.Output[str]) -> aws.eks.Addon:
        """The EBS CSI driver, which provisions every PersistentVolume, acting through its own IRSA role.

        IMDS is out of the driver's reach (hop limit 1, see `_node_group`): its node plugin falls back to the
        Kubernetes node object for instance ID, type, region and zone, and the controller takes its region from the
        AWS_REGION the pod identity webhook sets (aws-ebs-csi-driver v1.64.0 docs/install.md, "Metadata").
        """
        role = self.workload_identity.service_account_role(
            f"{name}-ebs-csi", EBS_CSI_NAMESPACE, EBS_CSI_SERVICE_ACCOUNT, parent=self
        )
        policy = aws.iam.RolePolicyAttachment(
            f"{name}-ebs-csi",
            role=role.name,
            policy_arn=pulumi.Output.concat("arn:", partition, ":iam::aws:policy/", EBS_CSI_POLICY),
            opts=self._opts,
        )
        # A Deployment too: ACTIVE only once the system group has a node.
        return aws.eks.Addon(
            f"{name}-ebs-csi-driver",
            cluster_name=cluster.name,
            addon_name="aws-ebs-csi-driver",
            service_account_role_arn=role.arn,
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="PRESERVE",
            opts=pulumi.ResourceOptions.merge(
                self._opts, pulumi.ResourceOptions(depends_on=[self.system_node_group, policy])
            ),
        )

    def _node_addons(
        self, name: str, args: EksClusterArgs, cluster: aws.eks.Cluster, partition: pulumi.Output[str]
    ) -> list[pulumi.Resource]:
        """The add-ons a node needs before it can become Ready: pod networking and service routing."""
        cni_role = self.workload_identity.service_account_role(f"{name}-vpc-cni", "kube-system", "aws-node", parent=self)
        cni_policy = aws.iam.RolePolicyAttachment(
            f"{name}-vpc-cni",
            role=cni_role.name,
            policy_arn=pulumi.Output.concat("arn:", partition, ":iam::aws:policy/AmazonEKS_CNI_Policy"),
            opts=self._opts,
        )
        vpc_cni = aws.eks.Addon(
            f"{name}-vpc-cni",
            cluster_name=cluster.name,
            addon_name="vpc-cni",
            service_account_role_arn=cni_role.arn,
            # The network policy agent in aws-node enforces NetworkPolicies; off, they are stored but do nothing.
            # The add-on schema takes the value as a string (EKS user guide, cni-network-policy-configure.html).
            configuration_values=json.dumps({"enableNetworkPolicy": "true" if args.network_policy else "false"}),
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="PRESERVE",
            opts=pulumi.ResourceOptions.merge(self._opts, pulumi.ResourceOptions(depends_on=[cni_policy])),
        )
        kube_proxy = aws.eks.Addon(
            f"{name}-kube-proxy",
            cluster_name=cluster.name,
            addon_name="kube-proxy",
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="PRESERVE",
            opts=self._opts,
        )
        return [vpc_cni, kube_proxy]

    def _node_group(
        self,
        name: str,
        pool: EksNodePoolSpec,
        cluster: aws.eks.Cluster,
        node_role: aws.iam.Role,
        subnets: list[aws.ec2.Subnet],
        depends_on: list[pulumi.Resource],
        labels: dict[str, str] | None = None,
        taints: list[aws.eks.NodeGroupTaintArgs] | None = None,
    ) -> aws.eks.NodeGroup:
        """A managed node group across the private subnets, sized by the Cluster Autoscaler within min..max."""
        # A launch template only for what the node group API cannot set: IMDSv2 with a hop limit of 1, so
        # pods (one hop further) cannot take the node role's credentials and must use IRSA; and an
        # encrypted gp3 root volume.
        template = aws.ec2.LaunchTemplate(
            name,
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1
            ),
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name="/dev/xvda",  # the root device of the AL2023 EKS AMIs
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        volume_size=pool.disk_size_gb, volume_type="gp3", encrypted="true", delete_on_termination="true"
                    ),
                )
            ],
            # The provider's default tags reach the template, not what the Auto Scaling group launches from it:
            # instances, their volumes and network interfaces get the cost-allocation tags only from here.
            tag_specifications=[
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags={**self._tags, "Name": name})
                for kind in ("instance", "volume", "network-interface")
            ],
            update_default_version=True,
            opts=self._opts,
        )
        return aws.eks.NodeGroup(
            name,
            cluster_name=cluster.name,
            # Nodes follow the control plane's version when it is upgraded.
            version=cluster.version,
            node_role_arn=node_role.arn,
            subnet_ids=[s.id for s in subnets],
            ami_type=ami_type(pool.arm),
            capacity_type=pool.capacity_type,
            instance_types=list(pool.instance_types),
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=template.id, version=template.latest_version.apply(str)
            ),
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=pool.min_size, max_size=pool.max_size, desired_size=pool.min_size
            ),
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
            labels=labels,
            taints=taints,
            opts=pulumi.ResourceOptions.merge(
                self._opts,
                pulumi.ResourceOptions(
                    depends_on=depends_on,
                    # The Cluster Autoscaler owns the desired size; Pulumi must not reset it on every update.
                    ignore_changes=["scalingConfig.desiredSize"],
                ),
            ),
        )
