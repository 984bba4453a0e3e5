"""Typed stack configuration: everything a stack can set, validated before any resource exists.

A stack file (stacks/Pulumi.<stack>.yaml) sets keys under the project's namespace, for example::

    config:
      airflow-on-k8s:cloud: aws
      airflow-on-k8s:aws:
        region: eu-west-1
      airflow-on-k8s:taskPool:
        maxSize: 10

`load_stack_config()` reads them through Pulumi's config API and returns a `StackConfig`, or raises
`ConfigError` whose lines each name the config key and the fix.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from airflow_on_k8s.versions import DEFAULT_KUBERNETES_VERSION, SUPPORTED_KUBERNETES_VERSIONS

PROJECT = "airflow-on-k8s"
Cloud = Literal["aws", "gcp", "local"]

# Go-style durations, as the Cluster Autoscaler flags take them ("90s", "2m", "1h30m").
_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+s)?$")
_AWS_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
_GCP_REGION = re.compile(r"^[a-z]+-[a-z]+\d+$")
_GCP_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")


class ConfigError(ValueError):
    """Stack configuration that cannot be deployed; each line names a config key and the fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid stack configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class _Model(BaseModel):
    # camelCase keys in YAML, snake_case in Python; unknown keys are typos and rejected.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, use_attribute_docstrings=True
    )


def _duration_seconds(value: str) -> int:
    m = _DURATION.match(value)
    if not value or not m:
        raise ValueError(f"{value!r} is not a duration; write it like 90s, 2m or 1h30m")
    h, mi, s = (int(g[:-1]) if g else 0 for g in m.groups())
    return h * 3600 + mi * 60 + s


class PoolConfig(_Model):
    """A node pool. `instanceTypes` are EC2 instance types on AWS, machine types on GCP."""

    instance_types: list[str] | None = None
    """EC2 instance types (AWS) or machine types (GCP); unset means the cloud default for the pool."""
    min_size: int = Field(default=1, ge=0)
    """Fewest nodes."""
    max_size: int = Field(default=3, ge=0)
    """Most nodes the autoscaler may add."""
    spot: bool = False
    """Spot (AWS) / Spot VMs (GCP): cheaper, can be reclaimed; fine for retryable tasks."""
    disk_size_gb: int = Field(default=50, ge=20, le=16000)
    """Node boot disk size in GiB."""
    arm: bool = False
    """ARM nodes (Graviton AMI on AWS); your task images must be multi-arch."""

    @field_validator("instance_types")
    @classmethod
    def _not_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("is an empty list; name at least one instance type, or remove the key for the default")
        if v is not None and any(not t.strip() for t in v):
            raise ValueError("contains an empty name; remove it")
        return v

    @model_validator(mode="after")
    def _max_at_least_min(self) -> PoolConfig:
        if self.max_size < self.min_size:
            raise ValueError(
                f"maxSize: {self.max_size} is below minSize ({self.min_size}); raise maxSize or lower minSize"
            )
        if self.max_size == 0:
            raise ValueError("maxSize: is 0, so the pool could never run a pod; set it to 1 or more")
        return self


class SystemPoolConfig(PoolConfig):
    """The default (system) pool: system add-ons and Airflow itself."""

    min_size: int = Field(default=2, ge=0)
    """Fewest nodes (1 or more on a cloud)."""
    max_size: int = Field(default=4, ge=0)
    """Most nodes the autoscaler may add."""


class TaskPoolConfig(PoolConfig):
    """The task pool: KubernetesPodOperator pods only; scales from zero, so a section like
    `taskPool: {maxSize: 10, spot: true}` needs no minSize."""

    min_size: int = Field(default=0, ge=0)
    """Fewest nodes: must be 0, so the pool costs nothing while idle."""
    max_size: int = Field(default=10, ge=0)
    """Most nodes the autoscaler may add."""


# EKS control-plane log types (the EKS API's LogType enum).
CONTROL_PLANE_LOG_TYPES = ("api", "audit", "authenticator", "controllerManager", "scheduler")
# The retention periods CloudWatch Logs accepts (PutRetentionPolicy's retentionInDays enum).
CLOUDWATCH_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
)


