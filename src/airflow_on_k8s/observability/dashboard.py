"""The Grafana dashboard "Airflow worker scaling", generated here and shipped two ways:

- dashboards/airflow-worker-scaling.json in the repository, for import by hand (a test checks it is current;
  regenerate with `python -m airflow_on_k8s.observability.dashboard --write`);
- a ConfigMap labelled `grafana_dashboard: "1"`, which the Grafana sidecar of kube-prometheus-stack loads
  (grafana chart values.yaml: `sidecar.dashboards.label: grafana_dashboard`, `labelValue: ""` = any value;
  kube-prometheus-stack's values: `labelValue: "1"`), from the Observability component.

Panels: the seed's view first (worker replicas against queued and running tasks per queue), then what the
autoscaler decided and why, the drains, errors, the task pool (kube-state-metrics) and Airflow's scheduler
(the chart's StatsD exporter). Variables: the Prometheus data source, the Airflow and task namespaces.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_on_k8s.observability import exporters as x
from airflow_on_k8s.observability.queries import autoscaler, leader_only, pending_task_pods, selector, task_pool_nodes

UID = "airflow-worker-scaling"
TITLE = "Airflow worker scaling"
FILE_NAME = "airflow-worker-scaling.json"
REPO_FILE = Path(__file__).resolve().parents[3] / "dashboards" / FILE_NAME
SCHEMA_VERSION = 39  # Grafana 10.4 / 11 dashboards
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
NS, TASK_NS, DEPLOYMENT = "$namespace", "$task_namespace", "$worker_deployment"


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    targets: tuple[Target, ...]
    unit: str = "short"
    kind: str = "timeseries"


def _a(name: str, **labels: str) -> str:
    return selector(autoscaler(name), namespace=NS, **labels)


def _leader(name: str) -> str:
    return f"max({leader_only(_a(name), NS)})"


PANELS: tuple[Panel, ...] = (
    Panel(
        "Worker replicas vs queued and running tasks",
        "The seed's view: worker pods against the Celery tasks that need them, per queue.",
        (
            Target(f"max({selector(x.KUBE_DEPLOYMENT_SPEC_REPLICAS, namespace=NS, deployment=DEPLOYMENT)})",
                   "worker replicas"),
            Target(f"max({selector(x.KUBE_DEPLOYMENT_STATUS_REPLICAS_AVAILABLE, namespace=NS, deployment=DEPLOYMENT)})",
                   "available"),
            Target(f"max by (queue) ({leader_only(_a('queued_tasks'), NS)})", "queued {{queue}}"),
            Target(f"max by (queue) ({leader_only(_a('running_tasks'), NS)})", "running {{queue}}"),
        ),
    ),
    Panel(
        "Desired vs current replicas",
        "What the load needs (raw), what the policy decided after damping, and the replicas it started from.",
        (
            Target(_leader("raw_desired_replicas"), "raw desired"),
            Target(_leader("desired_replicas"), "desired"),
            Target(_leader("current_replicas"), "current"),
        ),
    ),
    Panel(
        "Busy workers",
        "Workers holding an active or reserved task (or not answering): never removed.",
        (Target(_leader("busy_workers"), "busy"), Target(_leader("current_replicas"), "replicas")),
    ),
    Panel(
        "Drains in progress and aborted",
        "Workers being drained now, and scale-downs given up in the last 5 minutes, by reason.",
        (
            Target(_leader("drains_in_progress"), "draining"),
            Target(f"sum by (reason) (increase({_a('aborted_drains_total')}[5m]))", "aborted: {{reason}}"),
        ),
    ),
    Panel(
        "Held scale-downs and the workers behind them",
        "Scale-downs not started in the last 5 minutes because removing a pod was not certain to be safe (by reason:"
        " removal pending, rollout, queue mismatch, a busy pod ranking first, a conflict), and the workers that"
        " cause holds: foreign pods, workers on queues outside the config, deaf workers and those healed.",
        (
            Target(f"sum by (reason) (increase({_a('held_scale_downs_total')}[5m]))", "held: {{reason}}"),
            Target(_leader("foreign_pods"), "foreign pods"),
            Target(_leader("queue_mismatch_workers"), "workers on other queues"),
            Target(_leader("deaf_workers"), "deaf workers"),
            Target(f"sum(increase({_a('healed_workers_total')}[5m]))", "healed"),
        ),
    ),
    Panel(
        "Task slots the count cannot see",
        "Airflow's [core] parallelism x schedulers (the most tasks that can run at once) and the worker slots held"
        " by running non-deferred KubernetesPodOperator tasks.",
        (
            Target(_leader("task_slot_cap"), "task slot cap"),
            Target(_leader("kubernetes_pod_operator_slots"), "slots held by pod operators"),
        ),
    ),
    Panel(
        "Drain duration",
        "From cancel_consumer to the worker holding no task.",
        (
            Target(f"histogram_quantile(0.5, sum by (le) (rate({_a('drain_seconds_bucket')}[15m])))", "p50"),
            Target(f"histogram_quantile(0.95, sum by (le) (rate({_a('drain_seconds_bucket')}[15m])))", "p95"),
        ),
        unit="s",
    ),
    Panel(
        "Errors by source",
        "Failed reads or actions per second: airflow_db, celery, actuator, controller.",
        (Target(f"sum by (source) (rate({_a('errors_total')}[5m]))", "{{source}}"),),
        unit="ops",
    ),
    Panel(
        "Scale events and leader",
        "Replica changes in the last 5 minutes by direction, and how many autoscaler replicas hold the lease (1).",
        (
            Target(f"sum by (direction) (increase({_a('scale_events_total')}[5m]))", "{{direction}}"),
            Target(f"sum({_a('leader')})", "leaders"),
        ),
    ),
    Panel(
        "Task pool nodes and pending KubernetesPodOperator pods",
        f"Nodes labelled {x.TASK_POOL_NODES} (kube-state-metrics needs the label allow-listed) and task pods "
        "waiting for one.",
        (
            Target(task_pool_nodes(), "task-pool nodes"),
            Target(pending_task_pods(TASK_NS), "pending task pods"),
        ),
    ),
    Panel(
        "Airflow scheduler and executor",
        "Scheduler heartbeats per second and the executor's queued, running and open slots (StatsD exporter).",
        (
            Target(f"sum(rate({x.AIRFLOW_SCHEDULER_HEARTBEAT}[5m]))", "scheduler heartbeats/s"),
            Target(f"sum by (executor) ({x.AIRFLOW_EXECUTOR_QUEUED_TASKS})", "queued {{executor}}"),
            Target(f"sum by (executor) ({x.AIRFLOW_EXECUTOR_RUNNING_TASKS})", "running {{executor}}"),
            Target(f"sum by (executor) ({x.AIRFLOW_EXECUTOR_OPEN_SLOTS})", "open slots {{executor}}"),
        ),
    ),
    Panel(
        "Airflow pools",
        "Open slots and tasks starving for a slot, per Airflow pool (StatsD exporter).",
        (
            Target(f"sum by (pool) ({x.AIRFLOW_POOL_OPEN_SLOTS})", "open {{pool}}"),
            Target(f"sum by (pool) ({x.AIRFLOW_POOL_STARVING_TASKS})", "starving {{pool}}"),
        ),
    ),
)


def _textbox(name: str, label: str, value: str) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "textbox", "query": value, "hide": 0,
            "current": {"selected": False, "text": value, "value": value}, "options": [{"selected": True, "text": value, "value": value}]}


def dashboard(namespace: str = "airflow", task_namespace: str = "airflow-tasks",
              worker_deployment: str = "airflow-worker") -> dict[str, Any]:
    """The dashboard JSON model; the variables default to these namespaces and Deployment."""
    panels = []
    for i, p in enumerate(PANELS):
        panels.append({
            "id": i + 1,
            "type": p.kind,
            "title": p.title,
            "description": p.description,
            "datasource": DATASOURCE,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "targets": [
                {"refId": chr(ord("A") + j), "datasource": DATASOURCE, "expr": t.expr, "legendFormat": t.legend,
                 "range": True}
                for j, t in enumerate(p.targets)
            ],
            "fieldConfig": {"defaults": {"unit": p.unit, "min": 0, "custom": {"lineWidth": 2, "fillOpacity": 10}},
                            "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "none"}},
        })
    return {
        "uid": UID,
        "title": TITLE,
        "description": "Why the Celery workers scaled (or did not): airflow-on-k8s task-aware autoscaler, "
                       "kube-state-metrics and Airflow's StatsD metrics.",
        "tags": ["airflow", "autoscaling", "airflow-on-k8s"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-3h", "to": "now"},
        "refresh": "30s",
        "timezone": "browser",
        "annotations": {"list": [{
            "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
        }]},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus", "hide": 0,
             "current": {}, "options": [], "refresh": 1, "regex": ""},
            _textbox("namespace", "Airflow namespace", namespace),
            _textbox("task_namespace", "Task namespace", task_namespace),
            _textbox("worker_deployment", "Worker Deployment", worker_deployment),
        ]},
        "panels": panels,
    }


def render(model: dict[str, Any]) -> str:
    return json.dumps(model, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_on_k8s.observability.dashboard",
                                     description=f"Print or write {REPO_FILE.name} (the dashboard for import).")
    parser.add_argument("--write", action="store_true", help=f"write {REPO_FILE}")
    args = parser.parse_args(argv)
    text = render(dashboard())
    if args.write:
        REPO_FILE.parent.mkdir(parents=True, exist_ok=True)
        REPO_FILE.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
