"""Google Cloud data services for Airflow: a GCS bucket for task logs, Cloud SQL for PostgreSQL for metadata.

Both stay private: the bucket has uniform bucket-level access and public access prevention (only the
Workload Identity service accounts bound by the Airflow component can touch it), and Cloud SQL has no
public IP; it is reached over private services access on the GKE network, with TLS required.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_gcp as gcp
import pulumi_random as random

from airflow_on_k8s.contract import CloudServices, KubernetesCluster, LogStore, PostgresDatabase
from airflow_on_k8s.config import CloudSqlConfig, StackConfig
from airflow_on_k8s.gcp.names import log_bucket_name

POSTGRES_VERSION = "POSTGRES_16"
LOG_RETENTION_DAYS = 90
DATABASE = "airflow"
DB_USER = "airflow"


@dataclass(frozen=True)
class GcpServicesArgs:
    project: str
    region: str
    cluster_name: str
    protect: bool
    labels: dict[str, str]
    # Edition, tier and log retention, checked against each other by the config.
    cloud_sql: CloudSqlConfig = CloudSqlConfig()


class GcpServices(CloudServices):
    """GCS and Cloud SQL, created in the GKE cluster's project, region and network."""

    def __init__(self, args: GcpServicesArgs, cluster: Any) -> None:
        self.args = args
        # GkeCluster attributes beyond the contract: its GCP provider and VPC network.
        self._provider: gcp.Provider = cluster.gcp_provider
        self._network: pulumi.Output[str] = cluster.network_self_link
        # The Google APIs the cluster enabled (Cloud Storage, Cloud SQL Admin, Service Networking among them).
        self._apis: list[pulumi.Resource] = list(getattr(cluster, "enabled_apis", []))

    @classmethod
    def from_stack(cls, config: StackConfig, cluster: KubernetesCluster) -> GcpServices:
        assert config.gcp is not None  # StackConfig requires the gcp section when cloud is gcp
        from airflow_on_k8s.gcp.cluster import gcp_labels

        return cls(
            GcpServicesArgs(
                project=config.gcp.project,
                region=config.gcp.region,
                cluster_name=config.cluster_name,
                protect=config.protect,
                labels=gcp_labels(config.tags),
                cloud_sql=config.gcp.cloud_sql,
            ),
            cluster,
        )

    def _opts(
        self, parent: pulumi.Resource, depends_on: list[pulumi.Resource] | None = None, **extra: Any
    ) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(
            parent=parent, provider=self._provider, depends_on=[*self._apis, *(depends_on or [])], **extra
        )

    def log_store(self, name: str, parent: pulumi.Resource) -> LogStore:
        a = self.args
        bucket = gcp.storage.Bucket(
            name,
            name=log_bucket_name(a.project, a.cluster_name),
            project=a.project,
            location=a.region,
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            force_destroy=not a.protect,
            lifecycle_rules=[
                gcp.storage.BucketLifecycleRuleArgs(
                    action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
                    condition=gcp.storage.BucketLifecycleRuleConditionArgs(age=LOG_RETENTION_DAYS),
                )
            ],
            labels=a.labels,
            opts=self._opts(parent, protect=a.protect),
        )
        return LogStore(
            bucket=bucket.name,
            base_url=bucket.name.apply(lambda b: f"gs://{b}/logs"),
            connection_id="google_cloud_default",
            # No key: the Google provider falls back to Application Default Credentials (Workload Identity).
            connection_uri="google-cloud-platform://",
        )

    def postgres(self, name: str, parent: pulumi.Resource) -> PostgresDatabase:
        a = self.args
        # Private services access: a peering range in the GKE network for Google-managed services.
        peering_range = gcp.compute.GlobalAddress(
            f"{name}-peering-range",
            name=f"{a.cluster_name}-sql-peering",
            project=a.project,
            purpose="VPC_PEERING",
            address_type="INTERNAL",
            prefix_length=20,
            network=self._network,
            opts=self._opts(parent),
        )
        peering = gcp.servicenetworking.Connection(
            f"{name}-peering",
            network=self._network,
            service="servicenetworking.googleapis.com",
            reserved_peering_ranges=[peering_range.name],
            # Deleting the connection fails while Cloud SQL still holds the range ("Producer services ... are still
            # using this connection"), which lasts past the instance's deletion, so `pulumi destroy` would stop here.
            # pulumi-gcp 10.2.0 servicenetworking/connection.py, deletion_policy: ABANDON "leaves the VPC peering in
            # place, which will block deletion of the network"; REMOVE_PEERING: "if the API refuses because service
            # producer resources still use it, the VPC peering is removed from the network so that the network can
            # be deleted".
            deletion_policy="REMOVE_PEERING",
            # A later `up` in the same project then updates the connection Service Networking still tracks instead
            # of failing to create it.
            update_on_creation_fail=True,
            opts=self._opts(parent),
        )
        instance = gcp.sql.DatabaseInstance(
            name,
            name=f"{a.cluster_name}-airflow",
            project=a.project,
            region=a.region,
            database_version=POSTGRES_VERSION,
            deletion_protection=a.protect,
            settings=gcp.sql.DatabaseInstanceSettingsArgs(
                # Always explicit: left unset, Cloud SQL makes a POSTGRES_16 instance ENTERPRISE_PLUS, which refuses
                # shared-core and custom tiers (pulumi-gcp 10.2.0, sql/_inputs.py, `edition`).
                edition=a.cloud_sql.edition,
                tier=a.cloud_sql.tier_for(a.protect),
                availability_type="REGIONAL" if a.protect else "ZONAL",
                disk_autoresize=True,
                user_labels=a.labels,
                ip_configuration=gcp.sql.DatabaseInstanceSettingsIpConfigurationArgs(
                    ipv4_enabled=False,
                    private_network=self._network,
                    ssl_mode="ENCRYPTED_ONLY",
                ),
                backup_configuration=gcp.sql.DatabaseInstanceSettingsBackupConfigurationArgs(
                    enabled=True,
                    point_in_time_recovery_enabled=a.protect,
                    # Explicit, within what the edition keeps (7 days on ENTERPRISE, 35 on ENTERPRISE_PLUS).
                    transaction_log_retention_days=a.cloud_sql.transaction_log_retention_days if a.protect else None,
                ),
            ),
            opts=self._opts(parent, depends_on=[peering], protect=a.protect),
        )
        database = gcp.sql.Database(
            f"{name}-database", name=DATABASE, instance=instance.name, project=a.project, opts=self._opts(parent)
        )
        password = random.RandomPassword(
            f"{name}-password", length=32, special=False, opts=pulumi.ResourceOptions(parent=parent)
        ).result
        user = gcp.sql.User(
            f"{name}-user",
            name=DB_USER,
            instance=instance.name,
            project=a.project,
            password=password,
            opts=self._opts(parent, depends_on=[database]),
        )
        return PostgresDatabase(
            host=pulumi.Output.all(instance.private_ip_address, user.id).apply(lambda v: v[0]),
            port=pulumi.Output.from_input(5432),
            database=DATABASE,
            user=DB_USER,
            password=pulumi.Output.secret(password),
            sslmode="require",
        )
