"""AWS data services for Airflow: an S3 bucket for task logs, RDS for PostgreSQL for metadata.

Both stay private: the bucket blocks every form of public access (only the IRSA roles the Airflow component
binds can reach it) and the database sits in the EKS VPC's private subnets, reachable on 5432 only from the
cluster security group that EKS nodes carry, with storage encryption on and TLS enforced by RDS for PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from airflow_on_k8s.aws.names import RDS_IDENTIFIER_PREFIX_MAX, S3_BUCKET_PREFIX_MAX, derived_name
from airflow_on_k8s.contract import CloudServices, KubernetesCluster, LogStore, PostgresDatabase
from airflow_on_k8s.config import StackConfig

POSTGRES_ENGINE_VERSION = "16"
# Burstable for dev; a general-purpose Graviton instance, Multi-AZ, for protected stacks.
DB_INSTANCE_CLASSES = {False: "db.t4g.medium", True: "db.m7g.large"}
LOG_RETENTION_DAYS = 90
DATABASE = "airflow"
DB_USER = "airflow"


@dataclass(frozen=True)
class AwsServicesArgs:
    cluster_name: str
    protect: bool


class AwsServices(CloudServices):
    """S3 and RDS, created in the EKS cluster's account, region and VPC."""

    def __init__(self, args: AwsServicesArgs, cluster: Any) -> None:
        self.args = args
        # EksCluster attributes beyond the contract: its AWS provider and network.
        self._provider: aws.Provider = cluster.aws_provider
        self._vpc_id: pulumi.Output[str] = cluster.vpc_id
        self._subnet_ids: pulumi.Output[list[str]] = cluster.private_subnet_ids
        self._node_security_group: pulumi.Output[str] = cluster.cluster_security_group_id

    @classmethod
    def from_stack(cls, config: StackConfig, cluster: KubernetesCluster) -> AwsServices:
        return cls(AwsServicesArgs(cluster_name=config.cluster_name, protect=config.protect), cluster)

    def _opts(self, parent: pulumi.Resource, **extra: Any) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=parent, provider=self._provider, **extra)

    def log_store(self, name: str, parent: pulumi.Resource) -> LogStore:
        a = self.args
        bucket = aws.s3.Bucket(
            name,
            bucket_prefix=derived_name(a.cluster_name, "-airflow-logs-", S3_BUCKET_PREFIX_MAX),
            force_destroy=not a.protect,
            opts=self._opts(parent, protect=a.protect),
        )
        aws.s3.BucketPublicAccessBlock(
            f"{name}-no-public-access",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=self._opts(parent),
        )
        aws.s3.BucketOwnershipControls(
            f"{name}-owner-enforced",
            bucket=bucket.id,
            rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
            opts=self._opts(parent),
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-expiry",
            bucket=bucket.id,
            rules=[
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="expire-task-logs",
                    status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix="logs/"),
                    expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(days=LOG_RETENTION_DAYS),
                )
            ],
            opts=self._opts(parent),
        )
        return LogStore(
            bucket=bucket.bucket,
            base_url=bucket.bucket.apply(lambda b: f"s3://{b}/logs"),
            connection_id="aws_default",
            # No keys: boto3 takes the IRSA web-identity token the pod identity webhook mounts.
            connection_uri="aws://",
        )

    def postgres(self, name: str, parent: pulumi.Resource) -> PostgresDatabase:
        a = self.args
        subnets = aws.rds.SubnetGroup(
            f"{name}-subnets",
            name=f"{a.cluster_name}-airflow",
            subnet_ids=self._subnet_ids,
            description=f"{a.cluster_name} Airflow metadata database: private subnets",
            opts=self._opts(parent),
        )
        security_group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=self._vpc_id,
            description=f"{a.cluster_name} Airflow metadata database: PostgreSQL from EKS nodes only",
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(
                    protocol="tcp",
                    from_port=5432,
                    to_port=5432,
                    security_groups=[self._node_security_group],
                    description="PostgreSQL from the EKS cluster security group",
                )
            ],
            opts=self._opts(parent),
        )
        password = random.RandomPassword(
            f"{name}-password", length=32, special=False, opts=pulumi.ResourceOptions(parent=parent)
        ).result
        instance = aws.rds.Instance(
            name,
            identifier_prefix=derived_name(a.cluster_name, "-airflow-", RDS_IDENTIFIER_PREFIX_MAX, single_hyphens=True),
            engine="postgres",
            engine_version=POSTGRES_ENGINE_VERSION,
            instance_class=DB_INSTANCE_CLASSES[a.protect],
            allocated_storage=20,
            max_allocated_storage=200,
            storage_type="gp3",
            storage_encrypted=True,
            db_name=DATABASE,
            username=DB_USER,
            password=password,
            db_subnet_group_name=subnets.name,
            vpc_security_group_ids=[security_group.id],
            publicly_accessible=False,
            multi_az=a.protect,
            backup_retention_period=7 if a.protect else 1,
            deletion_protection=a.protect,
            skip_final_snapshot=not a.protect,
            final_snapshot_identifier=(
                derived_name(a.cluster_name, "-airflow-final", 255, single_hyphens=True) if a.protect else None
            ),
            auto_minor_version_upgrade=True,
            opts=self._opts(parent, protect=a.protect),
        )
        return PostgresDatabase(
            host=instance.address,
            port=instance.port,
            database=DATABASE,
            user=DB_USER,
            password=pulumi.Output.secret(password),
            sslmode="require",
        )
