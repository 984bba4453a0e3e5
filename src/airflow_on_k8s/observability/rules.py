"""Alerting rules for worker scaling, as Prometheus rule groups (the `spec` of a monitoring.coreos.com/v1
PrometheusRule, of a monitoring.googleapis.com/v1 Rules, and the YAML of an Amazon Managed Service for
Prometheus rule group namespace). Each alert's `runbook_url` points at its section of docs/runbooks.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow_on_k8s.observability import exporters as x
from airflow_on_k8s.observability.queries import (
    autoscaler,
    leader_only,
    pending_task_pods,
    queued_tasks,
    selector,
    worker_replicas,
)

GROUP = "airflow-worker-scaling"
RUNBOOKS = "docs/runbooks.md"
# What the controller counts a drain that outlived --drain-timeout as (aborted_drains_total{reason}).
DRAIN_TIMEOUT_REASON = "drain timeout"


@dataclass(frozen=True)
class RuleArgs:
    """What the alerts' expressions and thresholds depend on."""

    namespace: str
    """The Airflow namespace: the autoscaler's series and the worker Deployment are there."""
    task_namespace: str
    """Where KubernetesPodOperator pods run (pending ones count against the task pool)."""
    worker_deployment: str
    """The Celery worker Deployment's name."""
    task_aware: bool
    """The autoscaler runs (scaling.mode task-aware), so its metrics exist and its alerts apply."""
    max_workers: int
    """scaling.maxWorkers: the worker count at which waiting tasks page."""
    task_pool_max_nodes: int
    """taskPool.maxSize: the node count at which pending task pods page."""
    queued_minutes: int
    """observability.queuedAlertMinutes: how long the queues may stay non-empty."""
    runbook_base_url: str = RUNBOOKS
    """Where runbook_url points; each alert adds its #anchor."""


def _alert(name: str, expr: str, for_: str, severity: str, summary: str, description: str,
           runbook_base_url: str) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        **({"for": for_} if for_ != "0m" else {}),
        "labels": {"severity": severity},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": f"{runbook_base_url}#{name.lower()}",
        },
    }


def alert_rules(a: RuleArgs) -> list[dict[str, Any]]:
    ns = a.namespace
    rules = []

    def alert(*args):
        rules.append(_alert(*args, a.runbook_base_url))

    def m(name: str, **labels: str) -> str:
        return selector(autoscaler(name), namespace=ns, **labels)

    if a.task_aware:
        alert("AirflowWorkerAutoscalerNoLeader",
              f"(sum({m('leader')}) or vector(0)) < 1",
              "5m", "critical", "No worker autoscaler holds the lease",
              f"No replica of the worker autoscaler in {ns} has been leader for 5 minutes: worker replicas are "
              "frozen (no scale-up for new tasks).")
        alert("AirflowWorkerAutoscalerErrors",
              f"sum by (source) (rate({m('errors_total')}[10m])) > 0.02",
              "10m", "warning", "Worker autoscaler errors rising ({{ $labels.source }})",
              "The autoscaler failed more than one read or action a minute from {{ $labels.source }} for 10 "
              "minutes; it holds scale-downs while the database or broker is unreachable.")
        alert("AirflowWorkerDrainsTimingOut",
              f'sum(increase({m("aborted_drains_total", reason=DRAIN_TIMEOUT_REASON)}[30m])) > 0',
              "0m", "warning", "Worker drains are timing out",
              "A worker chosen for removal still held a task after --drain-timeout in the last 30 minutes; it "
              "was kept, so scale-down is stalled while this repeats.")
        alert("AirflowWorkerConsumesNoQueue",
              f"max({leader_only(m('deaf_workers'), ns)}) > 0",
              "5m", "warning", "A Celery worker consumes none of its queues",
              "The autoscaler found live workers that consume fewer of their queues than they should for 5 "
              "minutes (left cancelled by a crash, or dropped on a broker reconnect): they take no task.")
        alert("AirflowWorkerScaleDownHeld",
              f"sum by (reason) (rate({m('held_scale_downs_total')}[5m])) > 0",
              "30m", "warning", "Worker scale-down held for 30 minutes ({{ $labels.reason }})",
              "The autoscaler wanted fewer workers and held the scale-down in every 5 minutes of the last 30, "
              "because removing a pod was not certain to be safe ({{ $labels.reason }}): idle workers keep "
              "running until the cause goes.")
        alert("AirflowWorkerForeignPods",
              f"max({leader_only(m('foreign_pods'), ns)}) > 0",
              "30m", "warning", "Pods match the worker labels but not the worker Deployment",
              f"Pods in {ns} carry the Celery workers' labels without belonging to the worker Deployment's "
              "ReplicaSets (KubernetesExecutor pods in a hybrid setup, copies made by hand). The autoscaler "
              "ignores them; anything else selecting by those labels does not.")
    queued = queued_tasks(ns, a.task_aware)
    alert("AirflowTasksQueuedTooLong",
          f"min_over_time(({queued})[{a.queued_minutes}m:1m]) > 0",
          "0m", "warning", f"Tasks have waited in the queues for {a.queued_minutes} minutes",
          f"The Celery queues in {ns} were never empty for {a.queued_minutes} minutes: workers are missing, "
          "deaf, or Airflow's pools and parallelism hold tasks back.")
    alert("AirflowTaskPoolAtMaximum",
          f"count({x.TASK_POOL_NODES}) >= {a.task_pool_max_nodes} and on () ({pending_task_pods(a.task_namespace)}) > 0",
          "10m", "warning", "The task node pool is at its maximum with task pods pending",
          f"The task pool has {a.task_pool_max_nodes} nodes (taskPool.maxSize) and KubernetesPodOperator pods "
          f"in {a.task_namespace} are pending: they wait for a node that will not come.")
    alert("AirflowWorkersAtMaxWhileTasksWait",
          f"{worker_replicas(ns, a.worker_deployment)} >= {a.max_workers} and on () ({queued}) > 0",
          "10m", "warning", "Celery workers are at scaling.maxWorkers while tasks wait",
          f"The worker Deployment runs {a.max_workers} replicas (scaling.maxWorkers) and tasks are still "
          "queued: raise maxWorkers or workerConcurrency, or accept the wait.")
    return rules


def rule_groups(a: RuleArgs) -> list[dict[str, Any]]:
    return [{"name": GROUP, "rules": alert_rules(a)}]
