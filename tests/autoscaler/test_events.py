"""Kubernetes Events for scaling decisions: the recorder's exact requests over the faked HTTP layer, its
client-go-style rate limiting (tools/record/events_cache.go), and the controller emitting them at each
decision (scale-up, hold, scale-down, aborted drain) with stand-ins for the signals and the actuator."""

from __future__ import annotations

import datetime
import threading

import pytest

from airflow_on_k8s.autoscaler.actuators import ScaleTarget, WorkerPod, WorkerView
from airflow_on_k8s.autoscaler.actuators.events import (
    AGGREGATE_INTERVAL_S,
    AGGREGATE_MAX_EVENTS,
    AGGREGATE_PREFIX,
    SPAM_BURST,
    SPAM_QPS,
    UID_REFRESH_S,
    DecisionEvents,
    KubernetesEventRecorder,
    LocalEventRecorder,
)
from airflow_on_k8s.autoscaler.controller import Controller, ControllerConfig
from airflow_on_k8s.autoscaler.policy import PolicyConfig, QueueLoad, ScalingPolicy
from airflow_on_k8s.autoscaler.signals import SignalError
from airflow_on_k8s.autoscaler.signals.celery_inspect import CeleryTask, WorkerState
from tests.autoscaler.fake_kube_events import DEPLOYMENT_UID, FakeKubeWithEvents

