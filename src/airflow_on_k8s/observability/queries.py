"""PromQL shared by the dashboard and the alerts. Autoscaler metric names are built from its registry's PREFIX
(tests check every name a query uses against the registry and exporters.py)."""

from __future__ import annotations

from airflow_on_k8s.autoscaler.metrics import PREFIX
from airflow_on_k8s.observability import exporters as x


def autoscaler(name: str) -> str:
    """The full name of an autoscaler metric, e.g. autoscaler("queued_tasks")."""
    return f"{PREFIX}_{name}"


def selector(metric: str, **labels: str) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{metric}{{{inner}}}" if inner else metric


def leader_only(expr: str, namespace: str) -> str:
    """Only the leader's gauges: a standby (or a former leader) keeps its last values, so match the series of
    the pod whose leader gauge is 1."""
    return (f"({expr}) * on (namespace, pod) group_left () "
            f"({selector(autoscaler('leader'), namespace=namespace)} == 1)")


def task_pool_nodes() -> str:
    return f"count({x.TASK_POOL_NODES}) or vector(0)"


def pending_task_pods(task_namespace: str) -> str:
    return f'sum({selector(x.KUBE_POD_STATUS_PHASE, namespace=task_namespace, phase="Pending")}) or vector(0)'


def worker_replicas(namespace: str, deployment: str) -> str:
    return f"max({selector(x.KUBE_DEPLOYMENT_SPEC_REPLICAS, namespace=namespace, deployment=deployment)})"


def queued_tasks(namespace: str, task_aware: bool) -> str:
    """Celery tasks waiting: the autoscaler's per-queue count, or (no autoscaler) the executor's own gauge."""
    if task_aware:
        return f"sum({leader_only(selector(autoscaler('queued_tasks'), namespace=namespace), namespace)})"
    return f"sum({x.AIRFLOW_EXECUTOR_QUEUED_TASKS})"
