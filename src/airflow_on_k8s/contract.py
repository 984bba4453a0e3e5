"""The contract every cluster component fulfils, whichever cloud it runs on.

Like the Cluster Autoscaler's `CloudProvider` interface, this keeps cloud-specific code behind one small
surface: everything installed after the cluster (metrics-server, KEDA, Airflow, the worker autoscaler)
is written against `KubernetesCluster` and never imports a cloud SDK.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal, Protocol, Sequence, runtime_checkable

import pulumi
import pulumi_kubernetes as k8s

from airflow_on_k8s.task_pool import TaskPoolSelector


@dataclass(frozen=True)
class BucketGrant:
    """Access a workload needs to one object-storage bucket (S3 or GCS), by bucket name."""

    bucket: pulumi.Input[str]
    access: Literal["read", "read-write"] = "read-write"


class WorkloadIdentity(ABC):
    """Lets a Kubernetes service account act as a cloud identity (IRSA / Pod Identity on AWS, Workload Identity on GKE)."""

    @abstractmethod
    def bind_service_account(
        self,
        name: str,
        namespace: str,
        service_account: str,
        grants: Sequence[BucketGrant],
        parent: pulumi.Resource,
    ) -> pulumi.Output[dict[str, str]]:
        """Create the cloud identity and its least-privilege permissions for `namespace/service_account`.

        Returns the annotations to put on that Kubernetes ServiceAccount (empty where the cloud needs none).
        Resources it creates are children of `parent`, named after `name`.
        """


class NoWorkloadIdentity(WorkloadIdentity):
    """For clusters with no cloud identity (local): binding grants nothing and needs no annotation."""

    def bind_service_account(self, name, namespace, service_account, grants, parent):  # noqa: ANN001
        if grants:
            raise ValueError(
                f"{name}: a local cluster has no cloud identity to grant bucket access to; "
                "use a local log store or configure credentials through a Kubernetes Secret"
            )
        return pulumi.Output.from_input({})


@dataclass(frozen=True)
class LogStore:
    """Object storage for Airflow's remote task logs, and the Airflow connection that reaches it.

    `connection_uri` carries no credentials: they come from the pod's workload identity.
    """

    bucket: pulumi.Output[str]
    base_url: pulumi.Output[str]  # s3://bucket/prefix or gs://bucket/prefix
    connection_id: str  # e.g. aws_default, google_cloud_default
    connection_uri: str  # e.g. aws://, google-cloud-platform://


@dataclass(frozen=True)
class PostgresDatabase:
    """A managed PostgreSQL database for Airflow's metadata; `password` is a Pulumi secret."""

    host: pulumi.Output[str]
    port: pulumi.Output[int]
    database: str
    user: str
    password: pulumi.Output[str]
    sslmode: str = "require"


class CloudServices(ABC):
    """The cloud's data services Airflow uses (the cluster contract's counterpart for storage and databases)."""

    @abstractmethod
    def log_store(self, name: str, parent: pulumi.Resource) -> LogStore | None:
        """A bucket for remote task logs, or None where logs stay in the cluster."""

    @abstractmethod
    def postgres(self, name: str, parent: pulumi.Resource) -> PostgresDatabase:
        """A managed PostgreSQL database reachable from the cluster's pods."""


class NoCloudServices(CloudServices):
    """For clusters with no cloud (local): logs stay in the cluster and there is no managed database."""

    def log_store(self, name, parent):  # noqa: ANN001
        return None

    def postgres(self, name, parent):  # noqa: ANN001
        raise ValueError(
            f"{name}: airflow.database is managed, but a local cluster has no managed database; "
            "set airflow.database to bundled"
        )


@runtime_checkable
class KubernetesCluster(Protocol):
    """What later components need from a cluster.

    - `cloud`: "aws", "gcp" or "local".
    - `cluster_name`: the cluster's name in its cloud.
    - `kubeconfig`: a kubeconfig for the cluster, as a Pulumi secret.
    - `provider`: a Kubernetes provider bound to that kubeconfig; pass it explicitly to every Kubernetes resource.
    - `task_pool`: how pods reach the task pool (label and taint).
    - `workload_identity`: the hook that gives a service account cloud permissions.
    """

    cloud: str
    cluster_name: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    provider: k8s.Provider
    task_pool: TaskPoolSelector
    workload_identity: WorkloadIdentity
