"""The control loop: read signals, decide, scale up, or scale down without killing a running task.

One iteration (`run_once`), only while holding the leader lock:

1. look: the Deployment's count (with its resourceVersion), its own pods (foreign pods that only share the
   labels are left out), the DB's queued + running tasks per queue, and each worker's tasks and queues.
2. cleanup: while the ReplicaSet has not yet deleted what an earlier scale-down asked for (live pods >
   replicas) the marks stay (re-asserted if someone cleared them) and those workers stay cancelled. Once
   live <= replicas, marks left on pods that are not being deleted are cleared. A live worker consuming
   fewer of our queues than it should is deaf (a crashed drain, or Celery <= 5.6.3 dropping re-added queues
   on a broker reconnect, celery#10352): `add_consumer` heals it, every loop and right after the broker
   comes back.
3. decide with the policy. busy_workers counts workers that hold a task or may (did not answer).
4. up: set replicas. down, only when removing a pod is certain to remove the one we drained:
   * hold while removal is pending, during a rollout (more than one ReplicaSet: pod-deletion-cost only
     ranks pods within one ReplicaSet, KEP-2255), or while workers consume queues outside `queues`;
   * choose idle workers the ReplicaSet itself deletes first (policy.plan_removal): a busy pod that is not
     ready, Pending, Unknown or unassigned outranks any pod-deletion-cost, so it blocks the scale-down;
   * `cancel_consumer` on every queue each chosen worker consumes (its active_queues), confirmed; after
     `drain_settle_s` wait until they hold no task; abort (and restore exactly those queues) if the load
     rises, the lease is lost or the controller stops;
   * mark exactly the drained pods, then lower replicas with a conditional write (the resourceVersion read
     before the drain): 409 means someone else changed the count, so nothing is removed.

Every write (cancel/add consumer, mark, clear, replicas) first checks that the lease is still held; the lease
is renewed in the background every retry period like client-go's leaderelection (`LeaseKeeper`).

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

from airflow_on_k8s.autoscaler.actuators import Actuator, LeaderLock, ScaleConflict, WorkerPod, WorkerView
from airflow_on_k8s.autoscaler.actuators.events import DecisionEvents
from airflow_on_k8s.autoscaler.metrics import Health, Metrics
from airflow_on_k8s.autoscaler.policy import (
    Decision,
    Observation,
    QueueLoad,
    RemovalCandidate,
    ScalingPolicy,
    plan_removal,
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
    queues: tuple[str, ...] = ("default",)  # the queues every worker consumes (chart and autoscaler share them)
    poll_interval_s: float = 10.0
    drain_timeout_s: float = 300.0
    drain_poll_s: float = 2.0
    # After the cancel is confirmed, a message the worker fetched just before it may still be on its way to
    # `reserved`; wait this long before trusting "idle" (the race KEDA-style scale-downs lose).
    drain_settle_s: float = 2.0
    removal_wait_s: float = 30.0  # how long to watch removed workers start terminating
    hostname_template: str = "celery@{pod}"
    max_backoff_s: float = 120.0
    # After the broker comes back, look again this often for a while: reconnecting workers may come back deaf.
    recovery_poll_s: float = 2.0
    recovery_window_s: float = 30.0
    # Airflow's [core] parallelism x schedulers: the most tasks Airflow runs at once (0 = unknown).
    task_slot_cap: int = 0


@dataclass
class DrainResult:
    removed: list[str]
    aborted: str | None = None
    lowered: bool = False  # replicas were lowered (with or without removing a pod)


class LostLeadership(RuntimeError):
    """The lease is no longer held: this controller must not write anything."""


class LeaseKeeper:
    """Renews the leader lock every `lock.retry_period_s` from a daemon thread, whatever the loop is doing
    (client-go leaderelection `renew()`: `wait.PollImmediateUntil(RetryPeriod, tryAcquireOrRenew ...)`).
    The lock's own `held` turns false once renewals failed for its renew deadline."""

    def __init__(self, lock: LeaderLock, stop: threading.Event):
        self.lock = lock
        self.stop = stop
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.lock.try_acquire()
            except Exception:  # never let the renewer die; `held` expires on its own
                log.exception("lease renewal failed")
            self.stop.wait(self.lock.retry_period_s)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


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
        self.keeper: LeaseKeeper | None = None  # started by run(); run_once alone renews inline
        self._celery_down = False
        self._recovering_until = 0.0

    # --- leadership -----------------------------------------------------------------------------------------------

    def _renew(self) -> bool:
        if self.keeper is None or not self.keeper.running:
            self.lock.try_acquire()
        return self.lock.held

    def _act(self) -> None:
        """Call before every write: a controller that lost the lease must not change anything."""
        if not self.lock.held:
            raise LostLeadership("lease not held")

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
        self._surface_caps(loads)
        return loads, True

    def _surface_caps(self, loads: tuple[QueueLoad, ...]) -> None:
        """Two limits the count cannot show: Airflow's parallelism, and pod operators sitting in worker slots."""
        cap = self.config.task_slot_cap
        if cap:
            self.metrics.task_slot_cap.set(cap)
            total = sum(q.queued + q.running for q in loads)
            if total >= cap:
                log.warning("%d tasks queued or running reach Airflow's [core] parallelism x schedulers (%d): more "
                            "wait as `scheduled` and are not counted, so workers will not scale past them", total, cap)
        slots = getattr(self.load, "pod_operator_slots", None)
        if slots is None:
            return
        try:
            held = slots()
        except SignalError as err:
            self.metrics.errors.labels(err.source).inc()
            return
        self.metrics.kpo_slots.set(held)
        if held:
            log.info("%d running KubernetesPodOperator tasks hold worker slots while they wait for their pods "
                     "(deferrable=True frees them: [operators] default_deferrable)", held)

    def _celery_states(self, workers: Sequence[WorkerPod]) -> dict[str, WorkerState] | None:
        """Celery state per pod name for the live workers, or None when the broker is unreachable."""
        hosts = {self.hostnames.hostname(w.name): w.name for w in workers}
        try:
            states = self.celery.snapshot(hosts)
        except SignalError as err:
            self.metrics.errors.labels(err.source).inc()
            log.warning("celery unreachable, no scale-down until it is back: %s", err)
            self._celery_down = True
            return None
        if self._celery_down:
            # Workers reconnect on their own schedule and a re-added queue may be gone after it: look often.
            self._celery_down = False
            self._recovering_until = self._clock() + self.config.recovery_window_s
            log.info("broker reachable again; checking workers' queues every %ss for %ss",
                     self.config.recovery_poll_s, self.config.recovery_window_s)
        return {hosts[h]: s for h, s in states.items() if h in hosts}

    # --- cleanup --------------------------------------------------------------------------------------------------

    def cleanup(self, view: WorkerView, states: dict[str, WorkerState] | None) -> bool:
        """Marks and consumers as the state of the ReplicaSet requires; True if a worker's queues changed."""
        live = [w for w in view.workers if not w.terminating]
        removal_pending = len(live) > view.scale.replicas
        marked = [w for w in live if w.marked]
        if removal_pending:
            # The ReplicaSet has not acted on an earlier lowering yet: it will delete by its own order, so the
            # marks must stay (someone may have cleared the cost) and those workers must take no new task.
            lost = [w.name for w in marked if w.deletion_cost != -(2**31)]
            if lost:
                self._act()
                log.info("re-asserting removal marks on %s (removal pending)", lost)
                self.actuator.mark_for_removal(lost)
        elif marked:
            self._act()
            log.info("clearing removal marks left on %s", [w.name for w in marked])
            self.actuator.clear_marks([w.name for w in marked])
        if states is None:
            return False
        keep_cancelled = {w.name for w in marked} if removal_pending else set()
        wanted = set(self.config.queues)
        deaf = {
            name: sorted(wanted - set(s.queues))
            for name, s in states.items()
            if name not in keep_cancelled and not wanted <= set(s.queues)
        }
        self.metrics.deaf_workers.set(len(deaf))
        for queues in sorted({tuple(q) for q in deaf.values()}):
            hosts = [self.hostnames.hostname(n) for n, q in deaf.items() if tuple(q) == queues]
            self._act()
            log.warning("workers %s consume none of %s (deaf after a cancel or a broker reconnect): add_consumer",
                        hosts, list(queues))
            self.celery.add_consumer(hosts, queues)
            self.metrics.healed_workers.inc(len(hosts))
        return bool(deaf)

    # --- the loop -------------------------------------------------------------------------------------------------

    def run_once(self) -> Decision | None:
        """One iteration; returns the decision, or None when not leader or without any load reading yet."""
        self.health.beat()
        if not self._renew():
            self.metrics.leader.set(0)
            self.health.succeeded()  # a healthy standby
            return None
        self.metrics.leader.set(1)

        loads, fresh = self._read_load()
        try:
            view = self.actuator.observe()
        except Exception as err:
            self.metrics.errors.labels("actuator").inc()
            log.warning("cannot read workers: %s", err)
            raise
        if view.foreign:
            log.info("ignoring %d pods that match the worker labels but not the worker Deployment: %s",
                     len(view.foreign), view.foreign)
        self.metrics.foreign_pods.set(len(view.foreign))
        replicas = view.scale.replicas
        live = [w for w in view.workers if not w.terminating]
        states = self._celery_states(live)
        try:
            if self.cleanup(view, states):
                states = self._celery_states(live)  # what the healed workers hold now
        except LostLeadership:
            self.metrics.leader.set(0)
            return None
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
        elif decision.desired_replicas < replicas:
            held = self._scale_down_hold(view, live, states or {})
            if held is not None:
                reason, detail = held
                self.metrics.held_scale_downs.labels(reason).inc()
                self.policy.forget_scale_down()
                decision = Decision(replicas, decision.raw_desired, f"hold: {detail}")
        self.last_decision = decision
        self.metrics.desired.set(decision.desired_replicas)
        log.info("replicas %d -> %d (%s; load %s)", replicas, decision.desired_replicas, decision.reason,
                 ", ".join(f"{q.queue}={q.queued}q+{q.running}r" for q in loads) or "none")

        try:
            if decision.desired_replicas > replicas:
                self._act()
                self.actuator.set_replicas(decision.desired_replicas)
                self.metrics.scale_events.labels("up").inc()
            elif decision.desired_replicas < replicas:
                result = self.scale_down(decision.desired_replicas, view, states or {}, decision)
                self.events.scaled_down(replicas, result.removed, result.aborted, decision, loads, busy,
                                        lowered=result.lowered and not result.removed)
                if not result.lowered:
                    self.policy.forget_scale_down()
        except LostLeadership:
            self.metrics.leader.set(0)
            log.warning("lease lost mid-iteration; no further writes")
            return decision
        self.events.decided(replicas, decision, loads, busy)
        self.health.succeeded()
        return decision

    def _scale_down_hold(self, view: WorkerView, live: Sequence[WorkerPod],
                         states: dict[str, WorkerState]) -> tuple[str, str] | None:
        """(metric reason, text) when no pod can be removed safely now, else None."""
        if len(live) > view.scale.replicas:
            return "removal_pending", (f"removal pending ({len(live)} live pods > {view.scale.replicas} replicas); "
                                       "no new scale-down until the ReplicaSet has acted")
        hashes = {w.template_hash for w in live}
        if view.replica_sets > 1 or len(hashes) > 1:
            return "rollout", (f"rollout in progress ({max(view.replica_sets, len(hashes))} ReplicaSets); "
                               "pod-deletion-cost only ranks pods within one ReplicaSet")
        wanted = set(self.config.queues)
        odd = {n: s.queues for n, s in states.items() if set(s.queues) - wanted}
        self.metrics.queue_mismatch_workers.set(len(odd))
        if odd:
            return "queue_mismatch", (f"workers consume queues outside {sorted(wanted)}: {odd}; "
                                      "make the workers' queues and --queues the same")
        return None

    def _busy_workers(self, live: Sequence[WorkerPod], states: dict[str, WorkerState] | None) -> int:
        if states is None:
            return len(live)
        return sum(1 for w in live if self._may_hold_task(w, states))

    @staticmethod
    def _may_hold_task(w: WorkerPod, states: dict[str, WorkerState]) -> bool:
        if w.name in states:
            return states[w.name].busy
        # Did not answer: it may be running anything, unless none of its containers has started yet.
        return w.containers_started

    # --- safe scale-down ------------------------------------------------------------------------------------------

    def scale_down(self, desired: int, view: WorkerView, states: dict[str, WorkerState],
                   decision: Decision) -> DrainResult:
        live = [w for w in view.workers if not w.terminating]
        if len(live) < view.scale.replicas:
            # Pods the ReplicaSet has not created yet (quota, a lagging controller) go first: no pod is deleted.
            target = max(desired, len(live))
            self._act()
            try:
                self.actuator.remove([], target, view.scale)
            except ScaleConflict as err:
                self.metrics.held_scale_downs.labels("scale_conflict").inc()
                log.info("not lowered: %s", err)
                return DrainResult([], aborted="conflict")
            self.metrics.scale_events.labels("down").inc()
            return DrainResult([], lowered=True)
        now = self._wall()
        plan = plan_removal(
            [
                RemovalCandidate(
                    name=w.name,
                    assigned=w.node is not None,
                    phase=w.phase,
                    ready=w.ready,
                    busy=self._may_hold_task(w, states),
                    task_start_times=states[w.name].task_start_times(now) if w.name in states else (),
                    deletion_cost=w.deletion_cost,
                )
                for w in live
            ],
            len(live) - desired,
            now,
        )
        if plan.reason:
            log.info("scale-down: %s", plan.reason)
        if not plan.chosen:
            reason = "busy_pod_ranks_first" if "deleted first" in plan.reason else None
            if reason:
                self.metrics.held_scale_downs.labels(reason).inc()
            return DrainResult([], aborted=plan.reason)
        chosen = list(plan.chosen)
        # Drain exactly what each worker consumes now, and give back exactly that.
        queues_of = {n: states[n].queues for n in chosen if n in states}
        started = self._clock()
        self.metrics.drains.set(len(chosen))
        log.info("draining %s for removal", chosen)
        drained: dict[str, tuple[str, ...]] = {}
        try:
            for queues in sorted(set(queues_of.values())):
                hosts = [self.hostnames.hostname(n) for n, q in queues_of.items() if q == queues]
                if not queues:
                    continue  # consumes nothing already (deaf): nothing to cancel
                self._act()
                confirmed = self.celery.cancel_consumer(hosts, queues)
                for host in hosts:
                    drained[host] = queues
                unconfirmed = [h for h in hosts if h not in confirmed]
                if unconfirmed:
                    self._restore({h: queues for h in unconfirmed})
                    for h in unconfirmed:
                        drained.pop(h)
                    chosen = [n for n in chosen if self.hostnames.hostname(n) not in unconfirmed]
            abort_reason: list[str] = []

            def should_abort() -> bool:
                if self.stop.is_set():
                    abort_reason.append("shutting down")
                    return True
                if not self._renew():
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
            if abort_reason or not self._renew():
                reason = abort_reason[0] if abort_reason else "lost leadership"
                self.metrics.aborted_drains.labels(reason).inc()
                if reason == "lost leadership":
                    # The new leader heals cancelled consumers; a write from here could undo its drain.
                    log.info("scale-down aborted (%s); leaving %s to the new leader", reason, drain_hosts)
                else:
                    self._restore(drained)
                    log.info("scale-down aborted (%s); consumers restored on %s", reason, drain_hosts)
                return DrainResult([], aborted=reason)
            if pending:
                self._restore({h: q for h, q in drained.items() if h in pending})
                self.metrics.aborted_drains.labels("drain timeout").inc()
                log.info("not idle after %ss, kept: %s", self.config.drain_timeout_s, sorted(pending))
            removable = [n for n in chosen if n not in states or self.hostnames.hostname(n) in idle]
            if not removable:
                return DrainResult([], aborted="drain timeout")
            self.metrics.drain_seconds.observe(self._clock() - started)
            self._act()
            self.actuator.mark_for_removal(removable)
            try:
                self._act()
                self.actuator.remove(removable, len(live) - len(removable), view.scale)
            except ScaleConflict as err:
                # Someone else changed the count during the drain: the ReplicaSet's next move is unknown.
                self.metrics.held_scale_downs.labels("scale_conflict").inc()
                log.warning("scale-down abandoned: %s", err)
                self._act()
                self.actuator.clear_marks(removable)
                self._restore({h: q for h, q in drained.items() if self.hostnames.pod(h) in removable})
                return DrainResult([], aborted="conflict")
            self.metrics.scale_events.labels("down").inc()
            log.info("removed %s", removable)
            self._wait_terminating(removable)
            return DrainResult(removable, lowered=True)
        except SignalError as err:
            self.metrics.errors.labels(err.source).inc()
            log.warning("scale-down interrupted: %s", err)
            return DrainResult([], aborted=err.source)
        finally:
            self.metrics.drains.set(0)

    def _restore(self, queues_by_host: dict[str, tuple[str, ...]]) -> None:
        for queues in sorted(set(queues_by_host.values())):
            hosts = [h for h, q in queues_by_host.items() if q == queues]
            if hosts and queues:
                self._act()
                self.celery.add_consumer(hosts, queues)

    def _wait_terminating(self, names: list[str]) -> None:
        """Let the ReplicaSet start deleting them before the next loop looks; gives up early on stop or a lost
        lease (the next loop treats a late ReplicaSet as removal pending anyway)."""
        deadline = self._clock() + self.config.removal_wait_s
        while self._clock() < deadline and not self.stop.is_set() and self._renew():
            pending = {w.name for w in self.actuator.list_workers() if not w.terminating} & set(names)
            if not pending:
                return
            self.stop.wait(1.0)

    def run(self) -> None:
        """Loop until `self.stop` is set; failures back off exponentially up to max_backoff_s."""
        stop = self.stop
        failures = 0
        self.lock.try_acquire()  # the first loop already knows whether it leads
        self.keeper = LeaseKeeper(self.lock, stop).start()
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
                delay = min(delay, max(self.config.max_backoff_s, self.config.poll_interval_s))
                if not failures and self._clock() < self._recovering_until:
                    delay = min(delay, self.config.recovery_poll_s)
                stop.wait(delay)
        finally:
            stop.set()  # ends the keeper too
            self.keeper.join(timeout=5)
            self.lock.release()
            self.metrics.leader.set(0)