class AwsConfig(_Model):
    region: str
    """AWS region, e.g. eu-west-1."""
    availability_zones: int = Field(default=3, ge=2, le=6)
    """How many AZs get a public and a private subnet (2 or more)."""
    vpc_cidr: str = "10.40.0.0/16"
    """The VPC range; subnets are carved from it (a /20 or larger)."""
    service_cidr: str = "172.20.0.0/16"
    """Kubernetes service IPs; must not overlap the VPC."""
    # One NAT gateway per AZ survives an AZ outage; one shared NAT is cheaper for dev.
    nat_gateway_per_az: bool = True
    """One NAT gateway per AZ (survives an AZ outage) or one shared NAT (cheaper, for dev)."""
    public_endpoint: bool = True
    """Whether the EKS API endpoint is reachable from the internet, from `publicAccessCidrs` only (the private
    endpoint is always on). `false` (fully private) needs `privateAccessCidrs` and a way into the VPC: see
    docs/clusters.md."""
    public_access_cidrs: list[str] = []
    """Who may reach the public API endpoint: your egress address as a /32 (`curl -s https://checkip.amazonaws.com`).
    Required while publicEndpoint is true; there is no open default."""
    private_access_cidrs: list[str] = []
    """Networks admitted on 443 to the private API endpoint (cluster security group): a CI runner in the VPC, a VPN
    or peered network. Required when publicEndpoint is false."""
    # Extra IAM principals (role ARNs) given cluster-admin through EKS access entries.
    admin_role_arns: list[str] = []
    """IAM role ARNs given cluster-admin through EKS access entries."""
    control_plane_log_types: list[str] | None = None
    """EKS control-plane logs sent to CloudWatch; unset: audit and authenticator, all five when `protect` is true."""
    control_plane_log_retention_days: int | None = None
    """Days CloudWatch keeps control-plane logs; unset: 7, or 90 when `protect` is true."""
    support_type: Literal["STANDARD", "EXTENDED"] = "STANDARD"
    """At the end of a minor's standard support EKS upgrades the cluster (STANDARD) or keeps it on extended
    support at $0.60 instead of $0.10 per cluster hour (EXTENDED)."""
    network_policy: bool = True
    """Enforce Kubernetes NetworkPolicies with the VPC CNI's network policy agent."""

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not _AWS_REGION.match(v):
            raise ValueError(f"{v!r} is not an AWS region; use a name like eu-west-1")
        return v

    @field_validator("control_plane_log_types")
    @classmethod
    def _log_types(cls, v: list[str] | None) -> list[str] | None:
        bad = sorted(set(v or []) - set(CONTROL_PLANE_LOG_TYPES))
        if bad:
            raise ValueError(f"unknown log types {bad}; choose from {sorted(CONTROL_PLANE_LOG_TYPES)}")
        return v

    @field_validator("control_plane_log_retention_days")
    @classmethod
    def _retention(cls, v: int | None) -> int | None:
        if v is not None and v not in CLOUDWATCH_RETENTION_DAYS:
            accepted = ", ".join(map(str, CLOUDWATCH_RETENTION_DAYS))
            raise ValueError(f"{v} is not a retention CloudWatch Logs accepts; use one of {accepted}")
        return v

    def log_types(self, protect: bool) -> list[str]:
        """The control-plane log types to ship: as set, or by the stack's kind when unset.

        `api` and `audit` are the expensive streams (every request of every controller); a dev stack keeps audit
        (who did what) and authenticator (why an IAM principal was refused).
        """
        if self.control_plane_log_types is not None:
            return list(self.control_plane_log_types)
        return list(CONTROL_PLANE_LOG_TYPES) if protect else ["audit", "authenticator"]

    def log_retention_days(self, protect: bool) -> int:
        """Retention of control-plane logs: as set, or a quarter for protected stacks and a week otherwise."""
        if self.control_plane_log_retention_days is not None:
            return self.control_plane_log_retention_days
        return 90 if protect else 7


# How to find the public address your requests leave from: a public API endpoint sees that address.
EGRESS_ADDRESS_HINT = "`curl -s https://checkip.amazonaws.com` or `dig +short myip.opendns.com @resolver1.opendns.com`"
# Internal ranges: what a private GKE API endpoint takes in its authorized networks, and what a public one never sees.
_RFC1918 = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))

# Cloud SQL tiers per edition. The pinned pulumi-gcp 10.2.0 (sql/_inputs.py, `edition`): "ENTERPRISE_PLUS supports
# only predefined db-perf-optimized-N-* machine types ...; shared-core and custom tiers such as db-g1-small,
# db-f1-micro, and db-custom-* require edition = "ENTERPRISE"".
CLOUD_SQL_TIER_PATTERNS: dict[str, re.Pattern[str]] = {
    "ENTERPRISE": re.compile(r"^db-(f1-micro|g1-small|custom-\d+-\d+|n1-(standard|highmem)-\d+)$"),
    "ENTERPRISE_PLUS": re.compile(r"^db-perf-optimized-N-\d+$"),
}
# The tier when the stack names none: shared-core for dev, 2 vCPU / 7.5 GiB for protected stacks.
CLOUD_SQL_DEFAULT_TIERS: dict[str, dict[bool, str]] = {
    "ENTERPRISE": {False: "db-g1-small", True: "db-custom-2-7680"},
    "ENTERPRISE_PLUS": {False: "db-perf-optimized-N-2", True: "db-perf-optimized-N-2"},
}
# Days of transaction logs kept for point-in-time recovery (same SDK, backup_configuration): "from 1-7. For
# PostgreSQL Enterprise Plus ... from 1 to 35".
CLOUD_SQL_MAX_LOG_RETENTION_DAYS = {"ENTERPRISE": 7, "ENTERPRISE_PLUS": 35}


