"""End to end: a real Airflow scheduler (CeleryExecutor), real PostgreSQL and Redis, real `airflow celery worker`
processes started and stopped by `python -m airflow_on_k8s.autoscaler --actuator local`.

Figures (time to scale up, workers reached, retries) are printed; run with -s to see them.
"""

from __future__ import annotations

import pytest

from tests.autoscaler.airflow_stack import BURST, CONCURRENCY, ControllerProcess, Watch, all_state, burst_dag, report
from tests.autoscaler.helpers import wait_for
from airflow_on_k8s.autoscaler.actuators.local_processes import LocalProcessActuator, airflow_worker_command

pytestmark = pytest.mark.slow


def test_burst_scales_to_exactly_the_need_and_back_to_zero_with_two_controllers(stack, tmp_path):
    """8 tasks of 20 s, concurrency 2: exactly 4 workers, all tasks succeed first time, then 0 workers.
    Two controllers start at once on the same state dir; only the lock holder acts; killing it hands over."""
    state = tmp_path / "workers"
    workers = LocalProcessActuator(state, airflow_worker_command(CONCURRENCY))
    one = ControllerProcess(stack, state, "one")
    two = ControllerProcess(stack, state, "two")
    controllers = [one, two]
    try:
        wait_for(lambda: one.metrics() and two.metrics(), 30, "both controllers serving metrics")
        leaders = [c for c in controllers if c.metrics().get("airflow_worker_autoscaler_leader") == 1.0]
        assert len(leaders) == 1, [c.metrics().get("airflow_worker_autoscaler_leader") for c in controllers]
        stack.add_dag("burst", burst_dag("burst", 20))
        watch = Watch(stack, workers, "burst", "burst-1")
        stack.trigger("burst", "burst-1")
        try:
            wait_for(lambda: all_state(watch.samples[-1][2], "running") if watch.samples else False, 150,
                     "all 8 tasks running", poll_s=0.5)
            # Kill the leader while 8 tasks run: the standby takes the lock over and finishes the job.
            leader = leaders[0]
            standby = two if leader is one else one
            leader.kill()
            wait_for(lambda: standby.metrics().get("airflow_worker_autoscaler_leader") == 1.0, 20, "standby leads")
            wait_for(lambda: all_state(watch.samples[-1][2], "success") and watch.samples[-1][1] == 0, 150,
                     "all tasks done and 0 workers", poll_s=0.5)
        finally:
            watch.stop()
        tis = stack.task_instances("burst", "burst-1")
        queued = watch.first(lambda n, tis: any(t[1] == "queued" for t in tis))
        full = watch.first(lambda n, tis: n == 4)
        running = watch.first(lambda n, tis: all_state(tis, "running"))
        done = watch.first(lambda n, tis: all_state(tis, "success"))
        zero = watch.first(lambda n, tis: all_state(tis, "success") and n == 0)
        report("burst of 8 x 20 s tasks, concurrency 2 (times from the first queued task, 0.5 s sampling)", {
            "-> 4 worker processes started (s)": round(full - queued, 1),
            "-> all 8 tasks running (s)": round(running - queued, 1),
            "peak workers": watch.peak,
            "tasks succeeded / failed / retried": (sum(t[1] == "success" for t in tis),
                                                   sum(t[1] == "failed" for t in tis), sum(t[2] > 1 for t in tis)),
            "last task done -> 0 workers (s)": None if zero is None or done is None else round(zero - done, 1),
            "leader killed mid-run, standby took over": True,
        })
        assert watch.peak == 4  # exactly ceil(8 / 2), even with two controllers started together
        assert [(t[1], t[2]) for t in tis] == [("success", 1)] * BURST  # every task succeeded, none retried
        assert workers.alive() == []
        assert "scale up: load needs 4 workers" in leader.log()
    finally:
        for c in controllers:
            c.stop()
        workers.kill_all()
