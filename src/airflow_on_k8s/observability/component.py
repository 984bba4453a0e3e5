"""Observability of worker scaling: scrape targets, the Grafana dashboard and the alerts, behind the stack's
`observability` switches (config.py `ObservabilityConfig`).

What `scrape` builds, and why:
- `prometheus-operator`: a PodMonitor for the autoscaler's pods (each replica: the leader gauge tells them
  apart; a ServiceMonitor would hide a standby behind the Service), a ServiceMonitor for the chart's StatsD
  exporter Service (port `statsd-scrape`), and a PrometheusRule. `monitorLabels` are added to the three so
  the operator's selectors pick them (kube-prometheus-stack selects `release: <its release>` by default).
- `google-managed`: PodMonitoring (monitoring.googleapis.com/v1) for the same two targets, and the alerts as
  a GMP `Rules` object in the Airflow namespace. Managed collection is on by default on GKE 1.27+.
- `amazon-managed`: an Amazon Managed Service for Prometheus workspace, the alerts as its rule group
  namespace, and an AMP managed collector (`aws.amp.Scraper`, agentless) that scrapes the autoscaler and the
  StatsD exporter from inside the EKS cluster's VPC. The collector reads pods through the Kubernetes API as
  the user `aps-collector-user` (an EKS access entry for its service-linked role, and a ClusterRole to read
  pods/endpoints and /metrics), following the AMP user guide "Using an AWS managed collector".
- the dashboard ConfigMap (label `grafana_dashboard: "1"`) whatever `scrape` is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml

from airflow_on_k8s.airflow.component import RELEASE, WORKER_DEPLOYMENT, Airflow
from airflow_on_k8s.airflow.worker_autoscaler import METRICS_PORT, POD_LABELS, WorkerAutoscaler
from airflow_on_k8s.config import StackConfig
from airflow_on_k8s.contract import KubernetesCluster, register_annotated_outputs
from airflow_on_k8s.observability import exporters
from airflow_on_k8s.observability.dashboard import FILE_NAME, dashboard, render
from airflow_on_k8s.observability.rules import RuleArgs, rule_groups

TYPE = "airflow-on-k8s:observability:Observability"
NAME = f"{RELEASE}-worker-scaling"  # the objects' Kubernetes name
# The Grafana sidecar's label: the grafana chart's values.yaml has `sidecar.dashboards.label: grafana_dashboard`
# with `labelValue: ""` (any value), and kube-prometheus-stack's values set `labelValue: "1"`.
GRAFANA_DASHBOARD_LABEL = {"grafana_dashboard": "1"}
STATSD_POD_LABELS = {"tier": "airflow", "component": exporters.STATSD_COMPONENT_LABEL, "release": RELEASE}
LABELS = {"app.kubernetes.io/name": "worker-scaling-observability", "app.kubernetes.io/part-of": RELEASE}
SCRAPE_INTERVAL = "30s"
# The queries join the autoscaler's gauges to its leader gauge on (namespace, pod). GMP's PodMonitoring CRD
# (GoogleCloudPlatform/prometheus-engine charts/operator/crds/monitoring.googleapis.com_podmonitorings.yaml):
# targetLabels.metadata "Defaults to [pod, container] for PodMonitoring"; stated, so the join cannot lose it.
GMP_TARGET_LABELS = {"metadata": ["pod", "container"]}
AMP_COLLECTOR_USER = "aps-collector-user"  # the user name the AMP user guide's RBAC binds


@dataclass(frozen=True)
class ObservabilityArgs:
    """The stack's `observability` switches, resolved for its cloud and scaling mode."""

    cluster_name: str
    """Prefix of the cloud resources' names (the AMP workspace and collector aliases)."""
    scraper: str
    """Who scrapes: prometheus-operator, google-managed, amazon-managed or none (`observability.scrape` with
    auto resolved)."""
    airflow_metrics: bool
    """Add a scrape target for the Airflow chart's StatsD exporter."""
    dashboard: bool
    """Create the dashboard ConfigMap for the Grafana sidecar."""
    dashboard_namespace: str
    """The dashboard ConfigMap's namespace."""
    alerts: bool
    """Create the alerting rules for the scraper (PrometheusRule, GMP Rules or an AMP rule group namespace)."""
    monitor_labels: dict[str, str]
    """Labels on the Prometheus Operator objects, for the operator's selectors."""
    rules: RuleArgs
    """The alerts' namespaces and thresholds."""

    @classmethod
    def from_stack(cls, config: StackConfig) -> ObservabilityArgs:
        o, a, s = config.observability, config.airflow, config.scaling
        task_aware = s.mode == "task-aware"
        return cls(
            cluster_name=config.cluster_name,
            scraper=o.scraper(config.cloud),
            airflow_metrics=o.airflow_metrics,
            dashboard=o.dashboard,
            dashboard_namespace=o.dashboard_namespace or a.namespace,
            alerts=o.alerts,
            monitor_labels=dict(o.monitor_labels),
            rules=RuleArgs(
                namespace=a.namespace, task_namespace=a.task_namespace, worker_deployment=WORKER_DEPLOYMENT,
                task_aware=task_aware, max_workers=s.max_workers, task_pool_max_nodes=config.task_pool.max_size,
                queued_minutes=o.queued_alert_minutes, runbook_base_url=o.runbook_base_url,
            ),
        )


