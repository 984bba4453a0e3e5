"""The metrics other exporters publish that the dashboard and the alerts read: the one list of them.

The autoscaler's own metrics are not listed here: they come from its registry (`autoscaler_metric_names`).

kube-state-metrics (kubernetes/kube-state-metrics docs/metrics/cluster/node-metrics.md and
docs/metrics/workload/pod-metrics.md):
- `kube_node_labels{node, label_<NODE_LABEL>}` "Kubernetes labels converted to Prometheus labels controlled via
  --metric-labels-allowlist": since v2 only allow-listed keys appear, and a key is sanitized into a Prometheus
  label name (every character outside [a-zA-Z0-9_] becomes `_`), so `airflow-on-k8s/pool` is
  `label_airflow_on_k8s_pool`. kube-prometheus-stack: `kube-state-metrics.metricLabelsAllowlist:
  ["nodes=[airflow-on-k8s/pool]"]`.
- `kube_pod_status_phase{namespace, pod, uid, phase}`: 1 for the pod's current phase.
- `kube_deployment_spec_replicas{namespace, deployment}`, `kube_deployment_status_replicas_available`.

The chart's StatsD exporter (apache/airflow chart/files/statsd-mappings.yml, the mappings the chart's
`statsd` Deployment loads): "- match: airflow.scheduler_heartbeat ... name: airflow_scheduler_heartbeat",
"- match: airflow.executor.queued_tasks.* name: airflow_executor_queued_tasks labels: executor: $1", and the
same for `executor.running_tasks`, `executor.open_slots`, `pool.open_slots.*`, `pool.starving_tasks.*`.
"""

from __future__ import annotations

import re

from airflow_on_k8s.task_pool import TASK_POOL

# kube-state-metrics
KUBE_NODE_LABELS = "kube_node_labels"
KUBE_POD_STATUS_PHASE = "kube_pod_status_phase"
KUBE_DEPLOYMENT_SPEC_REPLICAS = "kube_deployment_spec_replicas"
KUBE_DEPLOYMENT_STATUS_REPLICAS_AVAILABLE = "kube_deployment_status_replicas_available"
KUBE_STATE_METRICS = frozenset(
    {KUBE_NODE_LABELS, KUBE_POD_STATUS_PHASE, KUBE_DEPLOYMENT_SPEC_REPLICAS, KUBE_DEPLOYMENT_STATUS_REPLICAS_AVAILABLE}
)

# The Airflow chart's StatsD exporter (mapped names, see the module docstring).
AIRFLOW_SCHEDULER_HEARTBEAT = "airflow_scheduler_heartbeat"
AIRFLOW_EXECUTOR_QUEUED_TASKS = "airflow_executor_queued_tasks"
AIRFLOW_EXECUTOR_RUNNING_TASKS = "airflow_executor_running_tasks"
AIRFLOW_EXECUTOR_OPEN_SLOTS = "airflow_executor_open_slots"
AIRFLOW_POOL_OPEN_SLOTS = "airflow_pool_open_slots"
AIRFLOW_POOL_STARVING_TASKS = "airflow_pool_starving_tasks"
STATSD_METRICS = frozenset(
    {AIRFLOW_SCHEDULER_HEARTBEAT, AIRFLOW_EXECUTOR_QUEUED_TASKS, AIRFLOW_EXECUTOR_RUNNING_TASKS,
     AIRFLOW_EXECUTOR_OPEN_SLOTS, AIRFLOW_POOL_OPEN_SLOTS, AIRFLOW_POOL_STARVING_TASKS}
)
# Where the chart's exporter serves them (chart/templates/statsd/statsd-deployment.yaml and statsd-service.yaml:
# container and Service port `statsd-scrape`, pods labelled tier=airflow, component=statsd, release=<release>).
STATSD_SCRAPE_PORT = "statsd-scrape"
STATSD_COMPONENT_LABEL = "statsd"


def sanitized_label_name(kubernetes_label_key: str) -> str:
    """A Kubernetes label key as a Prometheus label name: every character outside [a-zA-Z0-9_] becomes `_` (as
    kube-state-metrics and Prometheus' Kubernetes service discovery both do)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", kubernetes_label_key)


def kube_state_metrics_label(kubernetes_label_key: str) -> str:
    """The label kube-state-metrics gives a Kubernetes label key on `kube_<object>_labels`."""
    return "label_" + sanitized_label_name(kubernetes_label_key)


TASK_POOL_NODE_LABEL = kube_state_metrics_label(TASK_POOL.label_key)
TASK_POOL_NODES = f'{KUBE_NODE_LABELS}{{{TASK_POOL_NODE_LABEL}="{TASK_POOL.label_value}"}}'


def autoscaler_metric_names() -> frozenset[str]:
    """Every series name the autoscaler exports, read from its own registry by metric type (a labelled metric
    without children yet has no samples to read): gauges by name, counters as `_total`, histograms as
    `_bucket`, `_sum`, `_count`."""
    from airflow_on_k8s.autoscaler.metrics import Metrics

    suffixes = {"gauge": ("",), "counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names |= {family.name + suffix for suffix in suffixes[family.type]}
    return frozenset(names)


def exported_metric_names() -> frozenset[str]:
    """What a query may name: the autoscaler's registry, kube-state-metrics' and the StatsD exporter's."""
    return autoscaler_metric_names() | KUBE_STATE_METRICS | STATSD_METRICS
