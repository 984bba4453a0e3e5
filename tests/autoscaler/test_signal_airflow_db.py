"""The metadata-DB signal against PostgreSQL with Airflow 3's real schema and rows written by Airflow's code."""

from __future__ import annotations

import time

import pytest

from tests.autoscaler.conftest import seed_task_instances
from airflow_on_k8s.autoscaler.policy import QueueLoad
from airflow_on_k8s.autoscaler.signals import SignalError
from airflow_on_k8s.autoscaler.signals.airflow_db import CELERY_EXECUTOR_PATH, AirflowDbSignal, ExecutorFilter

DAG_FILE = '''
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("mixed", schedule=None):
    EmptyOperator(task_id="plain_a")                               # default executor, default queue
    EmptyOperator(task_id="plain_b")
    EmptyOperator(task_id="explicit_celery", executor="CeleryExecutor")
    EmptyOperator(task_id="on_local", executor="LocalExecutor")    # another executor: never counted
    EmptyOperator(task_id="on_k8s_queue", queue="kubernetes")      # the hybrid kubernetes queue
    EmptyOperator(task_id="on_high", queue="high")
'''

RUNS = {
    "run-1": {"plain_a": "queued", "plain_b": "running", "explicit_celery": "queued", "on_local": "queued",
              "on_k8s_queue": "queued", "on_high": "running"},
    "run-2": {"plain_a": "running", "plain_b": "success", "explicit_celery": "running", "on_local": "running",
              "on_k8s_queue": "running", "on_high": "scheduled"},
    "run-3": {"plain_a": "queued", "plain_b": "up_for_retry", "explicit_celery": "failed", "on_local": "queued",
              "on_k8s_queue": "queued", "on_high": "queued"},
}


@pytest.fixture(scope="module")
def seeded_db(pg_server, tmp_path_factory) -> str:
    name = "airflow_signal"
    pg_server.create_database(name, template="airflow_template")
    url = pg_server.url(name)
    dags = tmp_path_factory.mktemp("dags")
    (dags / "mixed.py").write_text(DAG_FILE)
    seed_task_instances(url, tmp_path_factory.mktemp("home"), dags, "mixed", RUNS, "CeleryExecutor,LocalExecutor")
    return url


@pytest.mark.parametrize(
    ("setting", "names", "is_default"),
    [
        ("CeleryExecutor", {"CeleryExecutor", CELERY_EXECUTOR_PATH}, True),
        ("LocalExecutor,CeleryExecutor", {"CeleryExecutor", CELERY_EXECUTOR_PATH}, False),
        (f"fast:{CELERY_EXECUTOR_PATH}, KubernetesExecutor", {"fast", "CeleryExecutor", CELERY_EXECUTOR_PATH}, True),
    ],
)
def test_executor_filter_from_airflow_setting(setting, names, is_default):
    f = ExecutorFilter.from_airflow_setting(setting)
    assert (set(f.celery_names), f.celery_is_default) == (names, is_default)


@pytest.mark.parametrize("setting", ["", "LocalExecutor,KubernetesExecutor"])
def test_executor_filter_without_celery_is_an_error(setting):
    with pytest.raises(ValueError, match="AIRFLOW__CORE__EXECUTOR|no CeleryExecutor"):
        ExecutorFilter.from_airflow_setting(setting)


def test_counts_celery_tasks_per_queue_when_celery_is_the_default(seeded_db):
    signal = AirflowDbSignal(seeded_db, ExecutorFilter.from_airflow_setting("CeleryExecutor,LocalExecutor"),
                             exclude_queues=["kubernetes"])
    try:
        assert signal.read() == (
            # plain_a: queued x2 + running; plain_b: running; explicit_celery: queued + running.
            QueueLoad("default", queued=3, running=3),
            QueueLoad("high", queued=1, running=1),
        )
    finally:
        signal.close()


def test_without_the_exclusion_the_kubernetes_queue_is_counted(seeded_db):
    signal = AirflowDbSignal(seeded_db, ExecutorFilter.from_airflow_setting("CeleryExecutor"))
    try:
        assert QueueLoad("kubernetes", queued=2, running=1) in signal.read()
    finally:
        signal.close()


def test_only_explicit_celery_tasks_count_when_celery_is_not_the_default(seeded_db):
    signal = AirflowDbSignal(seeded_db, ExecutorFilter.from_airflow_setting("LocalExecutor,CeleryExecutor"))
    try:
        assert signal.read() == (QueueLoad("default", queued=1, running=1),)
    finally:
        signal.close()


def test_include_queues_reports_only_those_and_zeros_for_idle_ones(seeded_db):
    signal = AirflowDbSignal(seeded_db, ExecutorFilter.from_airflow_setting("CeleryExecutor"),
                             include_queues=["high", "reports"])
    try:
        assert signal.read() == (QueueLoad("high", 1, 1), QueueLoad("reports", 0, 0))
    finally:
        signal.close()


def test_reads_are_read_only_and_time_limited(seeded_db):
    signal = AirflowDbSignal(seeded_db, ExecutorFilter.from_airflow_setting("CeleryExecutor"), statement_timeout_ms=200)
    try:
        import sqlalchemy as sa

        with pytest.raises(sa.exc.InternalError, match="read-only transaction"):
            with signal.read_only_transaction() as conn:
                conn.execute(sa.text("DELETE FROM task_instance"))
        with signal.read_only_transaction() as conn:
            with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
                conn.execute(sa.text("SELECT pg_sleep(10)"))
        assert signal.read()  # the pooled connection is still usable after failed transactions
    finally:
        signal.close()


def test_db_outage_raises_signal_error_quickly_and_recovers(pg_server, airflow_db):
    signal = AirflowDbSignal(airflow_db, ExecutorFilter.from_airflow_setting("CeleryExecutor"), connect_timeout_s=2)
    try:
        assert signal.read() == ()
        pg_server.stop()
        started = time.monotonic()
        with pytest.raises(SignalError) as err:
            signal.read()
        assert err.value.source == "airflow_db"
        assert time.monotonic() - started < 5
    finally:
        if not pg_server.running:
            pg_server.start()
    try:
        assert signal.read() == ()
    finally:
        signal.close()
