"""Kubernetes Events for every scaling decision, on the worker Deployment, rate-limited like the HPA's.

`kubectl describe deployment airflow-worker` then says why the workers scaled (or did not):

    Normal   ScaledUp          replicas 1 -> 4: load needs 4 workers (queued 6, running 2; desired 4, busy 1)
    Warning  ScaleDownAborted  kept 4 replicas: load rose (queued 3, running 2; desired 3, busy 2)

API: core/v1 Events (what client-go's record.EventRecorder writes for the HPA and every built-in controller),
not events.k8s.io/v1: `kubectl describe` renders core/v1's `count`, `firstTimestamp` and `lastTimestamp` as
"(x5 over 10m)", and the dedup below bumps `count` the way client-go does. Both APIs read and write the same
stored objects, so `kubectl events` shows them too. `involvedObject` carries the Deployment's uid, because
`kubectl describe` searches events by `involvedObject.uid` (it is read from the scale subresource the
autoscaler may already get; no extra RBAC). RBAC: `events` create, patch (core group) in the namespace.

Rate limiting: `EventCorrelator` follows client-go's tools/record/events_cache.go (`NewEventCorrelator`):
* a token bucket per involved object: burst 25, refilled at 1 event / 300 s (`defaultSpamBurst`,
  `defaultSpamQPS`); an event over budget is dropped;
* aggregation: the 10th distinct message with the same object + type + reason within 600 s
  (`defaultAggregateMaxEvents`, `defaultAggregateIntervalInSeconds`) turns into one event with the message
  "(combined from similar events): <message>" whose later occurrences only bump its count;
* dedup: an event identical to one already written (same object, type, reason, message) is a PATCH of that
  event's `count` and `lastTimestamp`, not a new object (`eventLogger.eventObserve`).
Events are best effort, as in client-go: a failed write is logged and never stops the control loop.

`DecisionEvents` maps the controller's decisions to events (and emits a hold only when the hold situation
changes, so a scale-down held for minutes does not spend the budget a later scale-up needs);
`LocalEventRecorder` is the local-process actuator's variant: same correlation, written to the log.
"""

from __future__ import annotations

import datetime
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("airflow_on_k8s.autoscaler.events")

COMPONENT = "worker-autoscaler"  # source.component / reportingComponent
NORMAL, WARNING = "Normal", "Warning"
MAX_MESSAGE = 1024
UID_REFRESH_S = 600.0

# client-go tools/record/events_cache.go defaults.
LRU_CACHE_ENTRIES = 4096  # maxLruCacheEntries
AGGREGATE_MAX_EVENTS = 10  # defaultAggregateMaxEvents
AGGREGATE_INTERVAL_S = 600  # defaultAggregateIntervalInSeconds
SPAM_BURST = 25  # defaultSpamBurst
SPAM_QPS = 1.0 / 300.0  # defaultSpamQPS
AGGREGATE_PREFIX = "(combined from similar events): "  # EventAggregatorByReasonMessageFunc


