"""The HorizontalPodAutoscaler's decision rules, ported from kube-controller-manager so the simulator
scales exactly as Kubernetes would given the same inputs.

Sources (kubernetes/kubernetes, pkg/controller/podautoscaler/):

* replica_calculator.go `GetResourceReplicas` + `groupPods`: CPU utilization over the pods that have a
  usable sample; pending pods, pods without a sample and pods still in their CPU initialization period
  without one full metric window since they became ready are set aside; on a scale-up they count as 0 %,
  and a result that flips direction or falls within the tolerance keeps the current size.
* metrics/utilization.go `GetResourceUtilizationRatio`: utilization is an integer percentage
  (sum(usage) * 100 / sum(requests), truncated) before it is divided by the target.
* replica_calculator.go `GetExternalPerPodMetricReplicas`: an AverageValue external metric (KEDA)
  gives ceil(total / target) unless total / (target * status.replicas) is within the tolerance.
* horizontal.go: with `spec.behavior` unset (`kubectl autoscale`, KEDA without `advanced`) the legacy
  `normalizeDesiredReplicas`: highest recommendation of the last 5 minutes on the way down, at most
  max(2 * current, 4) on the way up. With a behavior: `stabilizeRecommendationWithBehaviors` and
  `convertDesiredReplicasWithBehaviorRate` with the scale-up/scale-down policies per period.
* apis/autoscaling/v2/defaults.go: the default behavior (scale up: max of +4 pods and +100 % per 15 s,
  no stabilization; scale down: 100 % per 15 s after the 300 s stabilization window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class HpaControllerFlags:
    """kube-controller-manager flags that shape every HPA (all at their upstream defaults)."""

    sync_period_s: float = 15.0  # --horizontal-pod-autoscaler-sync-period
    tolerance: float = 0.1  # --horizontal-pod-autoscaler-tolerance
    cpu_initialization_period_s: float = 300.0  # --horizontal-pod-autoscaler-cpu-initialization-period
    initial_readiness_delay_s: float = 30.0  # --horizontal-pod-autoscaler-initial-readiness-delay
    downscale_stabilization_s: float = 300.0  # --horizontal-pod-autoscaler-downscale-stabilization


@dataclass(frozen=True)
class ScalingPolicy:
    """One `HPAScalingPolicy`: change by `value` pods or percent per `period_s`."""

    type: Literal["Pods", "Percent"]
    value: int
    period_s: float


@dataclass(frozen=True)
class ScalingRules:
    """`HPAScalingRules`; stabilization None means the controller's downscale-stabilization flag."""

    policies: tuple[ScalingPolicy, ...]
    stabilization_s: float | None = None
    select: Literal["Max", "Min", "Disabled"] = "Max"


@dataclass(frozen=True)
class Behavior:
    scale_up: ScalingRules
    scale_down: ScalingRules


# apis/autoscaling/v2/defaults.go: what the API server fills in when a behavior is given without rules.
DEFAULT_BEHAVIOR = Behavior(
    scale_up=ScalingRules(
        policies=(ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15)), stabilization_s=0
    ),
    scale_down=ScalingRules(policies=(ScalingPolicy("Percent", 100, 15),), stabilization_s=None),
)

# horizontal.go: the legacy limit when spec.behavior is nil.
SCALE_UP_LIMIT_FACTOR = 2.0
SCALE_UP_LIMIT_MINIMUM = 4.0


@dataclass(frozen=True)
class CpuSample:
    """What metrics-server answers for one pod: mean usage (millicores) over [timestamp - window, timestamp]."""

    usage_m: float
    timestamp: float
    window_s: float


@dataclass(frozen=True)
class PodView:
    """The fields of a pod the replica calculator reads."""

    name: str
    request_m: float
    phase: Literal["Pending", "Running"]
    deleting: bool = False
    # Ready condition: None while the pod has none (not started), else (status, lastTransitionTime).
    ready: bool = False
    ready_transition: float | None = None
    start_time: float | None = None
    sample: CpuSample | None = None


def _within(ratio: float, tolerance: float) -> bool:
    return (1.0 - tolerance) <= ratio <= (1.0 + tolerance)


