"""KEDA: event-driven autoscaling, used by `scaling.mode: keda` (the Airflow chart's ScaledObject on Celery workers).

Installed on every stack so switching the scaling mode needs no add-on change. The operator, its metrics API
server and its admission webhooks all get requests and limits, and KEDA's RBAC is kept to the kinds it scales
here (Deployments and StatefulSets) instead of the chart's default wildcard on every `*/scale` resource.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from airflow_on_k8s.contract import KubernetesCluster, register_annotated_outputs
from airflow_on_k8s.config import StackConfig
from airflow_on_k8s._helm import pinned_release
from airflow_on_k8s.versions import KEDA_CHART


def _resources(cpu: str, memory: str, memory_limit: str) -> dict[str, Any]:
    # No CPU limit: throttling a controller slows every scaling decision; memory is limited to stop a leak.
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": "1", "memory": memory_limit}}


# Where KEDA runs; the Airflow namespace's NetworkPolicies admit its operator to the metadata database.
KEDA_NAMESPACE = "keda"

RESOURCES = {
    "operator": _resources("100m", "128Mi", "512Mi"),
    "metricServer": _resources("100m", "128Mi", "512Mi"),
    "webhooks": _resources("50m", "64Mi", "256Mi"),
}


@dataclass(frozen=True)
class KedaArgs:
    """Where KEDA runs; its chart version, sizing and RBAC are this module's and not settable."""

    namespace: str = KEDA_NAMESPACE
    """The namespace KEDA's operator, metrics API server and webhooks run in (created by the component). The
    Airflow namespace's NetworkPolicies admit KEDA_NAMESPACE: change both together."""

    @classmethod
    def from_stack(cls, config: StackConfig) -> KedaArgs:  # noqa: ARG003 - same shape as every component
        return cls()

    def chart_values(self) -> dict[str, Any]:
        return {
            "resources": RESOURCES,
            # Deployments and StatefulSets are built in; no custom scale targets, so no wildcard RBAC rule.
            "rbac": {"enabledCustomScaledRefKinds": False},
        }


class Keda(pulumi.ComponentResource):
    """KEDA's namespace and the kedacore chart at its pinned version."""

    namespace: pulumi.Output[str]
    """The namespace KEDA runs in."""
    release_status: pulumi.Output[str]
    """The Helm release's status, e.g. "deployed"."""
    release: k8s.helm.v3.Release
    """The Helm release (Python-only): depend on it before creating ScaledObjects."""

    def __init__(
        self,
        name: str,
        args: KedaArgs,
        cluster: KubernetesCluster,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("airflow-on-k8s:addons:Keda", name, None, opts)
        namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=args.namespace, labels={"app.kubernetes.io/part-of": "keda"}),
            opts=pulumi.ResourceOptions(parent=self, provider=cluster.provider),
        )
        self.namespace = namespace.metadata.name
        self.release = pinned_release(
            name,
            KEDA_CHART,
            namespace=self.namespace,
            values=args.chart_values(),
            provider=cluster.provider,
            parent=self,
            depends_on=[namespace],
        )
        # None until deployed (a preview knows no status).
        self.release_status = self.release.status.apply(lambda status: status.status if status else None)
        register_annotated_outputs(self)
