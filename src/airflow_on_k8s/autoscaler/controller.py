"""The control loop: read signals, decide, scale up, or scale down without killing a running task.

One iteration (`run_once`), only while holding the leader lock:

1. cleanup: a worker still marked for removal but not being deleted (Kubernetes kept another pod, or a
   controller died mid-drain) gets its mark cleared; a worker that consumes none or only some of our queues
   (left cancelled by a crash) gets `add_consumer` for them. Runs every iteration, so a restart heals itself.
2. signals: queued + running tasks per queue from the Airflow DB; per-worker tasks from Celery.
3. decide with the policy. busy_workers counts ready workers that hold a task or did not answer Celery.
4. up: set replicas. down (safe):
   a. rank the idle workers (not-ready first) and pick the cheapest `n`;
   b. `cancel_consumer` on them, confirmed by their queue list, so they take no new task;
   c. after `drain_settle_s` (for a message fetched just before the cancel), wait until they hold no
      active or reserved task (a task may have slipped in before the cancel), at most `drain_timeout_s`;
      abort and `add_consumer` back if the load rises, the lock is lost or the controller stops;
   d. mark exactly the drained workers (pod-deletion-cost) and lower replicas by their number.

Fails safe: with the DB unreachable, decisions use the last good load and may only scale up; with Celery
unreachable nothing is known about busy workers, so there is no scale-down either. Every failure counts in
the errors metric; `run()` retries with exponential backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from airflow_on_k8s.autoscaler.actuators import Actuator, LeaderLock, WorkerPod
from airflow_on_k8s.autoscaler.actuators.events import DecisionEvents
from airflow_on_k8s.autoscaler.metrics import Health, Metrics
from airflow_on_k8s.autoscaler.policy import (
    Decision,
    Observation,
    QueueLoad,
    ScalingPolicy,
    WorkerLoad,
    choose_workers_to_remove,
    raw_desired_workers,
)
from airflow_on_k8s.autoscaler.signals import SignalError
from airflow_on_k8s.autoscaler.signals.celery_inspect import CeleryWorkers, HostnameTemplate, WorkerState

log = logging.getLogger("airflow_on_k8s.autoscaler")


class LoadSignal(Protocol):
    """What the controller needs from a load source (AirflowDbSignal satisfies it)."""

    source: str

    def read(self) -> tuple[QueueLoad, ...]: ...


@dataclass(frozen=True)
class ControllerConfig:
    queues: tuple[str, ...] = ("default",)  # queues the workers consume: drained and restored as a set
    poll_interval_s: float = 10.0
    drain_timeout_s: float = 300.0
    drain_poll_s: float = 2.0
    # After the cancel is confirmed, a message the worker fetched just before it may still be on its way to
    # `reserved`; wait this long before trusting "idle" (the race KEDA-style scale-downs lose).
    drain_settle_s: float = 2.0
    removal_wait_s: float = 30.0  # how long to watch removed workers start terminating
    hostname_template: str = "celery@{pod}"
    max_backoff_s: float = 120.0


@dataclass
class DrainResult:
    removed: list[str]
    aborted: str | None = None


class Controller:
    def __init__(
        self,
        policy: ScalingPolicy,
        load: LoadSignal,
        celery: CeleryWorkers,
        actuator: Actuator,
        lock: LeaderLock,
        config: ControllerConfig = ControllerConfig(),
        metrics: Metrics | None = None,
        health: Health | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
        events: DecisionEvents | None = None,
    ):
        self.policy = policy
        self.load = load
        self.celery = celery
        self.actuator = actuator
        self.lock = lock
        self.config = config
        self.metrics = metrics or Metrics()
        self.health = health or Health(liveness_timeout_s=float("inf"), readiness_timeout_s=float("inf"))
        self.hostnames = HostnameTemplate(config.hostname_template)
        self._clock = clock
        self._wall = wall_clock
        self.stop = stop or threading.Event()  # set on shutdown: a drain in progress is undone
        self._last_loads: tuple[QueueLoad, ...] | None = None
        self.last_decision: Decision | None = None
        self.events = events or DecisionEvents()  # Kubernetes Events (or the log) for each decision

    # --- signals --------------------------------------------------------------------------------------------------

    def _read_load(self) -> tuple[tuple[QueueLoad, ...] | None, bool]:
        """(loads, fresh): the DB's numbers, or the last good ones (fresh=False) while it is unreachable."""
        try:
            loads = self.load.read()
        except SignalError as err:
            self.metrics.errors.labels(err.source).inc()
            log.warning("load signal failed, no scale-down until it is back: %s", err)
            return self._last_loads, False
        self._last_loads = loads
        for q in loads:
            self.metrics.queued.labels(q.queue).set(q.queued)
            self.metrics.running.labels(q.queue).set(q.running)
        return loads, True

    def _celery_states(self, workers: Sequence[WorkerPod]) -> dict[str, WorkerState] | None:
        """Celery state per pod name for the live workers, or None when the broker is unreachable."""
        hosts = {self.hostnames.hostname(w.name): w.name for w in workers}
        try:
            states = self.celery.snapshot(hosts)
        except SignalError as err:
            self.metrics.errors.labels(err.source).inc()
            log.warning("celery unreachable, no scale-down until it is back: %s", err)
            return None
        return {hosts[h]: s for h, s in states.items() if h in hosts}

    # --- cleanup --------------------------------------------------------------------------------------------------

    def cleanup(self, workers: Sequence[WorkerPod], states: dict[str, WorkerState] | None) -> None:
        stale = [w.name for w in workers if w.marked and not w.terminating]
        if stale:
            log.info("clearing removal marks left on %s", stale)
            self.actuator.clear_marks(stale)
        if states is None:
            return
        wanted = set(self.config.queues)
        cancelled = [name for name, s in states.items() if not wanted <= set(s.queues)]
        cancelled = [n for n in cancelled if not any(w.name == n and w.terminating for w in workers)]
        self.metrics.deaf_workers.set(len(cancelled))
        if cancelled:
            log.info("restoring consumers on %s (left cancelled)", cancelled)
            self.celery.add_consumer([self.hostnames.hostname(n) for n in cancelled], self.config.queues)

    # --- the loop -------------------------------------------------------------------------------------------------

    def run_once(self) -> Decision | None:
        """One iteration; returns the decision, or None when not leader or without any load reading yet."""
        self.health.beat()
        if not self.lock.try_acquire():
            self.metrics.leader.set(0)
            self.health.succeeded()  # a healthy standby
            return None
        self.metrics.leader.set(1)

        loads, fresh = self._read_load()
        try:
            replicas = self.actuator.get_replicas()
            workers = self.actuator.list_workers()
        except Exception as err:
            self.metrics.errors.labels("actuator").inc()
            log.warning("cannot read workers: %s", err)
            raise
        live = [w for w in workers if not w.terminating]
        states = self._celery_states(live)
        self.cleanup(workers, states)
        if loads is None:
            log.warning("no load reading yet; holding at %d replicas", replicas)
            return None

        busy = self._busy_workers(live, states)
        obs = Observation(now=self._clock(), loads=loads, current_replicas=replicas, busy_workers=busy)
        decision = self.policy.decide(obs)
        self.metrics.raw_desired.set(decision.raw_desired)
        self.metrics.current.set(replicas)
        self.metrics.busy.set(busy)

        blind = "database" if not fresh else "celery" if states is None else None
        if blind and decision.desired_replicas <= replicas and decision.raw_desired < replicas:
            # Would (or might) scale down, but one of the two views is missing: hold.
            if decision.desired_replicas < replicas:
                self.policy.forget_scale_down()
            decision = Decision(replicas, decision.raw_desired, f"hold: {blind} unreachable, no scale-down")
        self.last_decision = decision
        self.metrics.desired.set(decision.desired_replicas)
        log.info("replicas %d -> %d (%s; load %s)", replicas, decision.desired_replicas, decision.reason,
                 ", ".join(f"{q.queue}={q.queued}q+{q.running}r" for q in loads) or "none")

        if decision.desired_replicas > replicas:
            self.actuator.set_replicas(decision.desired_replicas)
            self.metrics.scale_events.labels("up").inc()
        elif decision.desired_replicas < replicas:
            result = self.scale_down(replicas - decision.desired_replicas, live, states or {}, decision)
            self.events.scaled_down(replicas, result.removed, result.aborted, decision, loads, busy)
            if not result.removed:
                self.policy.forget_scale_down()
        self.events.decided(replicas, decision, loads, busy)
        self.health.succeeded()
        return decision

    def _busy_workers(self, live: Sequence[WorkerPod], states: dict[str, WorkerState] | None) -> int:
        if states is None:
            return len(live)
        # A ready worker that did not answer may be running anything: count it busy.
        return sum(1 for w in live if (w.name in states and states[w.name].busy) or (w.ready and w.name not in states))

    # --- safe scale-down ------------------------------------------------------------------------------------------

    def scale_down(self, count: int, live: Sequence[WorkerPod], states: dict[str, WorkerState],
                   decision: Decision) -> DrainResult:
        now = self._wall()
        candidates = [
            WorkerLoad(w.name, w.ready, states[w.name].task_start_times(now) if w.name in states else ())
            for w in live
            # Not-ready workers run no Celery consumer; ready ones must have told us what they hold.
            if w.name in states or not w.ready
        ]
        chosen = [n for n in choose_workers_to_remove(candidates, count, now)
                  if not (n in states and states[n].busy)]
        if not chosen:
            return DrainResult([], aborted="no idle worker")
        hosts = [self.hostnames.hostname(n) for n in chosen if n in states]
        started = self._clock()
        self.metrics.drains.set(len(chosen))
        log.info("draining %s for removal", chosen)
        try:
            confirmed = self.celery.cancel_consumer(hosts, self.config.queues) if hosts else set()
            unconfirmed = [h for h in hosts if h not in confirmed]
            if unconfirmed:
                self.celery.add_consumer(unconfirmed, self.config.queues)  # best effort; cleanup retries
                chosen = [n for n in chosen if n not in states or self.hostnames.hostname(n) in confirmed]
            abort_reason: list[str] = []

            def should_abort() -> bool:
                if self.stop.is_set():
                    abort_reason.append("shutting down")
                    return True
                if not self.lock.try_acquire():
                    abort_reason.append("lost leadership")
                    return True
                try:
                    loads = self.load.read()
                except SignalError as err:
                    self.metrics.errors.labels(err.source).inc()
                    abort_reason.append("database unreachable")
                    return True
                if raw_desired_workers(loads, self.policy.config) > decision.desired_replicas:
                    abort_reason.append("load rose")
                    return True
                return False

            drain_hosts = [self.hostnames.hostname(n) for n in chosen if n in states]
            if drain_hosts:
                log.info("consumers cancelled on %s; waiting for them to be idle", chosen)
                self.stop.wait(self.config.drain_settle_s)
            idle, pending = self.celery.wait_until_idle(
                drain_hosts, timeout_s=self.config.drain_timeout_s, poll_s=self.config.drain_poll_s,
                abort=should_abort,
            ) if drain_hosts else (set(), set())
            if abort_reason or not self.lock.try_acquire():
                reason = abort_reason[0] if abort_reason else "lost leadership"
                self.celery.add_consumer(drain_hosts, self.config.queues)
                self.metrics.aborted_drains.labels(reason).inc()
                log.info("scale-down aborted (%s); consumers restored on %s", reason, drain_hosts)
                return DrainResult([], aborted=reason)
            if pending:
                self.celery.add_consumer(sorted(pending), self.config.queues)
                self.metrics.aborted_drains.labels("drain timeout").inc()
                log.info("not idle after %ss, kept: %s", self.config.drain_timeout_s, sorted(pending))
            removable = [n for n in chosen if n not in states or self.hostnames.hostname(n) in idle]
            if not removable:
                return DrainResult([], aborted="drain timeout")
            self.metrics.drain_seconds.observe(self._clock() - started)
            self.actuator.mark_for_removal(removable)
            self.actuator.remove(removable)
            self.metrics.scale_events.labels("down").inc()
            log.info("removed %s", removable)
            self._wait_terminating(removable)
            return DrainResult(removable)
        except SignalError as err:
            self.metrics.errors.labels(err.source).inc()
            log.warning("scale-down interrupted: %s", err)
            return DrainResult([], aborted=err.source)
        finally:
            self.metrics.drains.set(0)

    def _wait_terminating(self, names: list[str]) -> None:
        """Let the actuator start deleting them before the next loop's cleanup looks for stale marks."""
        deadline = self._clock() + self.config.removal_wait_s
        while self._clock() < deadline:
            pending = {w.name for w in self.actuator.list_workers() if not w.terminating} & set(names)
            if not pending:
                return
            time.sleep(0.5)

    def run(self) -> None:
        """Loop until `self.stop` is set; failures back off exponentially up to max_backoff_s."""
        stop = self.stop
        failures = 0
        try:
            while not stop.is_set():
                try:
                    self.run_once()
                    failures = 0
                except Exception:
                    failures += 1
                    self.metrics.errors.labels("controller").inc()
                    log.exception("loop failed (%d in a row)", failures)
                delay = self.config.poll_interval_s * (2 ** min(failures, 10) if failures else 1)
                stop.wait(min(delay, max(self.config.max_backoff_s, self.config.poll_interval_s)))
        finally:
            self.lock.release()
            self.metrics.leader.set(0)
