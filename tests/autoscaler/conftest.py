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
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from airflow_on_k8s.autoscaler.policy import PolicyConfig

from airflow_on_k8s.testing.local_services import PostgresServer, RedisServer, airflow_env, migrate_airflow_db, postgres_server, redis_server

REPO_ROOT = Path(__file__).resolve().parents[2]
# Child processes (workers, `python -m airflow_on_k8s.autoscaler`) import this checkout's package, not the copy the
# virtualenv's .pth points at (another worktree's src/); pytest.ini's `pythonpath` covers only this process.
PYTHONPATH = os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)])
os.environ["PYTHONPATH"] = PYTHONPATH
# The autoscaler reads Airflow's own Celery config in-process: keep Airflow's files out of the home directory.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))


class _TempDirs:
    """Temp dirs under one root that lives as long as this session. Replaces pytest's tmp_path machinery for
    these tests: other pytest sessions on the same machine prune /tmp/pytest-of-<user>/ and deleted the
    state dirs of workers and controllers while these long tests still used them."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="autoscaler-tests-"))
        self._n = itertools.count()

    def mktemp(self, name: str, numbered: bool = True) -> Path:
        path = self.root / (f"{name}{next(self._n)}" if numbered else name)
        path.mkdir(parents=True)
        return path


@pytest.fixture(scope="session")
def tmp_path_factory() -> Iterator[_TempDirs]:
    dirs = _TempDirs()
    yield dirs
    shutil.rmtree(dirs.root, ignore_errors=True)


@pytest.fixture
def tmp_path(tmp_path_factory, request) -> Path:
    return tmp_path_factory.mktemp(re.sub(r"\W", "_", request.node.name)[:40])
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


def seed_task_instances(db_url: str, airflow_home: Path, dags_folder: Path, dag_id: str, runs: dict, executor: str,
                        unpause: bool = False, env: dict | None = None) -> None:
    """Create DAG runs and task instances with Airflow's own code (see airflow_seed.py)."""
    env = env or airflow_env(db_url, airflow_home, CORE__EXECUTOR=executor, CORE__DAGS_FOLDER=str(dags_folder))
    spec = {"dags_folder": str(dags_folder), "dag_id": dag_id, "runs": runs, "unpause": unpause}
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
    from airflow_on_k8s.autoscaler.actuators.local_processes import LocalProcessActuator
    from airflow_on_k8s.autoscaler.signals.celery_inspect import CeleryWorkers

    db = next(_redis_dbs)
    broker, backend = redis.url(db), redis.url(db + 1)
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "TEST_BROKER_URL": broker, "TEST_RESULT_BACKEND": backend}
    state = tmp_path / "workers"
    actuator = LocalProcessActuator(state, plain_worker_command, env=env)
    control = CeleryWorkers(broker, timeout_s=2)
    sender = TaskSender(broker, backend)
    try:
        yield CeleryEnv(broker, env, actuator, control, sender, state)
    finally:
        LocalProcessActuator(state, plain_worker_command, env=env).kill_all()
        control.close()
        # Drop result objects while Redis is still up: their __del__ unsubscribes from it.
        gc.collect()
        sender.app.close()


@pytest.fixture(scope="session")
def stack(pg_server, redis, tmp_path_factory):
    """A running Airflow (API server + scheduler, CeleryExecutor) on its own database and Redis DB 50."""
    from tests.autoscaler.airflow_stack import CONCURRENCY, AirflowStack

    pg_server.create_database("airflow_e2e", template=TEMPLATE_DB)
    s = AirflowStack(pg_server, "airflow_e2e", redis, 50, tmp_path_factory.mktemp("airflow-e2e"), CONCURRENCY).start()
    yield s
    s.stop()


# --- the control loop's fixtures, shared by test_controller.py and test_scale_down_safety.py ----------------------

FAST = PolicyConfig(min_workers=0, max_workers=4, worker_concurrency=2, scale_down_stabilization_s=0,
                    scale_down_cooldown_s=0, scale_down_max_step=4)


@pytest.fixture(scope="module")
def load_db(pg_server, tmp_path_factory):
    """(database name, URL) with 16 task instances to move between states."""
    name = f"airflow_controller_{next(_db_names)}"  # one per test module
    url = seeded_load_db(pg_server, tmp_path_factory.mktemp("load"), name)
    return name, url


@pytest.fixture
def make_controller(load_db, celery_env, pg_server):
    from airflow_on_k8s.autoscaler.actuators.local_processes import FileLeaderLock
    from airflow_on_k8s.autoscaler.controller import Controller, ControllerConfig
    from airflow_on_k8s.autoscaler.metrics import Health, Metrics
    from airflow_on_k8s.autoscaler.policy import ScalingPolicy
    from airflow_on_k8s.autoscaler.signals.airflow_db import AirflowDbSignal, ExecutorFilter

    made = []
    name, url = load_db
    set_load(pg_server, name)

    def make(policy=FAST, actuator=None, lock=None, clock=None, **loop) -> Controller:
        signal = AirflowDbSignal(url, ExecutorFilter.from_airflow_setting("CeleryExecutor"), include_queues=["default"],
                                 connect_timeout_s=2)
        config = ControllerConfig(**{"queues": ("default",), "drain_timeout_s": 20, "drain_poll_s": 0.3,
                                     "drain_settle_s": 0.5, "removal_wait_s": 5, **loop})
        controller = Controller(
            ScalingPolicy(policy), signal, celery_env.control, actuator or celery_env.actuator,
            lock or FileLeaderLock(celery_env.state_dir / "leader.lock"), config,
            metrics=Metrics(), health=Health(60, 60), **({"clock": clock} if clock else {}),
        )
        made.append(controller)
        return controller

    yield make
    for c in made:
        c.stop.set()
        c.lock.release()
        c.load.close()


def load(pg_server, load_db, queued=0, running=0):
    set_load(pg_server, load_db[0], queued=queued, running=running)


def queues_of(celery_env, name):
    return celery_env.control.snapshot([f"celery@{name}"])[f"celery@{name}"].queues


@pytest.fixture(params=["fake"])
def cluster(request):
    """The Kubernetes side of a test: the fake API server with the ReplicaSet and Deployment controllers'
    scale-down behaviour (fake_kube.py). The test bodies use only what a real control plane offers too
    (`deployment`, `worker_pods`, `foreign_pod`, `set_pod` as a kubelet would, `pause_controllers` /
    `resume_controllers` as a stopped controller-manager, `settle`, `live`, `deleted`, `replicas`, `pods`,
    `writes`, `before_write`); a real control plane (branch k8s-tier) becomes a second param implementing them."""
    from tests.autoscaler.fake_kube import FakeKube

    return FakeKube()
