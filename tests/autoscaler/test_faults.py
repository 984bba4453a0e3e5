"""Faults during a burst, end to end: real Airflow scheduler (CeleryExecutor), PostgreSQL, Redis, `airflow celery
worker` processes, and `python -m airflow_on_k8s.autoscaler --actuator local` as a process that can be killed.

The outcome of each fault is printed; run with -s to see it.
"""

from __future__ import annotations

import re
import time

import psycopg2
import pytest

from tests.autoscaler.helpers import wait_for
from tests.autoscaler.airflow_stack import CONCURRENCY, ControllerProcess, Watch, all_state, burst_dag, celery_tasks_on, report
from airflow_on_k8s.autoscaler.actuators.local_processes import LocalProcessActuator, airflow_worker_command
from airflow_on_k8s.autoscaler.signals.celery_inspect import CeleryWorkers

pytestmark = pytest.mark.slow


def _try(fn, *args):
    """fn(*args), or None on a transient broker error (the test's own client right after a Redis restart)."""
    from airflow_on_k8s.autoscaler.signals import SignalError

    try:
        return fn(*args)
    except (SignalError, OSError, psycopg2.Error):
        return None


def test_faults_lose_no_task_and_the_controller_never_kills_a_running_one(stack, pg_server, redis, tmp_path):
    """While 8 tasks run: PostgreSQL down 6 s, then Redis down 6 s, then a busy worker SIGKILLed; at the first
    scale-down the controller is SIGKILLed mid-drain and restarted."""
    state = tmp_path / "workers"
    workers = LocalProcessActuator(state, airflow_worker_command(CONCURRENCY))
    # A long settle time keeps the drain open long enough to kill the controller inside it.
    controller = ControllerProcess(stack, state, "first", "--drain-settle-s", "6")
    restarted = None
    outcome: dict[str, object] = {}
    stack.add_dag("faults", burst_dag("faults", 30))
    watch = Watch(stack, workers, "faults", "faults-1")
    try:
        stack.trigger("faults", "faults-1")
        wait_for(lambda: all_state(watch.samples[-1][2], "running") if watch.samples else False, 150,
                 "all 8 tasks running", poll_s=0.5)

        # 1. PostgreSQL down for 6 s: nothing removed, the error counted, the loop goes on afterwards.
        before = len(workers.alive())
        pg_down_at = time.time()
        pg_server.stop()
        time.sleep(6)
        during_pg = len(workers.alive())
        pg_server.start()
        pg_up_at = time.time()
        stack.restart_dead()
        wait_for(lambda: controller.metrics().get('airflow_worker_autoscaler_errors_total{source="airflow_db"}', 0) >= 1,
                 20, "the DB error to be counted")
        outcome["postgres down 6 s"] = f"workers {before} -> {during_pg} during the outage, DB errors counted"
        assert during_pg >= before

        # 2. Redis down for 6 s (no persistence: it comes back empty).
        before = len(workers.alive())
        redis.stop()
        time.sleep(6)
        during_redis = len(workers.alive())
        redis.start()
        stack.restart_dead()
        wait_for(lambda: controller.metrics().get('airflow_worker_autoscaler_errors_total{source="celery"}', 0) >= 1,
                 20, "the broker error to be counted")
        outcome["redis down 6 s"] = f"workers {before} -> {during_redis} during the outage, broker errors counted"
        assert during_redis >= before

        # 3. A worker crashes while running tasks; Airflow retries its tasks, the controller replaces it.
        victim = next(w for w in workers.alive() if _try(celery_tasks_on, stack.broker_url, w))
        lost = celery_tasks_on(stack.broker_url, victim)
        killed_at = time.time()
        workers.kill(victim)
        wait_for(lambda: len(workers.alive()) == 4, 30, "the controller replacing the crashed worker")
        outcome["worker SIGKILLed"] = f"{victim} running {lost}; replaced by {sorted(workers.alive(), key=len)[-1]}"

        # 4. Kill the controller mid-drain (during the settle wait after cancel_consumer), then restart it.
        wait_for(lambda: "consumers cancelled on" in controller.log(), 180, "a scale-down drain", poll_s=0.2)
        controller.kill()
        drained = re.findall(r"consumers cancelled on \[(.*?)\]", controller.log())[-1].replace("'", "").split(", ")
        control = CeleryWorkers(stack.broker_url, timeout_s=2)
        try:
            left = wait_for(lambda: _try(control.snapshot, [f"celery@{w}" for w in drained]), 20, "a snapshot")
            assert all(s.queues == () for s in left.values())  # left cancelled by the dead controller
            restarted = ControllerProcess(stack, state, "second")
            wait_for(lambda: "restoring consumers" in restarted.log() or not set(drained) & set(workers.alive()),
                     30, "the restarted controller to clean up")
        finally:
            control.close()
        outcome["controller SIGKILLed mid-drain"] = f"{drained} left cancelled; the restarted controller " + (
            "restored their consumers" if "restoring consumers" in restarted.log() else "found them gone")

        wait_for(lambda: all_state(watch.samples[-1][2], "success") and watch.samples[-1][1] == 0, 240,
                 "all tasks done and 0 workers", poll_s=0.5)
        watch.stop()
        tis = stack.task_instances("faults", "faults-1")
        retried = sorted(t[0] for t in tis if t[2] > 1)
        # A try that ended while Airflow's own DB was down (its API calls failed; the restarted scheduler
        # reset it) is Airflow's outage, not the controller's doing.
        outage = sorted({t for t, _n, _st, ended in stack.earlier_tries("faults", "faults-1")
                         if ended is not None and pg_down_at - 1 <= ended <= min(pg_up_at + 30, killed_at)})
        outcome["tasks succeeded"] = sum(t[1] == "success" for t in tis)
        outcome["retried"] = f"{retried}: crashed worker's {lost}, first try ended in the DB outage {outage}"
        report("faults during a burst of 8 x 30 s tasks", outcome)
        assert all(t[1] == "success" for t in tis), tis  # no task lost
        # Every retry has a cause outside the controller: it killed no running task.
        assert set(retried) <= set(lost) | set(outage), (retried, lost, outage)
        assert workers.alive() == []
    except BaseException:
        watch.stop()
        print("\n".join(f"{t:6.1f}s workers={n} {[x[1:3] for x in tis]}" for t, n, tis in watch.samples[-20:]))
        for c in (controller, restarted):
            if c:
                print(f"--- controller {c.identity} log tail\n{c.log()[-3000:]}")
        print(f"--- task instances\n{_try(stack.task_instances, 'faults', 'faults-1')}")
        print(f"--- scheduler log tail\n{stack.log_tail('scheduler', 60)}")
        raise
    finally:
        for c in (controller, restarted):
            if c:
                c.stop()
        workers.kill_all()
        if not pg_server.running:
            pg_server.start()
        if not redis.running:
            redis.start()
