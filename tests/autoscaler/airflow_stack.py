"""A real Airflow 3 deployment on this machine for end-to-end tests, and the helpers the e2e and fault tests share: API server (execution API only) and
scheduler with the CeleryExecutor, on a test's PostgreSQL database and Redis DB. Celery workers are not
started here: the autoscaler under test starts them (local-process actuator) with `worker_env`.

DAG files are parsed and stored by Airflow's own DagBag/sync code (airflow_seed.py) instead of a separate
dag-processor process, which saves a process and a core on a 2-core machine.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

from tests.autoscaler.conftest import PYTHONPATH, REPO_ROOT, seed_task_instances
from airflow_on_k8s.testing.local_services import PostgresServer, RedisServer, airflow_env, free_port
from airflow_on_k8s.autoscaler.actuators.local_processes import LocalProcessActuator
from airflow_on_k8s.autoscaler.signals.celery_inspect import CeleryWorkers


class AirflowStack:
    def __init__(self, pg: PostgresServer, database: str, redis: RedisServer, redis_db: int, work_dir: Path,
                 worker_concurrency: int = 2):
        self.pg, self.database, self.redis = pg, database, redis
        self.work_dir = work_dir
        self.dags_folder = work_dir / "dags"
        self.dags_folder.mkdir(parents=True, exist_ok=True)
        self.home = work_dir / "airflow-home"
        self.home.mkdir(exist_ok=True)
        self.api_port = free_port()
        self.db_url = pg.url(database)
        self.broker_url = redis.url(redis_db)
        self.env = airflow_env(
            self.db_url, self.home,
            CORE__EXECUTOR="CeleryExecutor",
            CORE__DAGS_FOLDER=str(self.dags_folder),
            CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{self.api_port}/execution/",
            CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
            CORE__PARALLELISM="32",
            API_AUTH__JWT_SECRET="e2e-test-secret-" + "x" * 32,
            API__SECRET_KEY="e2e-test-secret",
            CELERY__BROKER_URL=self.broker_url,
            CELERY__RESULT_BACKEND="db+" + pg.url(database, driver="postgresql"),
            CELERY__WORKER_CONCURRENCY=str(worker_concurrency),
            SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1",
            SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME="0.5",
            # A task whose worker died is failed (and retried) after 20 s instead of 5 minutes.
            SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="20",
            SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL="5",
            # A scheduler that died in a DB outage leaves its running tasks to the restarted one: adopt them
            # within seconds, not 5 minutes, so the heartbeat timeout above applies to them too.
            SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD="10",
            SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL="10",
            # Running tasks ride out the short DB outages of the fault tests (default: 3 x 5 s).
            WORKERS__MAX_FAILED_HEARTBEATS="12",
            LOGGING__LOGGING_LEVEL="INFO",
        )
        self.env["PYTHONPATH"] = PYTHONPATH
        self._procs: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.work_dir / f"{name}.log", "ab")
        self._procs[name] = subprocess.Popen([sys.executable, "-m", "airflow", *args], env=self.env, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True, cwd=self.work_dir)
        log.close()

    def start(self, timeout_s: float = 120) -> AirflowStack:
        self._start("api-server", ["api-server", "--apps", "execution", "--host", "127.0.0.1",
                                   "--port", str(self.api_port), "--workers", "1"])
        self._start("scheduler", ["scheduler"])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"airflow {name} exited:\n{self.log_tail(name)}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/execution/health", timeout=2)
                return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"api-server not up after {timeout_s}s:\n{self.log_tail('api-server')}")

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.work_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def add_dag(self, dag_id: str, source: str) -> None:
        (self.dags_folder / f"{dag_id}.py").write_text(source)

    def trigger(self, dag_id: str, run_id: str) -> None:
        """Store the DAG (as the dag processor would) and create a queued run for the scheduler."""
        seed_task_instances(self.db_url, self.home, self.dags_folder, dag_id, {run_id: "queued"}, "CeleryExecutor",
                            unpause=True, env=self.env)

    def task_instances(self, dag_id: str, run_id: str) -> list[tuple[str, str | None, int, str | None]]:
        """(task_id, state, try_number, hostname) of the run's task instances."""
        conn = psycopg2.connect(self.pg.dsn(self.database))
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT task_id, state, try_number, hostname FROM task_instance "
                            "WHERE dag_id = %s AND run_id = %s ORDER BY task_id", (dag_id, run_id))
                return cur.fetchall()
        finally:
            conn.close()

    def earlier_tries(self, dag_id: str, run_id: str) -> list[tuple[str, int, str | None, float | None]]:
        """(task_id, try_number, state, ended at [epoch s]) of tries that were retried (task_instance_history)."""
        conn = psycopg2.connect(self.pg.dsn(self.database))
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT task_id, try_number, state, EXTRACT(EPOCH FROM COALESCE(end_date, updated_at)) "
                            "FROM task_instance_history WHERE dag_id = %s AND run_id = %s ORDER BY task_id, try_number",
                            (dag_id, run_id))
                return [(t, n, st, float(e) if e is not None else None) for t, n, st, e in cur.fetchall()]
        finally:
            conn.close()

    def restart_dead(self) -> list[str]:
        """Restart Airflow processes that exited (as Kubernetes restarts a crashed container)."""
        dead = [name for name, proc in self._procs.items() if proc.poll() is not None]
        for name in dead:
            args = ["scheduler"] if name == "scheduler" else [
                "api-server", "--apps", "execution", "--host", "127.0.0.1", "--port", str(self.api_port), "--workers", "1"]
            self._start(name, args)
        return dead

    def stop(self) -> None:
        import os
        import signal

        for proc in self._procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._procs.clear()


