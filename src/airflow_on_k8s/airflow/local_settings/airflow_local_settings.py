"""Airflow local settings shipped to every Airflow component: sends KubernetesPodOperator pods to the task pool.

This file is a template. The Airflow component (airflow_on_k8s/airflow/component.py) renders it with the task pool's label
and taint from airflow_on_k8s/task_pool.py (`airflow_on_k8s.airflow.local_settings.render_local_settings`) and ships the result through
the chart's `airflowLocalSettings` value; Airflow imports it as `airflow_local_settings` and calls
`pod_mutation_hook` on every pod the KubernetesPodOperator builds, just before it is created.

What the hook does to a KubernetesPodOperator pod (recognised by the `kubernetes_pod_operator: "True"` label
that the cncf.kubernetes provider puts on every pod it launches); every other pod is left alone:
- requires a task-pool node: the label expression is added to each of the author's required
  nodeSelectorTerms (terms are ORed, so each must carry it), or becomes the only term;
  a term that already mentions the task-pool label key is the author's choice and is kept as it is;
- tolerates the task-pool taint, unless a toleration for that key is already there;
- asks the Cluster Autoscaler and Karpenter not to evict the running task, unless the author set those
  annotations himself.

Opting out: a task whose pod carries the label or annotation `airflow-on-k8s/task-pool: "skip"` is not changed,
e.g. `KubernetesPodOperator(..., labels={"airflow-on-k8s/task-pool": "skip"})`.
"""

from __future__ import annotations

from kubernetes.client import models as k8s

# Airflow registers the hooks named here and copies nothing else of this module into airflow.settings.
__all__ = ["pod_mutation_hook"]

# The task pool's selector (label_key, label_value, taint_key, taint_value, taint_effect), injected when the
# Airflow component renders this file; the line below is replaced whole.
TASK_POOL: dict[str, str] = {}  # <task-pool: rendered by airflow_on_k8s.airflow.local_settings.render_local_settings>

OPT_OUT_KEY = "airflow-on-k8s/task-pool"
OPT_OUT_VALUE = "skip"
KPO_LABEL = "kubernetes_pod_operator"
NO_EVICTION_ANNOTATIONS = {
    "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
    "karpenter.sh/do-not-disrupt": "true",
}

if not TASK_POOL:
    raise ImportError(
        "airflow_local_settings was shipped without rendering; the Airflow component must render it with "
        "airflow_on_k8s.airflow.local_settings.render_local_settings(TASK_POOL)"
    )


def is_task_pod(pod: k8s.V1Pod) -> bool:
    """A pod the KubernetesPodOperator built, and not opted out of the task pool."""
    meta = pod.metadata
    if meta is None:
        return False
    labels = meta.labels or {}
    annotations = meta.annotations or {}
    if labels.get(KPO_LABEL) != "True":
        return False
    return OPT_OUT_VALUE not in (labels.get(OPT_OUT_KEY), annotations.get(OPT_OUT_KEY))


def pod_mutation_hook(pod: k8s.V1Pod) -> None:
    """Pin KubernetesPodOperator pods to the task pool (in place, as Airflow expects)."""
    if not is_task_pod(pod):
        return
    if pod.spec is None:
        pod.spec = k8s.V1PodSpec(containers=[])
    _require_task_pool_node(pod.spec)
    _tolerate_task_pool_taint(pod.spec)
    annotations = pod.metadata.annotations or {}
    for key, value in NO_EVICTION_ANNOTATIONS.items():
        annotations.setdefault(key, value)
    pod.metadata.annotations = annotations


def _task_pool_expression() -> k8s.V1NodeSelectorRequirement:
    return k8s.V1NodeSelectorRequirement(
        key=TASK_POOL["label_key"], operator="In", values=[TASK_POOL["label_value"]]
    )


def _require_task_pool_node(spec: k8s.V1PodSpec) -> None:
    affinity = spec.affinity or k8s.V1Affinity()
    node_affinity = affinity.node_affinity or k8s.V1NodeAffinity()
    required = node_affinity.required_during_scheduling_ignored_during_execution
    if required is None or not required.node_selector_terms:
        required = k8s.V1NodeSelector(
            node_selector_terms=[k8s.V1NodeSelectorTerm(match_expressions=[_task_pool_expression()])]
        )
    else:
        for term in required.node_selector_terms:
            expressions = term.match_expressions or []
            if not any(e.key == TASK_POOL["label_key"] for e in expressions):
                expressions.append(_task_pool_expression())
            term.match_expressions = expressions
    node_affinity.required_during_scheduling_ignored_during_execution = required
    affinity.node_affinity = node_affinity
    spec.affinity = affinity


def _tolerate_task_pool_taint(spec: k8s.V1PodSpec) -> None:
    tolerations = spec.tolerations or []
    if not any(t.key == TASK_POOL["taint_key"] for t in tolerations):
        tolerations.append(
            k8s.V1Toleration(
                key=TASK_POOL["taint_key"],
                operator="Equal",
                value=TASK_POOL["taint_value"],
                effect=TASK_POOL["taint_effect"],
            )
        )
    spec.tolerations = tolerations