def utilization_ratio(usage_m: dict[str, float], request_m: dict[str, float], target_pct: int) -> tuple[float, int]:
    """(usage ratio, integer utilization %), as metrics.GetResourceUtilizationRatio computes them."""
    total_usage = sum(int(usage_m[name]) for name in usage_m)
    total_request = sum(int(request_m[name]) for name in usage_m)
    if total_request == 0:
        raise ValueError("no requests for the pods with metrics")
    utilization = (total_usage * 100) // total_request
    return utilization / target_pct, utilization


def group_pods(pods: list[PodView], now: float, flags: HpaControllerFlags) -> tuple[int, set[str], set[str], set[str]]:
    """(ready count, unready, missing, ignored) as replica_calculator.go groupPods sorts CPU pods."""
    ready_count = 0
    unready: set[str] = set()
    missing: set[str] = set()
    ignored: set[str] = set()
    for pod in pods:
        if pod.deleting:
            ignored.add(pod.name)
            continue
        if pod.phase == "Pending":
            unready.add(pod.name)
            continue
        if pod.sample is None:
            missing.add(pod.name)
            continue
        if pod.ready_transition is None or pod.start_time is None:
            is_unready = True
        elif pod.start_time + flags.cpu_initialization_period_s > now:
            # Within the initialization period: only a full window sampled after the pod became ready counts.
            is_unready = (not pod.ready) or pod.sample.timestamp < pod.ready_transition + pod.sample.window_s
        else:
            is_unready = (not pod.ready) and pod.start_time + flags.initial_readiness_delay_s > pod.ready_transition
        if is_unready:
            unready.add(pod.name)
            continue
        ready_count += 1
    return ready_count, unready, missing, ignored


def cpu_replicas(
    current: int, target_pct: int, pods: list[PodView], now: float, flags: HpaControllerFlags
) -> tuple[int, int] | None:
    """(recommended replicas, utilization %) for a CPU Utilization target, or None when Kubernetes
    would report "did not receive metrics for targeted pods" and skip this sync."""
    ready_count, unready, missing, ignored = group_pods(pods, now, flags)
    usage = {p.name: p.sample.usage_m for p in pods if p.sample is not None}
    requests = {p.name: p.request_m for p in pods}
    for name in ignored | unready:
        usage.pop(name, None)
    if not usage:
        return None
    ratio, utilization = utilization_ratio(usage, requests, target_pct)

    scale_up_with_unready = bool(unready) and ratio > 1.0
    if not scale_up_with_unready and not missing:
        if _within(ratio, flags.tolerance):
            return current, utilization
        return math.ceil(ratio * ready_count), utilization

    if missing:
        if ratio < 1.0:
            # Scale-down: a pod without a sample is assumed at 100 % of its request (or the target if higher).
            fallback = max(100, target_pct)
            for name in missing:
                usage[name] = requests[name] * fallback / 100
        elif ratio > 1.0:
            for name in missing:
                usage[name] = 0.0
    if scale_up_with_unready:
        for name in unready:
            usage[name] = 0.0

    new_ratio, _ = utilization_ratio(usage, requests, target_pct)
    if _within(new_ratio, flags.tolerance) or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
        return current, utilization
    new_replicas = math.ceil(new_ratio * len(usage))
    if (new_ratio < 1.0 and new_replicas > current) or (new_ratio > 1.0 and new_replicas < current):
        return current, utilization
    return new_replicas, utilization


def external_average_value_replicas(status_replicas: int, total_usage: float, target_per_pod: float, tolerance: float) -> int:
    """GetExternalPerPodMetricReplicas: the replica count for an AverageValue external metric (KEDA's default)."""
    replicas = status_replicas
    ratio = total_usage / (target_per_pod * status_replicas) if status_replicas else math.inf
    if not _within(ratio, tolerance):
        replicas = math.ceil(round(total_usage / target_per_pod, 9))
    return replicas


