"""Fixtures for the worker autoscaler's tests. Services (PostgreSQL, Redis, Celery workers, an Airflow
scheduler) are real, started here on 127.0.0.1 and free ports, and stopped afterwards.

One PostgreSQL server per session holds a template database migrated once with `airflow db migrate`;
tests get their own copy of it (CREATE DATABASE ... TEMPLATE, well under a second).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.local_services import PostgresServer, RedisServer, airflow_env, migrate_airflow_db, postgres_server, redis_server

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_DB = "airflow_template"
_db_names = itertools.count(1)


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
