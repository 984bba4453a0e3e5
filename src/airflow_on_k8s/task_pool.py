"""The task pool's selector: the one definition of its node label and taint.

Node pools (EKS, GKE, local), the Cluster Autoscaler's node-template tags, the KubernetesPodOperator
pod mutation hook and the tests all read these values from here, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskPoolSelector:
    """How a pod reaches the task pool: a required node label and a toleration for its taint."""

    label_key: str
    label_value: str
    taint_key: str
    taint_value: str
    # Kubernetes spelling; the clouds spell it differently (see eks_taint_effect / gke_taint_effect).
    taint_effect: str = "NoSchedule"

    @property
    def labels(self) -> dict[str, str]:
        return {self.label_key: self.label_value}

    @property
    def taint_string(self) -> str:
        """`value:Effect`, the form the Cluster Autoscaler reads from node-template tags."""
        return f"{self.taint_value}:{self.taint_effect}"

    @property
    def eks_taint_effect(self) -> str:
        return {"NoSchedule": "NO_SCHEDULE", "NoExecute": "NO_EXECUTE", "PreferNoSchedule": "PREFER_NO_SCHEDULE"}[
            self.taint_effect
        ]

    @property
    def gke_taint_effect(self) -> str:
        return self.eks_taint_effect

    def node_affinity_term(self) -> dict:
        """A `nodeSelectorTerm` (Kubernetes JSON casing) that requires the task-pool label."""
        return {"matchExpressions": [{"key": self.label_key, "operator": "In", "values": [self.label_value]}]}

    def toleration(self) -> dict:
        """The toleration (Kubernetes JSON casing) for the task-pool taint."""
        return {"key": self.taint_key, "operator": "Equal", "value": self.taint_value, "effect": self.taint_effect}

    def as_dict(self) -> dict[str, str]:
        return {
            "label_key": self.label_key,
            "label_value": self.label_value,
            "taint_key": self.taint_key,
            "taint_value": self.taint_value,
            "taint_effect": self.taint_effect,
        }


TASK_POOL = TaskPoolSelector(
    label_key="airflow-on-k8s/pool",
    label_value="tasks",
    taint_key="airflow-on-k8s/pool",
    taint_value="tasks",
)
