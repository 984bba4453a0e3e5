"""The control loop against real PostgreSQL (Airflow schema), real Redis and real Celery worker processes.

Load comes from task-instance rows written by Airflow and moved between states like the scheduler does;
workers are plain Celery workers started by the local-process actuator.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import urllib.request
from urllib.error import HTTPError

import pytest

from tests.autoscaler.conftest import FAST, load, queues_of
from tests.autoscaler.fake_kube import FakeKube
from tests.autoscaler.helpers import TaskSender, wait_for, wait_workers_up
from airflow_on_k8s.autoscaler.signals.celery_inspect import CeleryWorkers
from airflow_on_k8s.autoscaler.actuators.kubernetes import DELETION_COST, MARKER, KubernetesDeploymentActuator, KubernetesLease
from airflow_on_k8s.autoscaler.actuators.local_processes import FileLeaderLock
from airflow_on_k8s.autoscaler.controller import Controller, ControllerConfig
from airflow_on_k8s.autoscaler.metrics import Health, Metrics, MetricsServer
from airflow_on_k8s.autoscaler.policy import Decision, PolicyConfig, ScalingPolicy
from airflow_on_k8s.autoscaler.signals.airflow_db import AirflowDbSignal, ExecutorFilter

class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_scales_up_to_the_need_then_removes_only_the_idle_worker(make_controller, celery_env, pg_server, load_db):
    controller = make_controller()
    load(pg_server, load_db, queued=3)
    decision = controller.run_once()
    assert (decision.desired_replicas, decision.raw_desired) == (2, 2)
    a, b = celery_env.actuator.alive()
    wait_workers_up(celery_env.control, [a, b])
    running = celery_env.sender.sleep(8)
    busy = wait_for(lambda: next((n for n in (a, b) if celery_env.control.snapshot([f"celery@{n}"])[f"celery@{n}"].busy), None),
                    10, "the task to start")
    idle = b if busy == a else a
    load(pg_server, load_db, running=1)
    decision = controller.run_once()
    assert decision.desired_replicas == 1
    assert celery_env.actuator.wait_gone([idle], timeout_s=20)
    assert celery_env.actuator.alive() == [busy]
    assert running.get(timeout=20) == f"celery@{busy}"  # the running task was never touched
    assert controller.metrics.scale_events.labels("down")._value.get() == 1
    assert controller.metrics.drain_seconds._sum.get() >= 0


def test_drain_is_undone_when_a_task_slips_in_and_load_rises_or_it_times_out(make_controller, celery_env, pg_server, load_db):
    controller = make_controller(drain_timeout_s=2)
    [w] = celery_env.start_workers(1)
    view = celery_env.actuator.observe()
    assert controller.lock.try_acquire()  # only a leader drains
    stale = {w: celery_env.control.snapshot([f"celery@{w}"])[f"celery@{w}"]}  # idle when looked at...
    assert not stale[w].busy
    task = celery_env.sender.sleep(6)  # ...but a task lands right after (the race KEDA-style scalers lose)
    wait_for(lambda: celery_env.control.snapshot([f"celery@{w}"])[f"celery@{w}"].busy, 10, "task on the worker")

    # Timeout: the worker is still busy after 2 s, so it is kept and consumes again.
    result = controller.scale_down(0, view, stale, Decision(0, 0, "test"))
    assert (result.removed, result.aborted) == ([], "drain timeout")
    assert queues_of(celery_env, w) == ("default",)

    # Load rises during the drain: abort at once, consumer restored.
    controller.config = ControllerConfig(queues=("default",), drain_timeout_s=30, drain_poll_s=0.3, drain_settle_s=0.5)
    threading.Timer(1.0, load, args=(pg_server, load_db), kwargs={"running": 1}).start()
    started = time.monotonic()
    result = controller.scale_down(0, view, stale, Decision(0, 0, "test"))
    assert (result.removed, result.aborted) == ([], "load rose")
    assert time.monotonic() - started < 10
    assert queues_of(celery_env, w) == ("default",)
    assert celery_env.actuator.alive() == [w]
    assert task.get(timeout=20) == f"celery@{w}"
    assert controller.metrics.aborted_drains.labels("load rose")._value.get() == 1


def test_cleanup_restores_cancelled_consumers_and_clears_stale_marks(make_controller, celery_env, pg_server, load_db):
    controller = make_controller(policy=PolicyConfig(min_workers=1, max_workers=4, worker_concurrency=2))
    [w] = celery_env.start_workers(1)
    # What a controller killed mid-drain leaves behind:
    celery_env.control.cancel_consumer([f"celery@{w}"], ["default"])
    celery_env.actuator.mark_for_removal([w])
    assert queues_of(celery_env, w) == ()
    decision = controller.run_once()
    assert decision.desired_replicas == 1
    assert queues_of(celery_env, w) == ("default",)
    assert [x.marked for x in celery_env.actuator.list_workers()] == [False]


def test_no_scale_down_while_the_database_is_down_but_scale_up_on_the_last_good_load(
    make_controller, celery_env, pg_server, load_db
):
    clock = Clock()
    controller = make_controller(policy=PolicyConfig(min_workers=0, max_workers=4, worker_concurrency=2,
                                                     scale_down_stabilization_s=30, scale_down_cooldown_s=0), clock=clock)
    load(pg_server, load_db, queued=3)
    assert controller.run_once().desired_replicas == 2
    names = celery_env.actuator.alive()
    wait_workers_up(celery_env.control, names)
    load(pg_server, load_db)  # the tasks are done
    clock.t = 5
    assert controller.run_once().desired_replicas == 2  # inside the down window
    pg_server.stop()
    try:
        celery_env.actuator.kill(names[0])  # and a worker crashes while the DB is down
        clock.t = 60
        decision = controller.run_once()
        # The last good reading (no tasks) asks for 0 workers, but with the DB down nothing is removed.
        assert decision.reason == "hold: database unreachable, no scale-down"
        assert controller.metrics.errors.labels("airflow_db")._value.get() >= 1
        assert celery_env.actuator.alive() == [names[1]]
    finally:
        pg_server.start()
    clock.t = 100
    decision = controller.run_once()
    assert decision.desired_replicas == 0
    assert celery_env.actuator.wait_gone(names, 20)


def test_last_good_load_still_scales_up_while_the_database_is_down(make_controller, celery_env, pg_server, load_db):
    controller = make_controller()
    load(pg_server, load_db, queued=4)
    assert controller.run_once().desired_replicas == 2
    first, second = celery_env.actuator.alive()
    pg_server.stop()
    try:
        celery_env.actuator.kill(first)
        decision = controller.run_once()
        assert decision.desired_replicas == 2 and decision.reason.startswith("scale up")
        assert len(celery_env.actuator.alive()) == 2
    finally:
        pg_server.start()


def test_no_scale_down_while_the_broker_is_down(make_controller, celery_env, redis, pg_server, load_db):
    controller = make_controller()
    [w] = celery_env.start_workers(1)
    redis.stop()
    try:
        decision = controller.run_once()
        assert decision.reason == "hold: celery unreachable, no scale-down"
        assert controller.metrics.errors.labels("celery")._value.get() >= 1
        assert celery_env.actuator.alive() == [w]
    finally:
        redis.start()
    wait_workers_up(celery_env.control, [w])  # the worker reconnects by itself
    assert controller.run_once().desired_replicas == 0
    assert celery_env.actuator.wait_gone([w], 20)


def test_only_the_lock_holder_acts(make_controller, celery_env, pg_server, load_db):
    lock_path = celery_env.state_dir / "leader.lock"
    first = make_controller(lock=FileLeaderLock(lock_path, "first"))
    second = make_controller(lock=FileLeaderLock(lock_path, "second"))
    load(pg_server, load_db, queued=2)
    assert first.run_once().desired_replicas == 1
    load(pg_server, load_db, queued=6)
    assert second.run_once() is None  # standby: no decision, no action
    assert second.metrics.leader._value.get() == 0 and first.metrics.leader._value.get() == 1
    assert len(celery_env.actuator.alive()) == 1
    first.lock.release()
    assert second.run_once().desired_replicas == 3
    assert len(celery_env.actuator.alive()) == 3


def test_kubernetes_path_cancels_drains_then_marks_and_lowers_replicas(make_controller, celery_env, pg_server, load_db):
    """Real Celery workers named like pods, the Deployment, its ReplicaSet and pods in the fake API server."""
    a, b = celery_env.start_workers(2)
    kube = FakeKube()
    kube.deployment("airflow-worker", replicas=2)
    kube.worker_pods("airflow-worker", [a, b])
    api = kube.api_client()
    controller = make_controller(
        actuator=KubernetesDeploymentActuator(api, "airflow", "airflow-worker", "component=worker"),
        lock=KubernetesLease(api, "airflow", "worker-autoscaler", "controller-0"),
        removal_wait_s=1,
    )
    task = celery_env.sender.sleep(6)
    busy = wait_for(lambda: next((n for n in (a, b) if celery_env.control.snapshot([f"celery@{n}"])[f"celery@{n}"].busy), None),
                    10, "task started")
    idle = b if busy == a else a
    load(pg_server, load_db, running=1)
    assert controller.run_once().desired_replicas == 1
    writes = [(m, p.rsplit("/", 1)[-1], body) for m, p, body in kube.writes() if "leases" not in p]
    assert [(m, name) for m, name, _ in writes] == [("PATCH", idle), ("PUT", "scale")]
    assert writes[0][2] == {"metadata": {"annotations": {DELETION_COST: "-2147483648", MARKER: "true"}}}
    # A replace of the scale subresource, conditional on the resourceVersion read before the drain.
    assert writes[1][2]["spec"] == {"replicas": 1} and writes[1][2]["metadata"]["resourceVersion"]
    assert queues_of(celery_env, busy) == ("default",)
    assert kube.deleted == [idle]  # the ReplicaSet deleted the marked pod
    # Once the pod is gone, nothing is left to clean up.
    del kube.pods[idle]
    kube.requests.clear()
    assert controller.run_once().desired_replicas == 1
    assert not [w for w in kube.writes() if "leases" not in w[1]]
    assert task.get(timeout=20) == f"celery@{busy}"


def test_metrics_and_probes_over_http(make_controller, celery_env, pg_server, load_db):
    controller = make_controller()
    server = MetricsServer(controller.metrics, controller.health, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with pytest.raises(HTTPError) as err:
            urllib.request.urlopen(base + "/readyz")
        assert err.value.code == 503  # no loop done yet
        assert urllib.request.urlopen(base + "/healthz").status == 200
        load(pg_server, load_db, queued=3, running=2)
        controller.run_once()
        assert urllib.request.urlopen(base + "/readyz").status == 200
        text = urllib.request.urlopen(base + "/metrics").read().decode()
        assert 'airflow_worker_autoscaler_queued_tasks{queue="default"} 3.0' in text
        assert 'airflow_worker_autoscaler_running_tasks{queue="default"} 2.0' in text
        assert "airflow_worker_autoscaler_desired_replicas 3.0" in text
        assert "airflow_worker_autoscaler_current_replicas 0.0" in text
        assert 'airflow_worker_autoscaler_scale_events_total{direction="up"} 1.0' in text
        assert "airflow_worker_autoscaler_leader 1.0" in text
    finally:
        server.stop()


def test_a_worker_left_deaf_by_a_broker_restart_is_healed_by_the_first_loop_after_it(
    make_controller, celery_env, redis, pg_server, load_db
):
    # Case 7 of issue 11. Celery <= 5.6.3: add_consumer of a known queue does not put it back into consume_from
    # (fixed by celery#10352, unreleased), so after cancel/add and a broker reconnect a worker consumes nothing
    # while it still answers ping (the chart's liveness probe).
    [w] = celery_env.start_workers(1)
    host = f"celery@{w}"
    controller = make_controller(policy=PolicyConfig(min_workers=1, max_workers=4, worker_concurrency=2))
    assert controller.run_once().desired_replicas == 1
    celery_env.control.cancel_consumer([host], ["default"])  # an aborted drain...
    celery_env.control.add_consumer([host], ["default"])  # ...given back
    redis.stop()
    redis.start()
    probe = CeleryWorkers(celery_env.broker_url)
    try:
        wait_for(lambda: probe.ping([host]) == {host}, 40, "the worker reconnected")
        assert probe.snapshot([host])[host].queues == ()  # deaf, as upstream's bug says
        assert controller.run_once().desired_replicas == 1
        assert probe.snapshot([host])[host].queues == ("default",)
        assert controller.metrics.deaf_workers._value.get() == 1
        assert controller.metrics.healed_workers._value.get() == 1
        sender = TaskSender(celery_env.broker_url, celery_env.env["TEST_RESULT_BACKEND"])
        assert sender.sleep(0.1).get(timeout=20) == host
        sender.app.close()
    finally:
        probe.close()


def test_no_scale_down_while_a_worker_consumes_a_queue_outside_the_configured_ones(make_controller, celery_env, pg_server, load_db):
    # Case 4 of issue 11: a drain of the configured queues leaves a worker that also consumes `etl` taking etl
    # tasks after it was found idle; the workers and the autoscaler must agree before anything is removed.
    [w] = celery_env.start_workers(1)
    celery_env.control.add_consumer([f"celery@{w}"], ["etl"])
    controller = make_controller()
    decision = controller.run_once()
    assert decision.reason.startswith("hold: workers consume queues outside ['default']")
    assert celery_env.actuator.alive() == [w]
    assert queues_of(celery_env, w) == ("default", "etl")  # nothing cancelled
    assert controller.metrics.queue_mismatch_workers._value.get() == 1
    assert controller.metrics.held_scale_downs.labels("queue_mismatch")._value.get() == 1


def test_a_drain_cancels_every_queue_the_worker_consumes_and_gives_back_exactly_those(
    make_controller, celery_env, pg_server, load_db
):
    [w] = celery_env.start_workers(1)
    celery_env.control.add_consumer([f"celery@{w}"], ["etl"])
    controller = make_controller(queues=("default", "etl"), drain_timeout_s=2)
    task = celery_env.sender.sleep(5)
    wait_for(lambda: queues_of(celery_env, w) and celery_env.control.snapshot([f"celery@{w}"])[f"celery@{w}"].busy, 10,
             "the task started")
    stale = {w: dataclasses.replace(celery_env.control.snapshot([f"celery@{w}"])[f"celery@{w}"], active=(), reserved=())}
    assert controller.lock.try_acquire()
    seen = []
    real_cancel = controller.celery.cancel_consumer

    def cancel(hosts, queues):
        seen.append(tuple(queues))
        return real_cancel(hosts, queues)

    controller.celery.cancel_consumer = cancel
    result = controller.scale_down(0, celery_env.actuator.observe(), stale, Decision(0, 0, "test"))
    controller.celery.cancel_consumer = real_cancel
    assert (result.removed, result.aborted) == ([], "drain timeout")
    assert seen == [("default", "etl")]
    assert queues_of(celery_env, w) == ("default", "etl")
    assert task.get(timeout=20) == f"celery@{w}"


def set_operator(pg_server, load_db, operator: str, running: int) -> None:
    """Give `running` of the running task instances this operator class, as Airflow records it."""
    import psycopg2

    conn = psycopg2.connect(pg_server.dsn(load_db[0]))
    try:
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE task_instance SET operator = 'EmptyOperator'")
            cur.execute(
                "UPDATE task_instance SET operator = %s WHERE id IN "
                "(SELECT id FROM task_instance WHERE state = 'running' ORDER BY task_id LIMIT %s)",
                (operator, running),
            )
    finally:
        conn.close()


def test_metrics_and_log_surface_the_parallelism_cap_and_slots_held_by_pod_operators(
    make_controller, celery_env, pg_server, load_db, caplog
):
    # Case 9 of issue 11: both cap what the workers can do without the count showing it.
    load(pg_server, load_db, running=3)
    set_operator(pg_server, load_db, "KubernetesPodOperator", 2)
    try:
        controller = make_controller(task_slot_cap=3)
        with caplog.at_level("INFO", logger="airflow_on_k8s.autoscaler"):
            controller.run_once()
    finally:
        set_operator(pg_server, load_db, "EmptyOperator", 0)
    text = controller.metrics.render().decode()
    assert "airflow_worker_autoscaler_task_slot_cap 3.0" in text
    assert "airflow_worker_autoscaler_kubernetes_pod_operator_slots 2.0" in text
    assert "[core] parallelism" in caplog.text and "KubernetesPodOperator" in caplog.text