def scrape_config(namespace: str, autoscaler: bool, statsd: bool) -> dict[str, Any]:
    """A Prometheus scrape configuration for the AMP collector: pods of the two exporters, by label and port."""

    def job(name: str, labels: dict[str, str], port: str) -> dict[str, Any]:
        keep = [{"source_labels": [f"__meta_kubernetes_pod_label_{exporters.sanitized_label_name(k)}"],
                 "regex": v, "action": "keep"} for k, v in sorted(labels.items())]
        return {
            "job_name": name,
            "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [namespace]}}],
            "relabel_configs": keep + [
                {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": port, "action": "keep"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            ],
        }

    jobs = []
    if autoscaler:
        jobs.append(job("worker-autoscaler", POD_LABELS, "metrics"))
    if statsd:
        jobs.append(job("airflow-statsd", STATSD_POD_LABELS, exporters.STATSD_SCRAPE_PORT))
    return {"global": {"scrape_interval": SCRAPE_INTERVAL}, "scrape_configs": jobs}


class Observability(pulumi.ComponentResource):
    """Scrape targets, the Grafana dashboard ConfigMap and the alerting rules for worker scaling."""

    dashboard_configmap: pulumi.Output[str]
    """`namespace/name` of the dashboard ConfigMap; empty when observability.dashboard is off."""
    amp_workspace_id: pulumi.Output[str]
    """The Amazon Managed Service for Prometheus workspace's id; empty unless scrape is amazon-managed."""

    def __init__(self, name: str, args: ObservabilityArgs, cluster: KubernetesCluster, airflow: Airflow,
                 autoscaler: WorkerAutoscaler | None, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=cluster.provider, depends_on=[airflow.release])
        namespace = args.rules.namespace
        self.dashboard_configmap = pulumi.Output.from_input("")
        self.amp_workspace_id = pulumi.Output.from_input("")

        def meta(object_name: str, ns: str = namespace, labels: dict[str, str] | None = None) -> dict[str, Any]:
            return {"name": object_name, "namespace": ns, "labels": {**LABELS, **(labels or {})}}

        if args.dashboard:
            model = dashboard(namespace, args.rules.task_namespace, args.rules.worker_deployment)
            k8s.core.v1.ConfigMap(
                f"{name}-dashboard",
                metadata=meta(f"{NAME}-dashboard", args.dashboard_namespace, GRAFANA_DASHBOARD_LABEL),
                data={FILE_NAME: render(model)},
                opts=child,
            )
            self.dashboard_configmap = pulumi.Output.from_input(f"{args.dashboard_namespace}/{NAME}-dashboard")

        groups = rule_groups(args.rules)
        scrape_autoscaler = autoscaler is not None
        monitor = args.monitor_labels

        if args.scraper == "prometheus-operator":
            if scrape_autoscaler:
                k8s.apiextensions.CustomResource(
                    f"{name}-autoscaler-podmonitor",
                    api_version="monitoring.coreos.com/v1", kind="PodMonitor",
                    metadata=meta(f"{NAME}-autoscaler", labels=monitor),
                    spec={"selector": {"matchLabels": POD_LABELS},
                          "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": SCRAPE_INTERVAL}]},
                    opts=child,
                )
            if args.airflow_metrics:
                k8s.apiextensions.CustomResource(
                    f"{name}-statsd-servicemonitor",
                    api_version="monitoring.coreos.com/v1", kind="ServiceMonitor",
                    metadata=meta(f"{NAME}-statsd", labels=monitor),
                    spec={"selector": {"matchLabels": STATSD_POD_LABELS},
                          "endpoints": [{"port": exporters.STATSD_SCRAPE_PORT, "path": "/metrics",
                                         "interval": SCRAPE_INTERVAL}]},
                    opts=child,
                )
            if args.alerts:
                k8s.apiextensions.CustomResource(
                    f"{name}-rules",
                    api_version="monitoring.coreos.com/v1", kind="PrometheusRule",
                    metadata=meta(NAME, labels=monitor),
                    spec={"groups": groups},
                    opts=child,
                )
        elif args.scraper == "google-managed":
            if scrape_autoscaler:
                k8s.apiextensions.CustomResource(
                    f"{name}-autoscaler-podmonitoring",
                    api_version="monitoring.googleapis.com/v1", kind="PodMonitoring",
                    metadata=meta(f"{NAME}-autoscaler"),
                    spec={"selector": {"matchLabels": POD_LABELS},
                          "endpoints": [{"port": "metrics", "path": "/metrics", "interval": SCRAPE_INTERVAL}],
                          "targetLabels": GMP_TARGET_LABELS},
                    opts=child,
                )
            if args.airflow_metrics:
                k8s.apiextensions.CustomResource(
                    f"{name}-statsd-podmonitoring",
                    api_version="monitoring.googleapis.com/v1", kind="PodMonitoring",
                    metadata=meta(f"{NAME}-statsd"),
                    spec={"selector": {"matchLabels": STATSD_POD_LABELS},
                          "endpoints": [{"port": exporters.STATSD_SCRAPE_PORT, "path": "/metrics",
                                         "interval": SCRAPE_INTERVAL}],
                          "targetLabels": GMP_TARGET_LABELS},
                    opts=child,
                )
            if args.alerts:
                k8s.apiextensions.CustomResource(
                    f"{name}-rules",
                    api_version="monitoring.googleapis.com/v1", kind="Rules",
                    metadata=meta(NAME),
                    spec={"groups": groups},
                    opts=child,
                )
        elif args.scraper == "amazon-managed":
            self.amp_workspace_id = self._amazon_managed(name, args, cluster, groups, scrape_autoscaler, meta, child)

        register_annotated_outputs(self)

    def _amazon_managed(self, name, args, cluster, groups, scrape_autoscaler, meta, child):  # noqa: ANN001, ANN202
        import pulumi_aws as aws

        aws_opts = pulumi.ResourceOptions(parent=self, provider=cluster.aws_provider)
        # The collector tags its destination workspace; carrying the tag here keeps `pulumi up` from removing it
        # (pulumi_aws amp/scraper.py docstring, "Ignoring changes to Prometheus Workspace destination").
        workspace = aws.amp.Workspace(f"{name}-workspace", alias=f"{args.cluster_name}-worker-scaling",
                                      tags={"AMPAgentlessScraper": ""}, opts=aws_opts)
        if args.alerts:
            aws.amp.RuleGroupNamespace(
                f"{name}-rules", name=NAME, workspace_id=workspace.id,
                data=yaml.safe_dump({"groups": groups}, sort_keys=False), opts=aws_opts,
            )
        scraper = aws.amp.Scraper(
            f"{name}-scraper",
            alias=f"{args.cluster_name}-worker-scaling",
            source={"eks": {"cluster_arn": cluster.cluster_arn, "subnet_ids": cluster.private_subnet_ids,
                            "security_group_ids": [cluster.cluster_security_group_id]}},
            destination={"amp": {"workspace_arn": workspace.arn}},
            scrape_configuration=yaml.safe_dump(
                scrape_config(args.rules.namespace, scrape_autoscaler, args.airflow_metrics), sort_keys=False),
            opts=aws_opts,
        )
        # The collector's identity inside the cluster: its service-linked role as the user the RBAC binds.
        aws.eks.AccessEntry(
            f"{name}-scraper-access", cluster_name=cluster.cluster_name, principal_arn=scraper.role_arn,
            user_name=AMP_COLLECTOR_USER, opts=aws_opts,
        )
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=cluster.provider)
        k8s.rbac.v1.ClusterRole(
            f"{name}-scraper-role", metadata={"name": f"{NAME}-amp-collector", "labels": LABELS},
            # Pod discovery (kubernetes_sd_configs role pod) only; the targets are scraped on their pod IPs.
            rules=[{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
            opts=k8s_opts,
        )
        k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-scraper-binding", metadata={"name": f"{NAME}-amp-collector", "labels": LABELS},
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{NAME}-amp-collector"},
            subjects=[{"kind": "User", "name": AMP_COLLECTOR_USER, "apiGroup": "rbac.authorization.k8s.io"}],
            opts=k8s_opts,
        )
        return workspace.id


