"""KEDA as the Airflow chart configures it: a ScaledObject with a postgresql trigger feeding an HPA.

Sources:

* KEDA ScaledObject spec (keda.sh/docs/latest/reference/scaledobject-spec): pollingInterval (default
  30 s) is how often the KEDA operator checks the trigger for activation; cooldownPeriod (default
  300 s) is how long after the last active trigger it scales to zero (only when minReplicaCount is 0);
  minReplicaCount defaults to 0; the HPA it creates gets minReplicas max(minReplicaCount, 1).
  Scaling between 1 and N is the HPA's job: the KEDA metrics adapter answers the HPA's 15 s queries by
  running the scaler query (unless `useCachedMetrics`, off by default; kedacore/keda#2282).
* The trigger's metric is an external metric with metricType AverageValue by default, target
  `targetQueryValue`; `activationTargetQueryValue` defaults to 0 (active when the value is above it).
* The Airflow chart (chart/values.yaml, workers.keda): pollingInterval 5, cooldownPeriod 30,
  minReplicaCount 0, maxReplicaCount 10, query
  ``SELECT ceil(COUNT(*)::decimal / worker_concurrency) FROM task_instance WHERE state IN (running, queued)``
  and targetQueryValue "1" in the chart's ScaledObject template.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class KedaParams:
    # The Airflow chart's values (what this project's keda mode deploys); KEDA's own defaults are 30 / 300.
    polling_interval_s: float = 5.0
    cooldown_period_s: float = 30.0
    target_query_value: float = 1.0
    activation_target_query_value: float = 0.0


def airflow_chart_query(queued_or_running: int, worker_concurrency: int) -> int:
    """The chart's postgresql trigger query: ceil(count(queued + running task instances) / concurrency)."""
    return math.ceil(queued_or_running / worker_concurrency) if queued_or_running > 0 else 0


@dataclass
class KedaOperator:
    """The KEDA operator's own loop: activation (0 -> 1) and deactivation (N -> 0 after cooldown)."""

    params: KedaParams
    min_replica_count: int
    last_active_at: float | None = None

    def hpa_min_replicas(self) -> int:
        return max(self.min_replica_count, 1)

    def poll(self, now: float, metric_value: float, current_replicas: int) -> int | None:
        """The replica count KEDA sets on this poll, or None to leave scaling to the HPA."""
        active = metric_value > self.params.activation_target_query_value
        if active:
            self.last_active_at = now
            if current_replicas == 0:
                return self.hpa_min_replicas()
            return None
        if (
            self.min_replica_count == 0
            and current_replicas > 0
            and (self.last_active_at is None or now - self.last_active_at >= self.params.cooldown_period_s)
        ):
            return 0
        return None