class CloudSqlConfig(_Model):
    """Cloud SQL for PostgreSQL, the metadata database when `airflow.database` is `managed`."""

    edition: Literal["ENTERPRISE", "ENTERPRISE_PLUS"] = "ENTERPRISE"
    """Cloud SQL edition. Set explicitly: left unset, PostgreSQL 16 gets ENTERPRISE_PLUS, which refuses custom tiers."""
    tier: str = ""
    """Machine tier; empty means db-g1-small (db-custom-2-7680 with protect) on ENTERPRISE, db-perf-optimized-N-2 on ENTERPRISE_PLUS."""
    transaction_log_retention_days: int = Field(default=7, ge=1, le=35)
    """Days of transaction logs kept for point-in-time recovery (on with protect); at most 7 on ENTERPRISE."""

    @model_validator(mode="after")
    def _fits_edition(self) -> CloudSqlConfig:
        problems = []
        if self.tier and not CLOUD_SQL_TIER_PATTERNS[self.edition].match(self.tier):
            other = next(e for e in CLOUD_SQL_TIER_PATTERNS if e != self.edition)
            fix = (
                f"set edition: {other}, or pick a {self.edition} tier"
                if CLOUD_SQL_TIER_PATTERNS[other].match(self.tier)
                else "pick a tier"
            )
            problems.append(
                f"tier: {self.tier!r} is not a {self.edition} tier; Cloud SQL would reject it at create time; "
                f"{fix} such as {CLOUD_SQL_DEFAULT_TIERS[self.edition][True]}"
            )
        most = CLOUD_SQL_MAX_LOG_RETENTION_DAYS[self.edition]
        if self.transaction_log_retention_days > most:
            problems.append(
                f"transactionLogRetentionDays: {self.transaction_log_retention_days} is more than the {most} days "
                f"the {self.edition} edition keeps; lower it to {most} or less"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def tier_for(self, protect: bool) -> str:
        """The stack's tier, or the edition's default for a protected (prod) or unprotected stack."""
        return self.tier or CLOUD_SQL_DEFAULT_TIERS[self.edition][protect]


class GcpConfig(_Model):
    project: str
    """Google Cloud project ID."""
    region: str
    """Region of the regional cluster, e.g. europe-west1."""
    # Zones for the node pools; empty means all zones of the region (GKE's default for regional clusters).
    node_zones: list[str] = []
    """Zones for the node pools; empty means every zone of the region."""
    subnet_cidr: str = "10.50.0.0/20"
    """Primary range of the node subnet."""
    pods_cidr: str = "10.64.0.0/14"
    """Secondary range for pod IPs (VPC-native)."""
    services_cidr: str = "10.68.0.0/20"
    """Secondary range for service IPs."""
    private_nodes: bool = True
    """Nodes without public IPs (egress through Cloud NAT)."""
    master_cidr: str = "172.16.0.0/28"
    """The control plane's /28 when nodes are private."""
    master_authorized_cidrs: list[str] = []
    """Required: who may reach the GKE API. Your public egress address as a /32; with privateEndpoint, internal ranges."""
    private_endpoint: bool = False
    """The API answers only on its internal address; turn on after a first `up`, from inside the VPC (docs/clusters.md)."""
    release_channel: Literal["RAPID", "REGULAR", "STABLE", "EXTENDED"] = "REGULAR"
    """GKE release channel."""
    autoscaling_profile: Literal["OPTIMIZE_UTILIZATION", "BALANCED"] = "OPTIMIZE_UTILIZATION"
    """GKE cluster autoscaler profile; OPTIMIZE_UTILIZATION removes idle nodes sooner."""
    cloud_sql: CloudSqlConfig = CloudSqlConfig()
    """Cloud SQL for the metadata database (airflow.database: managed)."""
    enable_apis: bool = True
    """Enable the Google APIs the program uses (kept enabled on destroy); false if your project manages them."""

    @field_validator("project")
    @classmethod
    def _project(cls, v: str) -> str:
        if not _GCP_PROJECT.match(v):
            raise ValueError(f"{v!r} is not a GCP project ID (6-30 lowercase letters, digits, hyphens)")
        return v

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not _GCP_REGION.match(v):
            raise ValueError(f"{v!r} is not a GCP region; use a name like europe-west1")
        return v

    @model_validator(mode="after")
    def _zones_in_region(self) -> GcpConfig:
        for zone in self.node_zones:
            if not zone.startswith(self.region + "-"):
                raise ValueError(f"nodeZones: {zone!r} is not in region {self.region}; use zones like {self.region}-b")
        return self

    @model_validator(mode="after")
    def _api_reachable_by_the_deployer(self) -> GcpConfig:
        """Only access models that admit someone: Pulumi reaches the API it creates within the same `up`."""
        key = "masterAuthorizedCidrs"
        if not self.master_authorized_cidrs:
            raise ValueError(
                f"{key}: is not set, and the GKE API has no open default; list the public address you deploy from "
                f"as a /32 (find it with {EGRESS_ADDRESS_HINT}), e.g. [198.51.100.7/32]"
            )
        nets: list[ipaddress.IPv4Network] = []
        for text in self.master_authorized_cidrs:
            try:
                nets.append(ipaddress.IPv4Network(text, strict=True))
            except ValueError as e:
                raise ValueError(f"{key}: {text!r} is not an IPv4 CIDR block ({e}); write it like 198.51.100.7/32") from None
        # "Public clusters can have up to 50 authorized network CIDR ranges; private clusters can have up to 100."
        # (GKE, "Add authorized networks for control plane access", Limitations.)
        most = 100 if self.private_nodes else 50
        if len(nets) > most:
            raise ValueError(
                f"{key}: lists {len(nets)} ranges, GKE takes at most {most} on a "
                f"{'private' if self.private_nodes else 'public'} cluster; merge them into wider ranges"
            )
        internal = [n for n in nets if any(n.subnet_of(r) for r in _RFC1918)]
        public = [str(n) for n in nets if n not in internal]
        if self.private_endpoint and not self.private_nodes:
            raise ValueError(
                "privateEndpoint: GKE has an internal API endpoint only on a private cluster; "
                "set privateNodes: true, or privateEndpoint: false"
            )
        if self.private_endpoint and public:
            # GKE refuses them: 'network "..." is not a reserved network, which is required for private endpoints'.
            raise ValueError(
                f"{key}: {', '.join(public)} are not internal (RFC 1918) addresses, and with privateEndpoint: true "
                "the API has only an internal address, which such sources never reach (GKE rejects them); list the "
                "internal ranges you deploy from (the VPC's subnets, or a network joined by VPN/Interconnect), "
                "or set privateEndpoint: false"
            )
        if not self.private_endpoint and not public:
            # The kubeconfig points at the public endpoint; a request to it carries the sender's public address.
            raise ValueError(
                f"{key}: lists only internal (RFC 1918) addresses, but the kubeconfig uses the public API endpoint, "
                "where requests arrive from public addresses (your internet egress, or Cloud NAT's address for a VM "
                f"in the VPC), so nobody would be admitted; add your public egress address as a /32 (find it with "
                f"{EGRESS_ADDRESS_HINT}), or set privateEndpoint: true and deploy from inside the VPC"
            )
        return self


class LocalConfig(_Model):
    """An existing cluster reached through a kubeconfig context (kind, k3d, minikube, Docker Desktop)."""

    # Empty means the kubeconfig's current context.
    context: str = ""
    """kubeconfig context to deploy to; empty means the current context."""
    kubeconfig_path: str = ""
    """kubeconfig file; empty means the default (~/.kube/config or $KUBECONFIG)."""


class ClusterAutoscalerConfig(_Model):
    """Node scale-down timing. The stock 10 minutes keeps an idle task node billed for 10 minutes after its last task."""

    scale_down_unneeded_time: str = "3m"
    """How long a task node must be idle before the Cluster Autoscaler removes it (stock: 10m)."""
    scale_down_delay_after_add: str = "3m"
    """Pause after a scale-up before scale-down is considered again (stock: 10m)."""
    expander: Literal["least-waste", "random", "most-pods", "priority", "price"] = "least-waste"
    """Which node group the Cluster Autoscaler grows when several fit."""

    @field_validator("scale_down_unneeded_time", "scale_down_delay_after_add")
    @classmethod
    def _duration(cls, v: str) -> str:
        _duration_seconds(v)
        return v


class AddonsConfig(_Model):
    # "auto": installed where the cloud does not ship one (EKS, local); GKE runs a managed metrics-server
    # and a second one would fight its addon manager.
    metrics_server: Literal["auto", "install", "skip"] = "auto"
    """`auto` installs it except on GKE, which runs a managed one."""


class GitSyncConfig(_Model):
    repo: str = ""
    """Git repository with the DAGs; empty ships the example DAGs of this repository."""
    branch: str = "main"
    """Branch git-sync follows."""
    sub_path: str = "dags"
    """Folder of the repository that holds the DAGs."""

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str) -> str:
        if v and not re.match(r"^(https://|ssh://|git@)", v):
            raise ValueError(f"{v!r} is not a git URL; use https://host/org/repo.git or git@host:org/repo.git")
        return v