CONCURRENCY = 2
BURST = 8  # tasks -> exactly ceil(8 / 2) = 4 workers


def burst_dag(dag_id: str, seconds: int, tasks: int = BURST) -> str:
    # retries=2: a task killed under it would come back with try_number 2, which the tests would see.
    return f'''
import time
from airflow.sdk import DAG, task

with DAG("{dag_id}", schedule=None, default_args={{"retries": 2, "retry_delay": 1}}):
    @task
    def work(i):
        time.sleep({seconds})
        return i

    for i in range({tasks}):
        work.override(task_id=f"t{{i}}")(i)
'''


class ControllerProcess:
    """`python -m airflow_on_k8s.autoscaler` with the local actuator, as its own process (so it can be killed)."""

    def __init__(self, stack: AirflowStack, state_dir: Path, identity: str, *extra: str):
        self.identity = identity
        self.port = free_port()
        self.log_path = stack.work_dir / f"controller-{identity}.log"
        args = [
            "--actuator", "local", "--local-state-dir", str(state_dir), "--identity", identity,
            "--metrics-host", "127.0.0.1", "--metrics-port", str(self.port),
            "--min-workers", "0", "--max-workers", "6", "--poll-interval-s", "2", "--celery-timeout-s", "1.5",
            "--scale-down-stabilization-s", "10", "--scale-down-cooldown-s", "2", "--scale-down-max-step", "4",
            "--drain-poll-s", "1", "--drain-settle-s", "1", "--drain-timeout-s", "60", *extra,
        ]  # fmt: skip
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "airflow_on_k8s.autoscaler", *args], env=stack.env, cwd=REPO_ROOT,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def metrics(self) -> dict[str, float]:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read().decode()
        except OSError:
            return {}
        return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(airflow_worker_autoscaler_\S+) (\S+)$", text, re.M)}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Watch:
    """Samples worker processes and task states every 0.5 s in a thread."""

    stack: AirflowStack
    workers: LocalProcessActuator
    dag_id: str
    run_id: str
    started: float = field(default_factory=time.monotonic)
    samples: list[tuple[float, int, list]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                tis = self.stack.task_instances(self.dag_id, self.run_id)
            except Exception:  # the DB is down in a fault test
                tis = self.samples[-1][2] if self.samples else []
            self.samples.append((time.monotonic() - self.started, len(self.workers.alive()), tis))
            self._stop.wait(0.5)

    def stop(self):
        self._stop.set()
        self._thread.join()

    def first(self, predicate) -> float | None:
        return next((t for t, n, tis in self.samples if predicate(n, tis)), None)

    @property
    def peak(self) -> int:
        return max((n for _, n, _ in self.samples), default=0)

    def states(self) -> list[str]:
        return [s for _, s, _, _ in (self.samples[-1][2] if self.samples else [])]


def all_state(tis, state: str) -> bool:
    return len(tis) == BURST and all(t[1] == state for t in tis)


def report(title: str, lines: dict) -> None:
    print(f"\n[autoscaler e2e] {title}")
    for key, value in lines.items():
        print(f"  {key}: {value}")


def celery_tasks_on(broker_url: str, worker: str) -> list[str]:
    """Airflow task ids a worker is running (from the workload JSON in its Celery tasks' arguments)."""
    control = CeleryWorkers(broker_url, timeout_s=2)
    try:
        host = f"celery@{worker}"
        active = control.app.control.inspect(destination=[host], timeout=2).active() or {}
        return sorted(set(re.findall(r"task_id\W+(t\d+)", str(active.get(host)))))
    finally:
        control.close()


