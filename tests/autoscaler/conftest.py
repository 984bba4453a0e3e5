"""Fixtures for the worker autoscaler's tests. Services (PostgreSQL, Redis, Celery workers, an Airflow
scheduler) are real, started here on 127.0.0.1 and free ports, and stopped afterwards.

One PostgreSQL server per session holds a template database migrated once with `airflow db migrate`;
tests get their own copy of it (CREATE DATABASE ... TEMPLATE, well under a second).
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools.local_services import PostgresServer, RedisServer, airflow_env, migrate_airflow_db, postgres_server, redis_server

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_DB = "airflow_template"
_db_names = itertools.count(1)
_redis_dbs = itertools.count(0, 2)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory) -> Iterator[PostgresServer]:
    """A PostgreSQL server whose `airflow_template` database has Airflow's real schema."""
    with postgres_server(database=TEMPLATE_DB) as server:
        migrate_airflow_db(server.url(), tmp_path_factory.mktemp("airflow-home-migrate"))
        yield server


@pytest.fixture
def airflow_db(pg_server) -> str:
    """SQLAlchemy URL of a fresh database with Airflow's schema, for this test only."""
    name = f"airflow_{next(_db_names)}"
    pg_server.create_database(name, template=TEMPLATE_DB)
    return pg_server.url(name)


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def seed_task_instances(db_url: str, airflow_home: Path, dags_folder: Path, dag_id: str, runs: dict, executor: str) -> None:
    """Create DAG runs and task instances with Airflow's own code (see airflow_seed.py)."""
    env = airflow_env(db_url, airflow_home, CORE__EXECUTOR=executor, CORE__DAGS_FOLDER=str(dags_folder))
    spec = {"dags_folder": str(dags_folder), "dag_id": dag_id, "runs": runs}
    result = subprocess.run(
        [sys.executable, "-m", "tests.autoscaler.airflow_seed", json.dumps(spec)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-4000:]


LOAD_DAG = """
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("load", schedule=None):
    for i in range(16):
        EmptyOperator(task_id=f"t{i:02d}")
"""


def seeded_load_db(pg_server: PostgresServer, tmp_path: Path, name: str) -> str:
    """A database with one DAG run of 16 task instances (written by Airflow), all without state yet."""
    pg_server.create_database(name, template=TEMPLATE_DB)
    url = pg_server.url(name)
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "load.py").write_text(LOAD_DAG)
    seed_task_instances(url, tmp_path / "home", dags, "load", {"run-1": {}}, "CeleryExecutor")
    return url


def set_load(pg_server: PostgresServer, database: str, queued: int = 0, running: int = 0) -> None:
    """Put `queued` + `running` of the seeded task instances in those states (as the scheduler would), the rest in none."""
    import psycopg2

    conn = psycopg2.connect(pg_server.dsn(database))
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                """
                UPDATE task_instance SET state = CASE
                    WHEN rank <= %(q)s THEN 'queued' WHEN rank <= %(q)s + %(r)s THEN 'running' ELSE NULL END
                FROM (SELECT id, row_number() OVER (ORDER BY task_id) AS rank FROM task_instance) ranked
                WHERE task_instance.id = ranked.id
                """,
                {"q": queued, "r": running},
            )
    finally:
        conn.close()


@dataclass
class CeleryEnv:
    """Plain Celery workers (tests/autoscaler/celery_app.py) run by a local actuator on their own Redis DBs."""

    broker_url: str
    env: dict[str, str]
    actuator: "LocalProcessActuator"
    control: "CeleryWorkers"
    sender: "TaskSender"
    state_dir: Path

    def start_workers(self, n: int) -> list[str]:
        from tests.autoscaler.helpers import wait_workers_up

        before = set(self.actuator.alive())
        self.actuator.set_replicas(len(before) + n)
        names = sorted(set(self.actuator.alive()) - before, key=lambda n: int(n.rsplit("-", 1)[1]))
        wait_workers_up(self.control, names)
        return names


@pytest.fixture
def celery_env(redis, tmp_path) -> Iterator[CeleryEnv]:
    from tests.autoscaler.helpers import TaskSender, plain_worker_command
    from worker_autoscaler.actuators.local_processes import LocalProcessActuator
    from worker_autoscaler.signals.celery_inspect import CeleryWorkers

    db = next(_redis_dbs)
    broker, backend = redis.url(db), redis.url(db + 1)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TEST_BROKER_URL": broker, "TEST_RESULT_BACKEND": backend}
    state = tmp_path / "workers"
    actuator = LocalProcessActuator(state, plain_worker_command, env=env)
    control = CeleryWorkers(broker, timeout_s=2)
    sender = TaskSender(broker, backend)
    try:
        yield CeleryEnv(broker, env, actuator, control, sender, state)
    finally:
        LocalProcessActuator(state, plain_worker_command, env=env).stop_all(timeout_s=20)
        control.close()
        # Drop result objects while Redis is still up: their __del__ unsubscribes from it.
        gc.collect()
        sender.app.close()
