"""Celery's control API (inspect, cancel/add consumer, drain wait) and the local-process actuator, against
a real redis-server and real Celery worker processes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import redis as redis_client

from tests.autoscaler.conftest import REPO_ROOT
from tests.autoscaler.helpers import plain_worker_command, wait_for
from airflow_on_k8s.testing.local_services import free_port
from airflow_on_k8s.autoscaler.actuators.local_processes import FileLeaderLock, LocalProcessActuator
from airflow_on_k8s.autoscaler.signals import SignalError
from airflow_on_k8s.autoscaler.signals.celery_inspect import CeleryWorkers, HostnameTemplate


@pytest.fixture
def setup(celery_env):
    return celery_env.actuator, celery_env.control, celery_env.sender


def start_workers(actuator, control, n: int) -> list[str]:
    before = set(actuator.alive())
    actuator.set_replicas(len(before) + n)
    names = sorted(set(actuator.alive()) - before)
    wait_for(lambda: control.ping(f"celery@{w}" for w in names) == {f"celery@{w}" for w in names}, 30, f"{names} up")
    return names


def test_hostname_template_maps_both_ways():
    t = HostnameTemplate()
    assert t.hostname("airflow-worker-5d9f-abcde") == "celery@airflow-worker-5d9f-abcde"
    assert t.pod("celery@airflow-worker-5d9f-abcde") == "airflow-worker-5d9f-abcde"
    assert t.pod("other@x") is None
    assert HostnameTemplate("w.{pod}.local").pod("w.p1.local") == "p1"
    with pytest.raises(ValueError, match="must contain"):
        HostnameTemplate("celery@host")


def test_snapshot_shows_active_with_start_times_and_reserved_per_worker(setup):
    actuator, control, sender = setup
    [busy] = start_workers(actuator, control, 1)
    sent_at = time.time()
    results = [sender.sleep(4) for _ in range(3)]
    host = f"celery@{busy}"
    state = wait_for(lambda: (s := control.snapshot([host]).get(host)) and len(s.active) == 2 and len(s.reserved) == 1 and s,
                     10, "2 active + 1 reserved")
    [idle] = start_workers(actuator, control, 1)
    snap = control.snapshot([host, f"celery@{idle}"])
    assert snap[f"celery@{idle}"].busy is False and snap[f"celery@{idle}"].queues == ("default",)
    assert snap[host].busy and snap[host].queues == ("default",)
    now = time.time()
    for task in state.active:
        assert task.name == "sleep_then_report" and sent_at - 1 <= task.started_at <= now
    starts = state.task_start_times(now)
    assert len(starts) == 3 and starts[-1] == now
    assert HostnameTemplate().pod(host) == busy
    assert {r.get(timeout=20) for r in results} == {host}


def test_cancelled_worker_takes_no_new_tasks_until_added_back(setup):
    actuator, control, sender = setup
    a, b = start_workers(actuator, control, 2)
    assert control.cancel_consumer([f"celery@{b}"], ["default"]) == {f"celery@{b}"}
    assert control.snapshot([f"celery@{b}"])[f"celery@{b}"].queues == ()
    ran_on = {sender.sleep(0.3).get(timeout=20) for _ in range(6)}
    assert ran_on == {f"celery@{a}"}
    assert control.add_consumer([f"celery@{b}"], ["default"]) == {f"celery@{b}"}
    assert control.snapshot([f"celery@{b}"])[f"celery@{b}"].queues == ("default",)
    # Keep a busy with long tasks; the next short ones must reach b again.
    long = [sender.sleep(3) for _ in range(4)]
    short = [sender.sleep(0.1) for _ in range(4)]
    assert f"celery@{b}" in {r.get(timeout=30) for r in long + short}


def test_drain_wait_returns_when_the_worker_is_idle_or_on_timeout_or_abort(setup):
    actuator, control, sender = setup
    [w] = start_workers(actuator, control, 1)
    host = f"celery@{w}"
    result = sender.sleep(3)
    wait_for(lambda: control.snapshot([host])[host].busy, 10, "task picked up")
    control.cancel_consumer([host], ["default"])
    idle, pending = control.wait_until_idle([host], timeout_s=0.5, poll_s=0.2)
    assert (idle, pending) == (set(), {host})
    started = time.monotonic()
    idle, pending = control.wait_until_idle([host], timeout_s=5, poll_s=0.2, abort=lambda: True)
    assert pending == {host} and time.monotonic() - started < 3
    idle, pending = control.wait_until_idle([host], timeout_s=15, poll_s=0.2)
    assert (idle, pending) == ({host}, set())
    assert result.get(timeout=5) == host


def test_local_actuator_removes_only_the_named_worker_after_its_task(setup, tmp_path):
    actuator, control, sender = setup
    first, second = start_workers(actuator, control, 2)
    assert (first, second) == ("worker-1", "worker-2")
    assert actuator.get_replicas() == 2
    host = f"celery@{first}"
    control.cancel_consumer([f"celery@{second}"], ["default"])
    running = sender.sleep(3)
    wait_for(lambda: control.snapshot([host])[host].busy, 10, "task on worker-1")
    actuator.mark_for_removal([first])
    assert [w.marked for w in actuator.list_workers()] == [True, False]
    actuator.remove([first])
    assert actuator.get_replicas() == 1
    assert [(w.name, w.terminating) for w in actuator.list_workers()] == [(first, True), (second, False)]
    # Warm shutdown: the running task still completes on the removed worker, then the process exits.
    assert running.get(timeout=20) == host
    assert actuator.wait_gone([first], timeout_s=20)
    assert actuator.alive() == [second]
    # A new actuator on the same state dir (a restarted controller) finds the survivor and never reuses a name.
    again = LocalProcessActuator(actuator.state_dir, plain_worker_command, env=actuator.env)
    assert [w.name for w in again.list_workers()] == [second]
    again.set_replicas(2)
    assert again.alive() == [second, "worker-3"]
    again.kill("worker-3")
    assert again.alive() == [second]


def test_file_leader_lock_is_exclusive_and_freed_when_the_holder_dies(tmp_path):
    path = tmp_path / "leader.lock"
    one, two = FileLeaderLock(path, "one"), FileLeaderLock(path, "two")
    assert one.try_acquire() and one.try_acquire()
    assert not two.try_acquire()
    assert one.holder() == "one"
    one.release()
    assert two.try_acquire()
    two.release()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from airflow_on_k8s.autoscaler.actuators.local_processes import FileLeaderLock;"
         f"assert FileLeaderLock({str(path)!r}, 'child').try_acquire(); print('held', flush=True); time.sleep(60)"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not one.try_acquire()
        holder.kill()
        holder.wait()
        assert one.try_acquire()
    finally:
        holder.kill()
        one.release()


def test_unreachable_broker_raises_signal_error_within_seconds():
    control = CeleryWorkers(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1)
    started = time.monotonic()
    try:
        with pytest.raises(SignalError) as err:
            control.snapshot(["celery@w"])
        assert err.value.source == "celery"
        with pytest.raises(SignalError):
            control.cancel_consumer(["celery@w"], ["default"])
    finally:
        control.close()
    assert time.monotonic() - started < 10


def test_polling_the_workers_never_hands_a_running_acks_late_task_to_a_second_worker(celery_env, tmp_path):
    # Case 5 of issue 11. kombu's Redis poller re-queues every unacked message older than *its client's*
    # visibility_timeout whenever a poll comes back empty (MultiChannelPoller.get -> maybe_restore_messages), and a
    # reply wait shorter than BRPOP's 1 s always does when a destination does not answer (a starting pod).
    [w] = celery_env.start_workers(1)
    starts = tmp_path / "starts"
    celery_env.sender.app.send_task("record_then_sleep", args=[str(starts), 40], queue="default")
    wait_for(lambda: starts.exists() and len(starts.read_text().splitlines()) == 1, 15, "the task started")
    broker = redis_client.Redis.from_url(celery_env.broker_url)
    [(tag, score)] = broker.zrange("unacked_index", 0, -1, withscores=True)
    # Running for 4000 s: past kombu's default 3600 s, well within Airflow's 86400 s.
    broker.zadd("unacked_index", {tag: score - 4000})
    control = CeleryWorkers(celery_env.broker_url, timeout_s=0.5)
    try:
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            control.snapshot([f"celery@{w}", "celery@pod-still-starting"])
    finally:
        control.close()
        broker.close()
    time.sleep(3)
    assert len(starts.read_text().splitlines()) == 1, f"delivered twice: {starts.read_text()}"


def test_the_first_call_after_a_broker_restart_reconnects(celery_env, redis):
    [w] = celery_env.start_workers(1)
    host = f"celery@{w}"
    control = celery_env.control
    assert control.ping([host]) == {host}
    redis.stop()
    redis.start()
    wait_for(lambda: CeleryWorkers(celery_env.broker_url).ping([host]) == {host}, 40, "the worker reconnected")
    assert control.ping([host]) == {host}  # the long-lived client's dead connection is replaced, not reported
