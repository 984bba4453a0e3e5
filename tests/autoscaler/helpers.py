"""Helpers shared by the autoscaler tests: plain Celery workers, a task sender, polling."""

from __future__ import annotations

import sys

from celery import Celery

from airflow_on_k8s.testing.waiting import wait_for  # noqa: F401  (the tests import it from here)


def plain_worker_command(name: str) -> list[str]:
    """A Celery worker of tests/autoscaler/celery_app.py named celery@<name>: 2 processes, queue default."""
    return [sys.executable, "-m", "celery", "-A", "tests.autoscaler.celery_app", "worker", "-n", f"celery@{name}",
            "-c", "2", "-Q", "default", "--without-mingle", "--without-gossip", "-l", "info"]


class TaskSender:
    """The test's client side: sends `sleep_then_report` (defined in celery_app.py) to the workers' broker."""

    def __init__(self, broker_url: str, result_backend: str):
        self.app = Celery("autoscaler-tests-client", broker=broker_url, backend=result_backend, set_as_current=False)

    def sleep(self, seconds: float):
        return self.app.send_task("sleep_then_report", args=[seconds], queue="default")


def wait_workers_up(control, names, timeout_s: float = 40) -> None:
    hosts = {f"celery@{n}" for n in names}
    wait_for(lambda: control.ping(hosts) == hosts, timeout_s, f"{sorted(names)} answering")
