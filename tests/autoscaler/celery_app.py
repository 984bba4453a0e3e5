"""A plain Celery app for the control-API tests: same broker protocol and control commands as Airflow's
Celery app, but workers start in about a second. Broker and result backend come from the environment."""

from __future__ import annotations

import os
import time

from celery import Celery, current_task

app = Celery("autoscaler-tests", broker=os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    result_backend=os.environ.get("TEST_RESULT_BACKEND"),
    task_default_queue="default",
    # Early acks and a prefetch of 2 per process let a busy worker hold reserved tasks, which the tests need.
    task_acks_late=False,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    # As Airflow's celery provider sets it for Redis (default_celery.py): a worker re-queues nobody's running task.
    broker_transport_options={"visibility_timeout": 86400},
)


@app.task(name="sleep_then_report")
def sleep_then_report(seconds: float) -> str:
    """Sleep, then say which worker ran it."""
    time.sleep(seconds)
    return current_task.request.hostname


@app.task(name="record_then_sleep", acks_late=True)
def record_then_sleep(path: str, seconds: float) -> str:
    """Like an Airflow task (acks_late): append this delivery to `path`, then sleep."""
    with open(path, "a") as f:
        f.write(f"{current_task.request.id} {current_task.request.hostname}\n")
    time.sleep(seconds)
    return current_task.request.hostname