class AirflowConfig(_Model):
    namespace: str = "airflow"
    """Namespace of the Airflow release."""
    # Namespace where KubernetesPodOperator pods run (and the only one workers may create pods in).
    task_namespace: str = "airflow-tasks"
    """Namespace where KubernetesPodOperator pods run (the only one workers may create pods in)."""
    worker_concurrency: int = Field(default=2, ge=1, le=256)
    """Celery worker concurrency: task slots per worker pod."""
    # "bundled": the chart's Postgres (dev); "managed": RDS / Cloud SQL behind PgBouncer (prod).
    database: Literal["bundled", "managed"] = "bundled"
    """`bundled`: the chart's Postgres (dev); `managed`: RDS / Cloud SQL behind PgBouncer (prod)."""
    git_sync: GitSyncConfig = GitSyncConfig()
    """Where DAGs come from (git-sync)."""
    # The UI stays on a ClusterIP service unless this is set.
    expose_ui: bool = False
    """Expose the Airflow UI through a LoadBalancer; by default it stays on a ClusterIP service."""
    ui_source_ranges: list[str] = []
    """With exposeUi: the CIDRs that may reach the UI's load balancer (required unless it is internal)."""
    ui_internal_load_balancer: bool = False
    """With exposeUi: a load balancer reachable only from inside the VPC/network instead of the internet."""
    task_egress_cidrs: list[str] = []
    """Private CIDRs task pods may reach besides the internet (e.g. a database in a peered network)."""

    @field_validator("namespace", "task_namespace")
    @classmethod
    def _dns_label(cls, v: str) -> str:
        if not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", v):
            raise ValueError(f"{v!r} is not a valid namespace name (lowercase letters, digits, '-', max 63)")
        return v

    @field_validator("ui_source_ranges", "task_egress_cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for text in v:
            try:
                ipaddress.ip_network(text, strict=True)
            except ValueError as e:
                raise ValueError(f"{text!r} is not a CIDR block ({e}); write it like 203.0.113.7/32") from None
        return v

    @model_validator(mode="after")
    def _airflow_rules(self) -> AirflowConfig:
        problems = []
        if self.namespace == self.task_namespace:
            problems.append("taskNamespace: equals namespace; give task pods their own namespace, e.g. airflow-tasks")
        if self.expose_ui and not self.ui_internal_load_balancer and not self.ui_source_ranges:
            # No open default: an internet-facing load balancer with no source ranges admits everyone.
            problems.append(
                "uiSourceRanges: exposeUi makes an internet-facing load balancer; list the CIDRs that may reach "
                "it (your own egress address: `curl https://checkip.amazonaws.com`, then a.b.c.d/32), or set "
                "uiInternalLoadBalancer: true"
            )
        if (self.ui_source_ranges or self.ui_internal_load_balancer) and not self.expose_ui:
            problems.append("exposeUi: is false, so uiSourceRanges/uiInternalLoadBalancer have no effect; set exposeUi: true")
        if problems:
            raise ValueError("\n".join(problems))
        return self


# Airflow's `[core] parallelism` default (airflow-core config.yml: "default: 32"), per scheduler.
AIRFLOW_DEFAULT_PARALLELISM = 32


class ScalingConfig(_Model):
    """How the Celery workers scale: task-aware (default), keda (the chart's ScaledObject) or hpa (CPU)."""

    mode: Literal["task-aware", "keda", "hpa"] = "task-aware"
    """How Celery workers scale: `task-aware` (default), `keda` (SQL trigger) or `hpa` (CPU, a baseline)."""
    min_workers: int = Field(default=1, ge=0)
    """Fewest Celery workers (0 allowed except with hpa)."""
    max_workers: int = Field(default=10, ge=1)
    """Most Celery workers."""
    target_load_factor: float = Field(default=1.0, gt=0, le=1.0)
    """Share of task slots to fill: workers = ceil(tasks / (concurrency x factor))."""
    # The rest tunes the task-aware autoscaler (airflow_on_k8s/autoscaler/); keda and hpa modes ignore it.
    queues: list[str] = ["default"]
    """Celery queues every worker consumes (the chart's worker command gets them); task-aware counts and drains these."""
    poll_interval_seconds: int = Field(default=10, ge=1, le=300)
    """task-aware: seconds between two looks at the task load."""
    scale_up_stabilization_seconds: int = Field(default=0, ge=0, le=3600)
    """task-aware: scale up to the lowest need seen over this window (0 = at once)."""
    scale_down_stabilization_seconds: int = Field(default=120, ge=0, le=3600)
    """task-aware: scale down only to the highest need seen over this window."""
    scale_up_max_step: int = Field(default=0, ge=0)
    """task-aware: most workers added per decision (0 = unlimited)."""
    scale_down_max_step: int = Field(default=1, ge=1)
    """task-aware: most workers removed per decision."""
    scale_down_cooldown_seconds: int = Field(default=60, ge=0, le=3600)
    """task-aware: least time between two scale-downs (no yo-yo)."""
    drain_timeout_seconds: int = Field(default=300, ge=10, le=86400)
    """task-aware: longest wait for a worker chosen for removal to finish its tasks; then it is kept."""
    drain_settle_seconds: int = Field(default=2, ge=0, le=60)
    """task-aware: wait after cancelling a worker's consumer before trusting that it is idle."""
    per_queue_ceiling: bool = False
    """task-aware: size each queue on its own and add up (for workers whose slots do not mix queues)."""

    @model_validator(mode="after")
    def _bounds(self) -> ScalingConfig:
        if self.max_workers < self.min_workers:
            raise ValueError(
                f"maxWorkers: {self.max_workers} is below minWorkers ({self.min_workers}); raise maxWorkers or lower minWorkers"
            )
        if self.mode == "hpa" and self.min_workers == 0:
            raise ValueError("minWorkers: mode hpa cannot scale to zero workers (CPU of zero pods is unknown); set minWorkers to 1 or more")
        problems = []
        if not self.queues or any(not q.strip() for q in self.queues):
            problems.append("queues: needs at least one queue name and no empty ones; the chart's workers consume default")
        bad = [q for q in self.queues if q.strip() and not re.fullmatch(r"[A-Za-z0-9_.:-]+", q)]
        if bad:
            # They become the workers' `--queues` argument (airflow/component.py worker_args).
            problems.append(f"queues: {bad} are not queue names the worker command takes; use letters, digits, '_', '.', ':', '-'")
        if self.scale_up_stabilization_seconds > self.scale_down_stabilization_seconds:
            problems.append(
                f"scaleUpStabilizationSeconds: {self.scale_up_stabilization_seconds} is longer than "
                f"scaleDownStabilizationSeconds ({self.scale_down_stabilization_seconds}), so scaling up would be "
                "slower than scaling down; shorten it"
            )
        if self.scale_up_max_step and self.scale_up_max_step < self.scale_down_max_step:
            problems.append(
                f"scaleUpMaxStep: {self.scale_up_max_step} is below scaleDownMaxStep ({self.scale_down_max_step}), "
                "so scaling up would be slower than scaling down; raise it or use 0 (unlimited)"
            )
        if self.drain_timeout_seconds < 2 * self.poll_interval_seconds:
            problems.append(
                f"drainTimeoutSeconds: {self.drain_timeout_seconds} is under two poll intervals "
                f"({self.poll_interval_seconds}s each), too short to see a worker finish; raise it"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def parallelism(self, worker_concurrency: int) -> int:
        """Airflow's [core] parallelism for the chart: never below Airflow's default, and never a cap on what
        maxWorkers workers can run (the scheduler queues at most this many tasks; more wait as `scheduled`,
        uncounted, so the workers would never scale past it)."""
        return max(AIRFLOW_DEFAULT_PARALLELISM, self.max_workers * worker_concurrency)

    def autoscaler_args(self, worker_concurrency: int) -> list[str]:
        """Policy and loop flags for `python -m airflow_on_k8s.autoscaler` (the deployment adds connections and names)."""
        return [
            f"--min-workers={self.min_workers}",
            f"--max-workers={self.max_workers}",
            f"--worker-concurrency={worker_concurrency}",
            f"--target-load-factor={self.target_load_factor}",
            f"--queues={','.join(self.queues)}",
            f"--poll-interval-s={self.poll_interval_seconds}",
            f"--scale-up-stabilization-s={self.scale_up_stabilization_seconds}",
            f"--scale-down-stabilization-s={self.scale_down_stabilization_seconds}",
            f"--scale-up-max-step={self.scale_up_max_step}",
            f"--scale-down-max-step={self.scale_down_max_step}",
            f"--scale-down-cooldown-s={self.scale_down_cooldown_seconds}",
            f"--drain-timeout-s={self.drain_timeout_seconds}",
            f"--drain-settle-s={self.drain_settle_seconds}",
            f"--per-queue-ceiling={str(self.per_queue_ceiling).lower()}",
            f"--parallelism={self.parallelism(worker_concurrency)}",
        ]


_DEFAULT_INSTANCE_TYPES: dict[str, dict[str, list[str]]] = {
    "aws": {"system": ["m6i.large", "m5.large"], "task": ["m6i.xlarge", "m5.xlarge"]},
    "gcp": {"system": ["e2-standard-4"], "task": ["e2-standard-4"]},
    "local": {"system": [], "task": []},
}


class ObservabilityConfig(_Model):
    """Metrics scraping, the Grafana dashboard and alerts for worker scaling (airflow_on_k8s/observability/)."""

    scrape: Literal["auto", "prometheus-operator", "google-managed", "amazon-managed", "none"] = "auto"
    """Who scrapes the autoscaler and Airflow's StatsD exporter: `prometheus-operator` (PodMonitor and
    ServiceMonitor; its CRDs must be installed, e.g. by kube-prometheus-stack), `google-managed` (Managed Service
    for Prometheus PodMonitoring, GKE), `amazon-managed` (an Amazon Managed Service for Prometheus workspace and
    its managed collector, EKS) or `none`; `auto` picks google-managed on gcp, amazon-managed on aws and
    prometheus-operator on local."""
    airflow_metrics: bool = True
    """Scrape Airflow's own metrics from the chart's StatsD exporter (enabled in the chart by default)."""
    dashboard: bool = True
    """Ship the Grafana dashboard as a ConfigMap labelled `grafana_dashboard: "1"` for the Grafana sidecar."""
    dashboard_namespace: str = ""
    """Namespace of the dashboard ConfigMap; empty means the Airflow namespace (the sidecar must search it)."""
    alerts: bool = True
    """Alerting rules: PrometheusRule, GMP Rules or an AMP rule group namespace, following `scrape`."""
    monitor_labels: dict[str, str] = {}
    """prometheus-operator: labels on the PodMonitor, ServiceMonitor and PrometheusRule so the operator selects
    them (kube-prometheus-stack by default selects `release: <its release name>`)."""
    queued_alert_minutes: int = Field(default=15, ge=1, le=1440)
    """Alert when the Celery queues have not been empty for this many minutes."""
    runbook_base_url: str = "docs/runbooks.md"
    """Where the alerts' runbook_url points (each alert adds its #anchor); set it to your copy's URL."""

    @field_validator("dashboard_namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if v and not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", v):
            raise ValueError(f"{v!r} is not a valid namespace name (lowercase letters, digits, '-', max 63); "
                             "or leave it empty for the Airflow namespace")
        return v

    def scraper(self, cloud: str) -> str:
        """`scrape` with `auto` resolved for this cloud."""
        if self.scrape != "auto":
            return self.scrape
        return {"gcp": "google-managed", "aws": "amazon-managed"}.get(cloud, "prometheus-operator")


class StackConfig(_Model):
    """Everything one stack sets. Field names are the config keys in camelCase."""

    cloud: Cloud
    """`aws` (EKS), `gcp` (GKE) or `local` (an existing kubeconfig context)."""
    cluster_name: str = "airflow"
    """Name of the cluster and prefix of its resources."""
    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION
    """Kubernetes minor version; must be one the cloud offers."""
    # Prod stacks: deletion protection on the cluster and database, retained data.
    protect: bool = False
    """Production safety: deletion protection on the cluster and database."""
    aws: AwsConfig | None = None
    """AWS settings; required when cloud is aws."""
    gcp: GcpConfig | None = None
    """Google Cloud settings; required when cloud is gcp."""
    local: LocalConfig | None = None
    """Local cluster settings, for cloud local."""
    system_pool: SystemPoolConfig = SystemPoolConfig()
    """The default pool: system add-ons and Airflow itself."""
    task_pool: TaskPoolConfig = TaskPoolConfig()
    """The task pool: KubernetesPodOperator pods only; scales from zero."""
    cluster_autoscaler: ClusterAutoscalerConfig = ClusterAutoscalerConfig()
    """Node scale-down timing (EKS; GKE uses its autoscaling profile)."""
    addons: AddonsConfig = AddonsConfig()
    """Cluster add-ons."""
    airflow: AirflowConfig = AirflowConfig()
    """The Airflow release."""
    scaling: ScalingConfig = ScalingConfig()
    """Celery worker autoscaling."""
    observability: ObservabilityConfig = ObservabilityConfig()
    """Metrics scraping, the Grafana dashboard and alerts."""
    tags: dict[str, str] = {}
    """Tags/labels added to every cloud resource that takes them."""

    @field_validator("cluster_name")
    @classmethod
    def _cluster_name(cls, v: str) -> str:
        if not re.match(r"^[a-z]([-a-z0-9]{0,28}[a-z0-9])?$", v):
            raise ValueError(f"{v!r}: use 1-30 lowercase letters, digits and '-', starting with a letter")
        return v

    @model_validator(mode="after")
    def _cloud_rules(self) -> StackConfig:
        problems: list[str] = []
        section = {"aws": self.aws, "gcp": self.gcp, "local": self.local}
        if self.cloud in ("aws", "gcp") and section[self.cloud] is None:
            need = "region" if self.cloud == "aws" else "project and region"
            problems.append(f"{self.cloud}: is required when cloud is {self.cloud}; set {self.cloud}.{need}")
        for other, value in section.items():
            if other != self.cloud and value is not None:
                problems.append(f"{other}: is set but cloud is {self.cloud}; remove the {other} section")
        offered = SUPPORTED_KUBERNETES_VERSIONS[self.cloud]
        if self.kubernetes_version not in offered:
            problems.append(
                f"kubernetesVersion: {self.kubernetes_version!r} is not offered on {self.cloud}; "
                f"use one of {', '.join(offered)}"
            )
        if self.cloud != "local" and self.system_pool.min_size < 1:
            problems.append(
                "systemPool.minSize: is 0, but Airflow and the cluster add-ons must always run; set it to 1 or more"
            )
        if self.task_pool.min_size != 0:
            problems.append(
                f"taskPool.minSize: is {self.task_pool.min_size}; the task pool scales from zero so it costs "
                "nothing while idle; set it to 0"
            )
        problems += self._network_problems()
        scrape = self.observability.scrape
        if scrape in ("google-managed", "amazon-managed") and self.cloud != {"google-managed": "gcp", "amazon-managed": "aws"}[scrape]:
            problems.append(
                f"observability.scrape: {scrape} needs cloud {'gcp' if scrape == 'google-managed' else 'aws'}, not "
                f"{self.cloud}; use prometheus-operator, none or auto"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _network_problems(self) -> list[str]:
        ranges: list[tuple[str, str]] = []
        if self.cloud == "aws" and self.aws:
            ranges = [("aws.vpcCidr", self.aws.vpc_cidr), ("aws.serviceCidr", self.aws.service_cidr)]
        elif self.cloud == "gcp" and self.gcp:
            ranges = [
                ("gcp.subnetCidr", self.gcp.subnet_cidr),
                ("gcp.podsCidr", self.gcp.pods_cidr),
                ("gcp.servicesCidr", self.gcp.services_cidr),
            ]
            if self.gcp.private_nodes:
                ranges.append(("gcp.masterCidr", self.gcp.master_cidr))
        problems: list[str] = []
        nets: list[tuple[str, ipaddress.IPv4Network]] = []
        for key, text in ranges:
            try:
                nets.append((key, ipaddress.IPv4Network(text, strict=True)))
            except ValueError as e:
                problems.append(f"{key}: {text!r} is not an IPv4 CIDR block ({e}); write it like 10.0.0.0/16")
        for i, (key_a, a) in enumerate(nets):
            for key_b, b in nets[i + 1 :]:
                if a.overlaps(b):
                    problems.append(f"{key_b}: {b} overlaps {key_a} ({a}); pick a range outside {a}")
        by_key = dict(nets)
        if self.cloud == "aws" and "aws.vpcCidr" in by_key:
            vpc = by_key["aws.vpcCidr"]
            # Two subnets (public, private) per AZ, each a quarter of the VPC's size or less.
            if vpc.prefixlen > 20:
                problems.append(f"aws.vpcCidr: {vpc} is too small for subnets in every AZ; use a /20 or larger")
        if self.cloud == "gcp" and self.gcp and self.gcp.private_nodes and "gcp.masterCidr" in by_key:
            if by_key["gcp.masterCidr"].prefixlen != 28:
                problems.append(f"gcp.masterCidr: GKE needs a /28 for the control plane, got {by_key['gcp.masterCidr']}")
        return problems

    def instance_types(self, pool: Literal["system", "task"]) -> list[str]:
        """The pool's instance types, or the cloud's defaults when the stack sets none."""
        cfg = self.system_pool if pool == "system" else self.task_pool
        return list(cfg.instance_types or _DEFAULT_INSTANCE_TYPES[self.cloud][pool])

    @property
    def scale_down_unneeded_seconds(self) -> int:
        return _duration_seconds(self.cluster_autoscaler.scale_down_unneeded_time)


def _format_errors(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "is not a known key; check its spelling against the README's config reference"
        elif e["type"] == "missing":
            msg = "is required; set it in the stack file"
        elif e["type"] == "literal_error":
            msg = f"{e['input']!r} is not allowed; {e['msg'][:1].lower()}{e['msg'][1:]}"  # keep the values' case
        for line in msg.split("\n"):
            # Model-level messages start with the key they are about ("taskPool.minSize: ..."), relative to loc.
            m = re.match(r"^([a-zA-Z.]+): (.*)$", line)
            key, text = (".".join(filter(None, [loc, m.group(1)])), m.group(2)) if m else (loc, line)
            problems.append(f"{PROJECT}:{key}: {text}" if key else f"{PROJECT}: {text}")
    return problems


def parse_stack_config(raw: dict[str, Any]) -> StackConfig:
    """Validate raw config (camelCase keys, values as YAML/JSON gives them) or raise ConfigError."""
    try:
        return StackConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def parse_section(model: type[_Model], key: str, raw: dict[str, Any]) -> Any:
    """Validate one section of a stack config on its own (e.g. `AirflowConfig` under key `airflow`), or raise
    ConfigError whose lines name the full key, as `parse_stack_config` would. For callers that take sections
    without a whole stack (airflow_on_k8s/portable/airflow.py); the cross-section rules are theirs."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        prefix = f"{PROJECT}:"
        problems = [
            f"{prefix}{key}:{p[len(prefix):]}" if p.startswith(prefix + " ") else p.replace(prefix, f"{prefix}{key}.", 1)
            for p in _format_errors(err)
        ]
        raise ConfigError(problems) from None


def _decode(value: str) -> Any:
    # Pulumi hands structured config over as JSON text and scalars as plain strings.
    if value[:1] in ("{", "["):
        return json.loads(value)
    return value


def load_stack_config() -> StackConfig:
    """Read this project's keys from the current stack's Pulumi config and validate them."""
    from pulumi.runtime import config as runtime_config

    prefix = PROJECT + ":"
    raw: dict[str, Any] = {}
    all_config: dict[str, str] = dict(runtime_config.CONFIG.get())
    for full_key, value in all_config.items():
        if full_key.startswith(prefix):
            raw[full_key[len(prefix) :]] = _decode(value)
    return parse_stack_config(raw)
