"""The contract every cluster component fulfils, whichever cloud it runs on.

Like the Cluster Autoscaler's `CloudProvider` interface, this keeps cloud-specific code behind one small
surface: everything installed after the cluster (metrics-server, KEDA, Airflow, the worker autoscaler)
is written against `KubernetesCluster` and never imports a cloud SDK.

It also holds the one convention of every component's outputs: class-level `pulumi.Output[...]` annotations, each
with a docstring, registered under their (snake_case) attribute names (`register_annotated_outputs`).
"""

from __future__ import annotations

import inspect
import typing
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

    Like the Cluster Autoscaler's `CloudProvider` (cloudprovider/cloud_provider.go), each member says whether it is
    required (every cluster gives a working value, and callers rely on it) or optional (every cluster has the
    attribute, but it may hold the null value a cluster without that capability gives; callers must handle it, as
    they handle `ErrNotImplemented` there).
    """

    cloud: str
    """Required. "aws", "gcp" or "local": for outputs and messages, never to branch on (`clusters.py` does that)."""
    cluster_name: pulumi.Output[str]
    """Required. The cluster's name in its cloud (on local, the stack's clusterName: the context picks the cluster)."""
    kubeconfig: pulumi.Output[str]
    """Optional. A kubeconfig for the cluster, as a Pulumi secret; "" where the program has none (a local cluster
    reached through the user's own kubeconfig). Export it; reach the cluster through `provider`, not this."""
    provider: k8s.Provider
    """Required. A Kubernetes provider bound to the cluster; pass it explicitly to every Kubernetes resource."""
    task_pool: TaskPoolSelector
    """Required. How pods reach the task pool: its node label and taint."""
    workload_identity: WorkloadIdentity
    """Optional. The hook that gives a service account cloud permissions; `NoWorkloadIdentity` where the cluster has
    no cloud identity, whose binding fails with the fix when asked for a grant."""

    # Optional and outside the Protocol (read with getattr and a default): `enabled_apis`, the resources that
    # enable the cloud APIs, which cloud services must wait for (GKE; gcp/services.py).


def output_names(component: type) -> tuple[str, ...]:
    """The attributes a component class itself annotates as `pulumi.Output[...]`, in order: its exported outputs.

    Its other annotated attributes (a provider, the task-pool selector, child resources) are Python-only values,
    for programs that compose components in Python, and are not registered.
    """
    hints = inspect.get_annotations(component)
    return tuple(name for name, hint in hints.items() if _is_output_hint(hint))


def _is_output_hint(hint: object) -> bool:
    # Modules with `from __future__ import annotations` keep the annotation as its source text.
    if isinstance(hint, str):
        return hint.startswith(("pulumi.Output[", "Output["))
    return hint is pulumi.Output or typing.get_origin(hint) is pulumi.Output


def register_annotated_outputs(component: pulumi.ComponentResource) -> None:
    """Register every `pulumi.Output` attribute the component's class annotates, under its attribute name."""
    component.register_outputs({name: getattr(component, name) for name in output_names(type(component))})
