"""One way to install a pinned Helm chart, shared by every component that installs one."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from airflow_on_k8s.versions import ChartRef


def pinned_release(
    name: str,
    chart: ChartRef,
    namespace: pulumi.Input[str],
    values: pulumi.Input[dict[str, Any]],
    provider: k8s.Provider,
    parent: pulumi.Resource,
    depends_on: list[pulumi.Resource] | None = None,
    create_namespace: bool = False,
    timeout_seconds: int = 600,
) -> k8s.helm.v3.Release:
    """A Helm release of `chart` at its pinned version.

    helm.v3.Release (not v4 Chart) because the Airflow chart relies on Helm hooks (database migration,
    user creation) and because an atomic release rolls back a failed upgrade as `helm upgrade --atomic` does.
    """
    return k8s.helm.v3.Release(
        name,
        k8s.helm.v3.ReleaseArgs(
            name=name,
            chart=chart.chart,
            version=chart.version,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=chart.repo),
            namespace=namespace,
            create_namespace=create_namespace,
            values=values,
            atomic=True,
            cleanup_on_fail=True,
            timeout=timeout_seconds,
        ),
        opts=pulumi.ResourceOptions(parent=parent, provider=provider, depends_on=depends_on or []),
    )