class _Lru(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_(self, key):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return None

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class _TokenBucket:
    """flowcontrol.NewTokenBucketRateLimiter's TryAccept: starts full, refills at qps up to burst."""

    def __init__(self, qps: float, burst: int, now: float):
        self.qps, self.burst, self.tokens, self.at = qps, burst, float(burst), now

    def try_accept(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.qps)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass(frozen=True)
class Correlated:
    """What to write for one event: skip it, create it (count 1) or bump the count of an existing one."""

    skip: bool
    key: str  # the dedup key of the event to write (the aggregate's key once aggregated)
    message: str
    count: int = 1  # the count after this occurrence; > 1 means PATCH the event written under `key`
    name: str | None = None  # the existing event's name when count > 1


class EventCorrelator:
    """Filter (spam), aggregate and dedup events about objects, as client-go's EventCorrelator does."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, burst: int = SPAM_BURST,
                 qps: float = SPAM_QPS, max_events: int = AGGREGATE_MAX_EVENTS,
                 max_interval_s: float = AGGREGATE_INTERVAL_S, cache_size: int = LRU_CACHE_ENTRIES):
        self._clock = clock
        self.burst, self.qps = burst, qps
        self.max_events, self.max_interval_s = max_events, max_interval_s
        self._spam = _Lru(cache_size)  # object -> token bucket
        self._aggregate = _Lru(cache_size)  # object+type+reason -> (distinct messages, last time)
        self._seen = _Lru(cache_size)  # object+type+reason+message -> (count, event name)

    def correlate(self, obj: str, type_: str, reason: str, message: str) -> Correlated:
        now = self._clock()
        bucket = self._spam.get_(obj) or _TokenBucket(self.qps, self.burst, now)
        accepted = bucket.try_accept(now)
        self._spam.put(obj, bucket)
        if not accepted:
            return Correlated(skip=True, key="", message=message)

        aggregate_key = "\0".join((obj, type_, reason))
        messages, last = self._aggregate.get_(aggregate_key) or (set(), None)
        if last is None or now - last > self.max_interval_s:
            messages = set()
        messages.add(message)
        self._aggregate.put(aggregate_key, (messages, now))
        key = "\0".join((obj, type_, reason, message))
        if len(messages) >= self.max_events:
            messages.pop()  # keep the set at most max_events large, as client-go's PopAny
            key, message = aggregate_key, AGGREGATE_PREFIX + message
        count, name = self._seen.get_(key) or (0, None)
        return Correlated(skip=False, key=key, message=message, count=count + 1, name=name)

    def written(self, result: Correlated, name: str) -> None:
        """Remember an event the server accepted, so its next occurrence bumps its count."""
        self._seen.put(result.key, (result.count, name))

    def forget(self, result: Correlated) -> None:
        self._seen.pop(result.key, None)


class EventRecorder(Protocol):
    def event(self, type_: str, reason: str, message: str) -> None:
        """Record that `reason` happened to the worker Deployment (best effort, never raises)."""


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class KubernetesEventRecorder:
    """core/v1 Events on the worker Deployment through the official `kubernetes` client."""

    def __init__(self, api_client: Any, namespace: str, deployment: str, *, host: str = "",
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], datetime.datetime] = _utcnow,
                 correlator: EventCorrelator | None = None, request_timeout_s: float = 5):
        from kubernetes import client

        self.namespace, self.deployment, self.host = namespace, deployment, host
        self._core = client.CoreV1Api(api_client)
        self._apps = client.AppsV1Api(api_client)
        self._wall = wall_clock
        self.correlator = correlator or EventCorrelator(clock)
        self.timeout = request_timeout_s
        self._clock = clock
        self._uid: str | None = None
        self._uid_read_at = float("-inf")

    def _deployment_uid(self) -> str | None:
        # The Scale object's metadata is the Deployment's, uid included (kubernetes
        # pkg/registry/apps/deployment/storage/storage.go `scaleFromDeployment`): deployments/scale get is
        # already granted for the actuator, so no `deployments get` is needed. Read again now and then: a
        # Deployment deleted and re-created (helm uninstall/install) has a new uid.
        if self._uid is None or self._clock() - self._uid_read_at > UID_REFRESH_S:
            try:
                scale = self._apps.read_namespaced_deployment_scale(
                    self.deployment, self.namespace, _request_timeout=self.timeout)
                self._uid, self._uid_read_at = scale.metadata.uid or None, self._clock()
            except Exception as err:  # noqa: BLE001 (events are best effort)
                log.warning("cannot read the uid of deployment %s: %s", self.deployment, err)
        return self._uid

    def event(self, type_: str, reason: str, message: str) -> None:
        result = self.correlator.correlate(f"Deployment/{self.namespace}/{self.deployment}", type_, reason, message)
        if result.skip:
            log.info("event dropped by the rate limit: %s %s", reason, message)
            return
        now = _rfc3339(self._wall())
        try:
            if result.count > 1 and result.name:
                try:
                    self._core.patch_namespaced_event(
                        result.name, self.namespace,
                        {"count": result.count, "lastTimestamp": now, "message": result.message},
                        _content_type="application/merge-patch+json", _request_timeout=self.timeout,
                    )
                    self.correlator.written(result, result.name)
                    return
                except Exception as err:  # noqa: BLE001
                    # Gone (expired after the API server's event TTL) or unreadable: write a new one, as
                    # client-go's recordToSink does after a failed patch.
                    if getattr(err, "status", None) != 404:
                        raise
                    result = Correlated(False, result.key, result.message)
            name = f"{self.deployment}.{time.time_ns():x}"  # client-go: "<object>.<unix nanos in hex>"
            body = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": self.namespace},
                "involvedObject": {
                    "apiVersion": "apps/v1", "kind": "Deployment", "name": self.deployment,
                    "namespace": self.namespace, **({"uid": uid} if (uid := self._deployment_uid()) else {}),
                },
                "type": type_,
                "reason": reason,
                "message": result.message,
                "count": 1,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "source": {"component": COMPONENT, **({"host": self.host} if self.host else {})},
                "reportingComponent": COMPONENT,
                "reportingInstance": self.host or COMPONENT,
            }
            self._core.create_namespaced_event(self.namespace, body, _request_timeout=self.timeout)
            self.correlator.written(result, name)
        except Exception as err:  # noqa: BLE001 (never let an event stop a scaling action)
            self.correlator.forget(result)
            log.warning("could not record event %s (%s): %s", reason, result.message, err)


class LocalEventRecorder:
    """The local-process actuator's events: the same correlation, written to the log and kept in memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, keep: int = 1000):
        self.correlator = EventCorrelator(clock)
        self.events: deque[tuple[str, str, str, int]] = deque(maxlen=keep)  # (type, reason, message, count)

    def event(self, type_: str, reason: str, message: str) -> None:
        result = self.correlator.correlate("workers", type_, reason, message)
        if result.skip:
            return
        self.correlator.written(result, result.key)
        self.events.append((type_, reason, result.message, result.count))
        log.log(logging.WARNING if type_ == WARNING else logging.INFO, "event %s: %s (x%d)", reason, result.message,
                result.count)


def _numbers(loads: Sequence[Any], desired: int, busy: int) -> str:
    queued = sum(q.queued for q in loads)
    running = sum(q.running for q in loads)
    per_queue = ", ".join(f"{q.queue}={q.queued}q+{q.running}r" for q in loads)
    return f"queued {queued}, running {running}" + (f" [{per_queue}]" if per_queue else "") + \
        f"; desired {desired}, busy {busy}"


class DecisionEvents:
    """The controller's decisions as events: ScaledUp, ScaledDown, ScaleDownAborted, ScaleHeld."""

    def __init__(self, recorder: EventRecorder | None = None):
        self.recorder = recorder
        self._last_hold: tuple | None = None

    def _emit(self, type_: str, reason: str, message: str) -> None:
        if self.recorder is not None:
            # Keep a message (which lists queues and pods) within what `kubectl describe` shows in one line and
            # well under the API server's 1 MiB object limit.
            self.recorder.event(type_, reason, message if len(message) <= MAX_MESSAGE else
                                message[:MAX_MESSAGE - 3] + "...")

    def decided(self, current: int, decision: Any, loads: Sequence[Any], busy: int) -> None:
        """After the policy decided (and the replicas were raised, for a scale-up)."""
        numbers = _numbers(loads, decision.desired_replicas, busy)
        if decision.desired_replicas > current:
            self._last_hold = None
            self._emit(NORMAL, "ScaledUp", f"replicas {current} -> {decision.desired_replicas}: "
                                           f"{decision.reason} ({numbers})")
        elif decision.desired_replicas == current and decision.raw_desired != current and \
                decision.reason.startswith("hold"):
            # The load asks for another count and we hold: say so once per situation (the reason without its
            # countdown, and the counts), not every poll.
            situation = (re.sub(r"\d+", "#", decision.reason), current, decision.raw_desired)
            if situation != self._last_hold:
                self._last_hold = situation
                self._emit(NORMAL, "ScaleHeld", f"kept {current} replicas, load needs {decision.raw_desired}: "
                                                f"{decision.reason} ({numbers})")
        elif decision.desired_replicas == current:
            self._last_hold = None

    def scaled_down(self, current: int, removed: Sequence[str], aborted: str | None, decision: Any,
                    loads: Sequence[Any], busy: int, lowered: bool = False) -> None:
        """After a scale-down attempt: the workers removed (or replicas `lowered` without naming a pod, e.g.
        surplus replicas whose pods never started), or why none was."""
        self._last_hold = None
        numbers = _numbers(loads, decision.desired_replicas, busy)
        if removed:
            self._emit(NORMAL, "ScaledDown", f"replicas {current} -> {current - len(removed)}: removed drained "
                                             f"{', '.join(removed)}; {decision.reason} ({numbers})")
        elif lowered:
            self._emit(NORMAL, "ScaledDown", f"replicas {current} -> {decision.desired_replicas}: "
                                             f"{decision.reason} ({numbers})")
        elif aborted:
            self._emit(WARNING, "ScaleDownAborted", f"kept {current} replicas: {aborted} ({numbers})")
