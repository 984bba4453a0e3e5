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
    postrender: str | None = None,
) -> k8s.helm.v3.Release:
    """A Helm release of `chart` at its pinned version.

    helm.v3.Release rather than the v4 Chart: an atomic release rolls a failed upgrade back as
    `helm upgrade --atomic` does, and Helm's three-way merge leaves alone the fields no release manifest
    sets (which the Airflow worker count relies on, airflow_on_k8s/airflow/helm_postrender.py). Chart v4 deploys the
    output of `helm template` as individual Pulumi resources: hooks are dropped, there is no rollback, and
    moving an installed release onto it would delete and recreate every object.
    `postrender`: path of an executable Helm pipes the rendered manifests through (no arguments).
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
            postrender=postrender,
        ),
        opts=pulumi.ResourceOptions(parent=parent, provider=provider, depends_on=depends_on or []),
    )