EVENTS = "/api/v1/namespaces/airflow/events"
T0 = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=datetime.timezone.utc)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> datetime.datetime:
        return T0 + datetime.timedelta(seconds=self.t - 1000.0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def kube() -> FakeKubeWithEvents:
    return FakeKubeWithEvents(replicas={"airflow-worker": 2})


@pytest.fixture
def recorder(kube, clock) -> KubernetesEventRecorder:
    return KubernetesEventRecorder(kube.api_client(), "airflow", "airflow-worker", host="autoscaler-abc",
                                   clock=clock, wall_clock=clock.wall)


def test_an_event_is_a_core_v1_event_on_the_deployment_with_its_uid(kube, recorder, clock):
    recorder.event("Normal", "ScaledUp", "replicas 1 -> 3: scale up (queued 5, running 1; desired 3, busy 1)")
    [event] = kube.events.values()
    assert event["involvedObject"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "airflow-worker",
                                       "namespace": "airflow", "uid": DEPLOYMENT_UID}
    assert (event["type"], event["reason"], event["count"]) == ("Normal", "ScaledUp", 1)
    assert event["message"].startswith("replicas 1 -> 3")
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-11-27T12:00:00Z"
    assert event["source"] == {"component": "worker-autoscaler", "host": "autoscaler-abc"}
    assert event["metadata"]["name"].startswith("airflow-worker.")
    # The uid comes from the scale subresource (already granted), read once, then again after a while (a
    # re-created Deployment has a new one).
    scale = ("GET", "/apis/apps/v1/namespaces/airflow/deployments/airflow-worker/scale")
    assert [(r.method, r.path) for r in kube.requests] == [scale, ("POST", EVENTS)]
    recorder.event("Normal", "ScaledUp", "another")
    assert [(r.method, r.path) for r in kube.requests][2:] == [("POST", EVENTS)]
    clock.t += UID_REFRESH_S + 1
    recorder.event("Normal", "ScaledUp", "much later")
    assert [(r.method, r.path) for r in kube.requests][3:] == [scale, ("POST", EVENTS)]


def test_the_same_event_again_bumps_the_count_of_the_first(kube, recorder, clock):
    for _ in range(3):
        recorder.event("Warning", "ScaleDownAborted", "kept 3 replicas: load rose")
        clock.t += 30
    [event] = kube.events.values()
    assert event["count"] == 3
    assert event["firstTimestamp"] == "2026-11-27T12:00:00Z" and event["lastTimestamp"] == "2026-11-27T12:01:00Z"
    writes = [(r.method, r.path.rsplit("/", 1)[-1]) for r in kube.requests if r.method != "GET"]
    name = event["metadata"]["name"]
    assert writes == [("POST", "events"), ("PATCH", name), ("PATCH", name)]


def test_many_messages_for_one_reason_are_combined_into_one_counted_event(kube, recorder, clock):
    # client-go: the 10th distinct message with the same reason within 10 minutes becomes an aggregate event.
    for i in range(AGGREGATE_MAX_EVENTS + 5):
        recorder.event("Normal", "ScaleHeld", f"kept 4 replicas: cooldown, {i}s left")
        clock.t += 1
    plain = [e for e in kube.events.values() if not e["message"].startswith(AGGREGATE_PREFIX)]
    [combined] = [e for e in kube.events.values() if e["message"].startswith(AGGREGATE_PREFIX)]
    assert len(plain) == AGGREGATE_MAX_EVENTS - 1
    assert combined["count"] == 6 and combined["message"] == AGGREGATE_PREFIX + "kept 4 replicas: cooldown, 14s left"
    # After the interval passes quietly, messages count as new again.
    clock.t += AGGREGATE_INTERVAL_S + 1
    recorder.event("Normal", "ScaleHeld", "kept 4 replicas: something else")
    assert any(e["message"] == "kept 4 replicas: something else" for e in kube.events.values())


def test_a_burst_is_rate_limited_per_object_then_refills_slowly(kube, recorder, clock):
    for i in range(SPAM_BURST + 10):
        recorder.event("Normal", "ScaledUp", f"replicas {i} -> {i + 1}")
    writes = [r for r in kube.requests if r.method != "GET"]
    assert len(writes) == SPAM_BURST
    clock.t += 1 / SPAM_QPS  # one token back after 5 minutes
    recorder.event("Normal", "ScaledUp", "after the pause")
    recorder.event("Normal", "ScaledUp", "one too many")
    messages = [r.body["message"] for r in kube.requests if r.method != "GET"][SPAM_BURST:]
    # (by then aggregated: the 10th distinct message for the reason already was)
    assert messages == [AGGREGATE_PREFIX + "after the pause"]


def test_an_expired_event_is_written_anew_and_an_unreachable_api_never_raises(kube, recorder, clock):
    recorder.event("Normal", "ScaledDown", "replicas 3 -> 2")
    kube.events.clear()  # the API server's event TTL (1 h) removed it
    recorder.event("Normal", "ScaledDown", "replicas 3 -> 2")
    [event] = kube.events.values()
    assert event["count"] == 1
    kube.down = True
    recorder.event("Normal", "ScaledDown", "replicas 2 -> 1")  # logged, not raised
    kube.down = False
    recorder.event("Normal", "ScaledDown", "replicas 2 -> 1")
    assert [e["count"] for e in kube.events.values() if e["message"] == "replicas 2 -> 1"] == [1]


# --- the controller's decision points -----------------------------------------------------------------------


class Load:
    source = "airflow_db"

    def __init__(self, queued=0, running=0):
        self.loads = (QueueLoad("default", queued, running),)
        self.fail = False

    def read(self):
        if self.fail:
            raise SignalError("airflow_db", "down")
        return self.loads


class Workers:
    """Actuator + Celery stand-in: pods w-1..w-n, all idle unless named in `busy`."""

    def __init__(self, replicas: int):
        self.replicas = replicas
        self.busy: set[str] = set()
        self.deaf: set[str] = set()  # consume none of the queues
        self.removed: list[str] = []
        self.load_during_drain: Load | None = None

    def names(self):
        return [f"w-{i}" for i in range(1, self.replicas + 1)]

    # Actuator
    def get_replicas(self):
        return self.replicas

    def set_replicas(self, n):
        self.replicas = n

    def list_workers(self):
        return [WorkerPod(n, ready=True) for n in self.names()]

    def observe(self):
        return WorkerView(ScaleTarget(self.replicas), self.list_workers())

    def mark_for_removal(self, names):
        pass

    def clear_marks(self, names):
        pass

    def remove(self, names, replicas=None, expected=None):
        self.removed += names
        self.replicas = self.replicas - len(names) if replicas is None else replicas

    # Celery
    def snapshot(self, hosts):
        return {h: WorkerState(h, (CeleryTask("t", "task", 0.0),) if hosts[h] in self.busy else (), (),
                               () if hosts[h] in self.deaf else ("default",)) for h in hosts}

    def cancel_consumer(self, hosts, queues):
        return set(hosts)

    def add_consumer(self, hosts, queues):
        pass

    def wait_until_idle(self, hosts, timeout_s, poll_s, abort):
        if self.load_during_drain is not None:
            self.load_during_drain.loads = (QueueLoad("default", 20, 0),)
        return (set(), set()) if abort() else (set(hosts), set())


class Lock:
    identity = "me"
    held = True
    retry_period_s = 1.0

    def try_acquire(self):
        return True

    def release(self):
        pass


def controller(load, workers, clock, policy) -> tuple[Controller, LocalEventRecorder]:
    local = LocalEventRecorder(clock)
    c = Controller(ScalingPolicy(policy), load, workers, workers, Lock(),
                   ControllerConfig(drain_settle_s=0, removal_wait_s=0), clock=clock, wall_clock=clock,
                   stop=threading.Event(), events=DecisionEvents(local))
    return c, local


def test_scale_up_and_scale_down_are_events_with_the_numbers_behind_them(clock):
    load, workers = Load(queued=5, running=1), Workers(1)
    c, local = controller(load, workers, clock, PolicyConfig(worker_concurrency=2, scale_down_stabilization_s=0,
                                                            scale_down_cooldown_s=0))
    c.run_once()
    [(type_, reason, message, _)] = local.events
    assert (type_, reason) == ("Normal", "ScaledUp")
    assert message.startswith("replicas 1 -> 3: scale up") and "queued 5, running 1" in message
    assert "desired 3, busy 0" in message
    load.loads = (QueueLoad("default", 0, 3),)
    workers.busy = {"w-1", "w-2"}
    clock.t += 10
    c.run_once()
    type_, reason, message, _ = local.events[-1]
    assert (type_, reason) == ("Normal", "ScaledDown")
    assert message.startswith("replicas 3 -> 2: removed drained w-3") and "running 3" in message


def test_an_aborted_drain_is_a_warning_with_its_reason(clock):
    load, workers = Load(), Workers(2)
    workers.load_during_drain = load
    c, local = controller(load, workers, clock, PolicyConfig(worker_concurrency=2, scale_down_stabilization_s=0,
                                                            scale_down_cooldown_s=0))
    c.run_once()
    assert workers.replicas == 2
    [(type_, reason, message, _)] = local.events
    assert (type_, reason) == ("Warning", "ScaleDownAborted")
    assert message.startswith("kept 2 replicas: load rose")


def test_a_hold_is_told_once_per_situation_not_every_poll(clock):
    load, workers = Load(), Workers(3)
    c, local = controller(load, workers, clock, PolicyConfig(worker_concurrency=2, scale_down_stabilization_s=300))
    for _ in range(5):
        c.run_once()
        clock.t += 10
    [(type_, reason, message, _)] = local.events
    assert (type_, reason) == ("Normal", "ScaleHeld")
    assert message.startswith("kept 3 replicas, load needs 0: hold: stabilizing scale-down")
    load.fail = True  # a different situation: the database is unreachable
    c.run_once()
    assert local.events[-1][2].startswith("kept 3 replicas, load needs 0: hold: database unreachable")
    assert len(local.events) == 2


def test_the_controllers_decisions_reach_the_api_server_as_events_on_the_deployment(kube, clock):
    load, workers = Load(queued=3), Workers(1)
    recorder = KubernetesEventRecorder(kube.api_client(), "airflow", "airflow-worker", host="autoscaler-0",
                                       clock=clock, wall_clock=clock.wall)
    c = Controller(ScalingPolicy(PolicyConfig(worker_concurrency=2)), load, workers, workers, Lock(),
                   ControllerConfig(drain_settle_s=0, removal_wait_s=0), clock=clock, wall_clock=clock,
                   stop=threading.Event(), events=DecisionEvents(recorder))
    c.run_once()
    [event] = kube.events.values()
    assert (event["reason"], event["involvedObject"]["name"], event["involvedObject"]["uid"]) == (
        "ScaledUp", "airflow-worker", DEPLOYMENT_UID)
    assert "queued 3, running 0" in event["message"]
    kube.down = True  # the API server is unreachable: the decision stands, the event is only logged
    load.loads = (QueueLoad("default", 7, 0),)
    clock.t += 10
    assert c.run_once().desired_replicas == 4 and workers.replicas == 4


def test_replicas_lowered_without_a_named_pod_are_a_scale_down_event(clock):
    local = LocalEventRecorder(clock)
    events = DecisionEvents(local)
    from airflow_on_k8s.autoscaler.policy import Decision

    decision = Decision(2, 2, "scale down: load needs 2 workers")
    events.scaled_down(3, [], None, decision, (QueueLoad("default", 0, 3),), 2, lowered=True)
    events.scaled_down(3, [], None, decision, (QueueLoad("default", 0, 3),), 2)  # nothing happened: no event
    assert [(r, m.split(":")[0]) for _, r, m, _ in local.events] == [("ScaledDown", "replicas 3 -> 2")]


def test_workers_consuming_none_of_their_queues_are_counted_for_the_alert(clock):
    load, workers = Load(queued=2), Workers(2)
    workers.deaf = {"w-2"}
    c, _ = controller(load, workers, clock, PolicyConfig(worker_concurrency=2))
    c.run_once()
    assert c.metrics.deaf_workers._value.get() == 1
    workers.deaf = set()
    clock.t += 10
    c.run_once()
    assert c.metrics.deaf_workers._value.get() == 0
