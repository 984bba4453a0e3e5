"""The scaling policy: how many Celery workers the current task load needs, and which ones to remove.

Pure: no I/O and no clock reads; the time is part of every observation, so the same observations
always give the same decisions (the controller, the tests and the benchmark simulator all rely on it).

Sizing (like KEDA's SQL scaler, but with Airflow's numbers)::

    raw_desired = ceil((queued + running) / (worker_concurrency * target_load_factor))

clamped to [min_workers, max_workers]. Queues are pooled by default: every worker of the Deployment
consumes every queue, so free slots anywhere serve any queue. `per_queue_ceiling=True` instead sums
ceil(load_q / slots) over queues, an upper bound for setups where a worker's slots do not mix queues.

Damping, modelled on the HorizontalPodAutoscaler's `behavior`:

* up fast: the *lowest* recommendation of the last `scale_up_stabilization_s` seconds (0 = now),
  at most `scale_up_max_step` workers added per decision (0 = unlimited), no cooldown;
* down slow: the *highest* recommendation of the last `scale_down_stabilization_s` seconds, at most
  `scale_down_max_step` workers removed per decision, at most one removal per `scale_down_cooldown_s`;
* never below `busy_workers` on scale-down: the policy never asks to remove a worker holding a task.
  That floor outranks `max_workers` (lowering max_workers below the busy count waits for tasks to end);
  in every other case the result lies in [min_workers, max_workers].

`validate()` rejects configs where scaling up would be slower than scaling down.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# controller.kubernetes.io/pod-deletion-cost is an int32.
INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class PolicyConfig:
    min_workers: int = 0
    max_workers: int = 10
    worker_concurrency: int = 16
    target_load_factor: float = 1.0  # desired = ceil(load / (concurrency * factor))
    scale_up_stabilization_s: float = 0.0  # up fast
    scale_down_stabilization_s: float = 120.0  # down slow (the max recommendation over the window)
    scale_up_max_step: int = 0  # 0 = unlimited per decision
    scale_down_max_step: int = 1  # remove at most N workers per decision...
    scale_down_cooldown_s: float = 60.0  # ...and at most once per cooldown (no yo-yo)
    # Sum of per-queue ceilings instead of one ceiling over the pooled load (see the module docstring).
    per_queue_ceiling: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and how to fix it."""
        problems: list[str] = []
        if self.min_workers < 0:
            problems.append(f"min_workers: {self.min_workers} is negative; use 0 or more")
        if self.max_workers < 1:
            problems.append(f"max_workers: {self.max_workers} would never run a task; use 1 or more")
        if self.max_workers < self.min_workers:
            problems.append(
                f"max_workers: {self.max_workers} is below min_workers ({self.min_workers}); "
                "raise max_workers or lower min_workers"
            )
        if self.worker_concurrency < 1:
            problems.append(f"worker_concurrency: {self.worker_concurrency} must be 1 or more (Celery's -c)")
        if not (0 < self.target_load_factor <= 1.0):
            problems.append(
                f"target_load_factor: {self.target_load_factor} must be in (0, 1]; "
                "1.0 fills every slot, 0.5 keeps half the slots free"
            )
        for name in ("scale_up_stabilization_s", "scale_down_stabilization_s", "scale_down_cooldown_s"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                problems.append(f"{name}: {value} must be a finite number of seconds, 0 or more")
        if self.scale_up_max_step < 0:
            problems.append(f"scale_up_max_step: {self.scale_up_max_step} is negative; use 0 (unlimited) or more")
        if self.scale_down_max_step < 1:
            problems.append(
                f"scale_down_max_step: {self.scale_down_max_step} would never scale down; use 1 or more"
            )
        if self.scale_up_stabilization_s > self.scale_down_stabilization_s:
            problems.append(
                f"scale_up_stabilization_s: {self.scale_up_stabilization_s} is longer than "
                f"scale_down_stabilization_s ({self.scale_down_stabilization_s}), so scaling up would be slower "
                "than scaling down; shorten it or lengthen scale_down_stabilization_s"
            )
        if self.scale_up_max_step and self.scale_up_max_step < self.scale_down_max_step:
            problems.append(
                f"scale_up_max_step: {self.scale_up_max_step} is below scale_down_max_step "
                f"({self.scale_down_max_step}), so scaling up would be slower than scaling down; "
                "raise it or use 0 (unlimited)"
            )
        if problems:
            raise ValueError("\n".join(problems))

    @property
    def slots_per_worker(self) -> float:
        return self.worker_concurrency * self.target_load_factor


@dataclass(frozen=True)
class QueueLoad:
    queue: str
    queued: int
    running: int


@dataclass(frozen=True)
class Observation:
    now: float
    loads: tuple[QueueLoad, ...]
    current_replicas: int
    busy_workers: int  # workers holding at least one active or reserved task


@dataclass(frozen=True)
class Decision:
    desired_replicas: int
    raw_desired: int  # the load's need before stabilization, step limits and the busy floor
    reason: str


def _ceil_div(load: int, slots: float) -> int:
    # Round away float noise first: 6 / (2 * 0.3) must be 10, not 11.
    return math.ceil(round(load / slots, 9)) if load > 0 else 0


def raw_desired_workers(loads: Iterable[QueueLoad], config: PolicyConfig) -> int:
    """ceil(sum(queued + running) / (concurrency * factor)), clamped to [min_workers, max_workers]."""
    loads = list(loads)
    slots = config.slots_per_worker
    if config.per_queue_ceiling:
        need = sum(_ceil_div(max(q.queued, 0) + max(q.running, 0), slots) for q in loads)
    else:
        need = _ceil_div(sum(max(q.queued, 0) + max(q.running, 0) for q in loads), slots)
    return min(max(need, config.min_workers), config.max_workers)


class ScalingPolicy:
    """Turns observations into decisions. Holds only its recommendation history; deterministic."""

    def __init__(self, config: PolicyConfig):
        config.validate()
        self.config = config
        self._history: deque[tuple[float, int]] = deque()  # (time, raw recommendation)
        self._last_scale_down_at: float | None = None
        # A restarted controller has no history: until one down-window has passed, count the replicas it
        # found as a recommendation, so a restart never shortcuts the scale-down stabilization.
        self._started_at: float | None = None
        self._start_replicas = 0
        self._last_now: float | None = None

    def decide(self, obs: Observation) -> Decision:
        cfg = self.config
        if self._last_now is not None and obs.now < self._last_now:
            raise ValueError(f"Observation.now went backwards ({obs.now} < {self._last_now}); pass a monotonic clock")
        self._last_now = obs.now
        if self._started_at is None:
            self._started_at, self._start_replicas = obs.now, obs.current_replicas

        raw = raw_desired_workers(obs.loads, cfg)
        self._history.append((obs.now, raw))
        keep = max(cfg.scale_up_stabilization_s, cfg.scale_down_stabilization_s)
        while self._history and self._history[0][0] < obs.now - keep:
            self._history.popleft()

        current = obs.current_replicas
        up_target = min(r for t, r in self._history if t >= obs.now - cfg.scale_up_stabilization_s)
        down_window = [r for t, r in self._history if t >= obs.now - cfg.scale_down_stabilization_s]
        if obs.now - self._started_at < cfg.scale_down_stabilization_s:
            down_window.append(min(self._start_replicas, cfg.max_workers))
        down_target = max(down_window)

        if up_target > current:
            # raw is never below min_workers, so this branch also lifts a Deployment that sits below it.
            target = up_target
            if cfg.scale_up_max_step:
                target = max(min(target, current + cfg.scale_up_max_step), cfg.min_workers)
            return Decision(target, raw, f"scale up: load needs {up_target} workers")
        if current > cfg.max_workers:
            # Above max (max was lowered): shrink now, without window or cooldown, but only idle workers.
            target = max(cfg.max_workers, min(obs.busy_workers, current))
            return self._scaled_down(obs, target, raw, f"above max_workers ({cfg.max_workers})")
        if down_target < current:
            if (
                self._last_scale_down_at is not None
                and obs.now - self._last_scale_down_at < cfg.scale_down_cooldown_s
            ):
                wait = cfg.scale_down_cooldown_s - (obs.now - self._last_scale_down_at)
                return Decision(current, raw, f"hold: scale-down cooldown, {wait:.0f}s left")
            target = max(down_target, current - cfg.scale_down_max_step, cfg.min_workers)
            floor = min(obs.busy_workers, current)
            if target < floor:
                target = floor
                if target == current:
                    return Decision(current, raw, f"hold: all {floor} surplus workers are busy")
            return self._scaled_down(obs, target, raw, f"scale down: load needs {down_target} workers")
        if raw < current:
            return Decision(current, raw, f"hold: stabilizing scale-down (window max {down_target})")
        return Decision(current, raw, "hold: at target")

    def _scaled_down(self, obs: Observation, target: int, raw: int, reason: str) -> Decision:
        if target < obs.current_replicas:
            self._last_scale_down_at = obs.now
        return Decision(target, raw, reason)

    def forget_scale_down(self) -> None:
        """The controller could not carry out the last scale-down (drain aborted): no cooldown for it."""
        self._last_scale_down_at = None


@dataclass(frozen=True)
class WorkerLoad:
    name: str
    ready: bool
    task_start_times: tuple[float, ...]  # active + reserved tasks (reserved: start = now)


def deletion_cost(worker: WorkerLoad, now: float) -> int:
    """What removing this worker would destroy: 1 + seconds run, summed over its tasks (int32-clamped).

    An idle worker costs 0. A task that ran 10 minutes costs 601, ten tasks that ran 10 seconds cost
    110: a few long tasks outweigh many short ones, because restarting them wastes the most work.
    """
    cost = sum(1 + int(max(0.0, now - start)) for start in worker.task_start_times)
    return min(cost, INT32_MAX)


def choose_workers_to_remove(workers: Sequence[WorkerLoad], count: int, now: float) -> list[str]:
    """The `count` workers to remove: idle before busy; within each, not-ready first, then cheapest.

    Never a worker with a task while an idle one is left. Not-ready pods come first among equals because
    a ReplicaSet removes them before ready ones whatever their pod-deletion-cost.
    """
    if count <= 0:
        return []
    ranked = sorted(
        workers,
        key=lambda w: (bool(w.task_start_times), w.ready, deletion_cost(w, now), w.name),
    )
    return [w.name for w in ranked[:count]]


# --- which pods a ReplicaSet deletes ---------------------------------------------------------------------------------

# kubernetes/kubernetes pkg/controller/controller_utils.go, ActivePodsWithRanks.Less: "1. Unassigned < assigned",
# "2. PodPending < PodUnknown < PodRunning", "3. Not ready < ready", and only then "4. lower pod-deletion-cost <
# higher pod-deletion cost". A busy pod that loses on 1-3 is deleted before any pod we mark, whatever its cost.
_PHASE_ORDER = {"Pending": 0, "Unknown": 1, "Running": 2}
INT32_MIN = -(2**31)


@dataclass(frozen=True)
class RemovalCandidate:
    """A live (not terminating) pod of the worker ReplicaSet, as the ReplicaSet and Celery see it."""

    name: str
    assigned: bool  # has a node
    phase: str  # Pending, Unknown or Running
    ready: bool
    # Holds a task, or may (it did not answer Celery while its worker container may be running).
    busy: bool
    task_start_times: tuple[float, ...] = ()
    deletion_cost: int = 0  # its pod-deletion-cost annotation now


def replicaset_rank(pod: RemovalCandidate) -> tuple[int, int, int]:
    """Rules 1-3 of ActivePodsWithRanks as a sort key: smaller is deleted first."""
    return (int(pod.assigned), _PHASE_ORDER.get(pod.phase, _PHASE_ORDER["Running"]), int(pod.ready))


def _why(pod: RemovalCandidate) -> str:
    if not pod.assigned:
        return "unassigned"
    if pod.phase != "Running":
        return pod.phase
    return "not ready" if not pod.ready else "ready"


@dataclass(frozen=True)
class RemovalPlan:
    chosen: tuple[str, ...]  # drain these, give them the lowest cost, and lower replicas by their number
    reason: str = ""  # why fewer than asked (or none) were chosen


def plan_removal(pods: Sequence[RemovalCandidate], count: int, now: float, chosen_cost: int = INT32_MIN) -> RemovalPlan:
    """Up to `count` idle pods that the ReplicaSet, scaled down by their number, deletes and no other.

    The ReplicaSet deletes the first pods of its order; with ours marked at `chosen_cost`, that order is
    rules 1-3, then our mark. So the chosen pods must be a prefix of the pods sorted by rank: walk that order
    (idle before busy within a rank, cheapest first) and stop at the first busy pod. A busy pod ranked before
    every idle one (a busy pod that is not ready, Pending, Unknown or unassigned) blocks the scale-down.
    """
    if count <= 0 or not pods:
        return RemovalPlan((), "nothing to remove")

    def cost(p: RemovalCandidate) -> int:
        return deletion_cost(WorkerLoad(p.name, p.ready, p.task_start_times), now)

    ordered = sorted(pods, key=lambda p: (replicaset_rank(p), p.busy, cost(p), p.name))
    chosen: list[RemovalCandidate] = []
    for pod in ordered:
        if len(chosen) == count or pod.busy:
            break
        chosen.append(pod)
    if not chosen:
        first = ordered[0]
        if any(not p.busy for p in pods):
            return RemovalPlan((), f"busy worker {first.name} ({_why(first)}) would be deleted first by the ReplicaSet")
        return RemovalPlan((), "no idle worker")
    names = {p.name for p in chosen}
    last = max(replicaset_rank(p) for p in chosen)
    # Someone else's mark as low as ours ties with it: the ReplicaSet's choice would then be a coin toss.
    tied = [p.name for p in pods if p.name not in names and replicaset_rank(p) == last and p.deletion_cost <= chosen_cost]
    if tied:
        return RemovalPlan((), f"{', '.join(sorted(tied))} already carry the lowest pod-deletion-cost")
    reason = "" if len(chosen) == count or len(chosen) == len(ordered) else (
        f"stopped at busy worker {ordered[len(chosen)].name}"
    )
    return RemovalPlan(tuple(p.name for p in chosen), reason)