@dataclass
class HorizontalController:
    """One HPA object's controller state: recommendation history and scale events (horizontal.go)."""

    min_replicas: int
    max_replicas: int
    flags: HpaControllerFlags = field(default_factory=HpaControllerFlags)
    behavior: Behavior | None = None
    _recommendations: list[tuple[float, int]] = field(default_factory=list)
    _scale_up_events: list[tuple[float, int]] = field(default_factory=list)
    _scale_down_events: list[tuple[float, int]] = field(default_factory=list)

    def reconcile(self, now: float, current: int, metric_desired: int | None) -> int:
        """The replica count this sync sets (== current when it does not rescale).

        `metric_desired` None means the metric could not be computed this sync: no change.
        """
        if current == 0 and self.min_replicas != 0:
            return current  # "ScalingDisabled": scaled to zero by someone else (KEDA owns 0 <-> 1)
        if current > self.max_replicas:
            desired = self.max_replicas
        elif current < self.min_replicas:
            desired = self.min_replicas
        else:
            if metric_desired is None:
                return current
            if self.behavior is None:
                desired = self._normalize_legacy(now, current, metric_desired)
            else:
                desired = self._normalize_with_behavior(now, current, metric_desired)
        if desired != current and self.behavior is not None:
            events = self._scale_up_events if desired > current else self._scale_down_events
            events.append((now, abs(desired - current)))
        return desired

    # --- spec.behavior == nil ---------------------------------------------------------------------
    def _normalize_legacy(self, now: float, current: int, desired: int) -> int:
        cutoff = now - self.flags.downscale_stabilization_s
        self._recommendations = [(t, r) for t, r in self._recommendations if t >= cutoff]
        stabilized = max([desired] + [r for _, r in self._recommendations])
        self._recommendations.append((now, desired))
        scale_up_limit = int(max(SCALE_UP_LIMIT_FACTOR * current, SCALE_UP_LIMIT_MINIMUM))
        maximum = min(self.max_replicas, scale_up_limit)
        if stabilized < self.min_replicas:
            return self.min_replicas
        return min(stabilized, maximum)

    # --- spec.behavior set ------------------------------------------------------------------------
    def _normalize_with_behavior(self, now: float, current: int, desired: int) -> int:
        assert self.behavior is not None
        up, down = self.behavior.scale_up, self.behavior.scale_down
        up_window = up.stabilization_s if up.stabilization_s is not None else 0.0
        down_window = down.stabilization_s if down.stabilization_s is not None else self.flags.downscale_stabilization_s
        up_rec = down_rec = desired
        for t, r in self._recommendations:
            if t > now - up_window:
                up_rec = min(up_rec, r)
            if t > now - down_window:
                down_rec = max(down_rec, r)
        self._recommendations = [(t, r) for t, r in self._recommendations if t > now - max(up_window, down_window)]
        self._recommendations.append((now, desired))
        stabilized = min(max(current, up_rec), down_rec)

        if stabilized > current:
            limit = max(self._scale_up_limit(now, current, up), current)
            return min(stabilized, self.max_replicas, limit)
        if stabilized < current:
            limit = min(self._scale_down_limit(now, current, down), current)
            return max(stabilized, self.min_replicas, limit)
        return stabilized

    def _change_in_period(self, events: list[tuple[float, int]], now: float, period_s: float) -> int:
        return sum(n for t, n in events if t > now - period_s)

    def _period_start(self, now: float, current: int, period_s: float) -> int:
        added = self._change_in_period(self._scale_up_events, now, period_s)
        removed = self._change_in_period(self._scale_down_events, now, period_s)
        return current - added + removed

    def _scale_up_limit(self, now: float, current: int, rules: ScalingRules) -> int:
        if rules.select == "Disabled":
            return current
        pick = min if rules.select == "Min" else max
        result: int | None = None
        for policy in rules.policies:
            start = self._period_start(now, current, policy.period_s)
            if policy.type == "Pods":
                proposed = start + policy.value
            else:
                proposed = math.ceil(start * (1 + policy.value / 100))
            result = proposed if result is None else pick(result, proposed)
        return current if result is None else result

    def _scale_down_limit(self, now: float, current: int, rules: ScalingRules) -> int:
        if rules.select == "Disabled":
            return current
        # For scaling down the biggest change is the lowest count, so "Max" picks the minimum proposal.
        pick = max if rules.select == "Min" else min
        result: int | None = None
        for policy in rules.policies:
            start = self._period_start(now, current, policy.period_s)
            if policy.type == "Pods":
                proposed = start - policy.value
            else:
                proposed = int(start * (1 - policy.value / 100))
            result = proposed if result is None else pick(result, proposed)
        return current if result is None else result
