"""Throwaway PostgreSQL and Redis servers, and an Airflow metadata DB on them, for tests and benchmarks.

Everything listens on 127.0.0.1 on a free port, keeps its data in a temp dir and is gone after the
`with` block::

    from airflow_on_k8s.testing.local_services import postgres_server, redis_server, migrate_airflow_db

    with postgres_server() as pg, redis_server() as redis:
        migrate_airflow_db(pg.url())            # Airflow's real schema, ~5-10 s
        ...                                     # pg.url(), redis.url(0)
        pg.stop(); pg.start()                   # simulate an outage; same port and data afterwards

PostgreSQL refuses to run as root, so its data dir belongs to the `postgres` OS user and every server
command runs through `runuser -u postgres` when the caller is root. Durability is switched off
(fsync, synchronous_commit): these databases live for one test session.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_OS_USER = "postgres"


class ServiceError(RuntimeError):
    """A local service did not start or stop; the message carries the tail of its log."""


# Ports handed out by this process: never twice, even once the server that took one has stopped.
_handed_out: set[int] = set()
# The lowest port free_port picks from; everything from here to the kernel's ephemeral range is ours to try.
_LOWEST_PORT = 15000


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing holds right now, below the kernel's ephemeral range.

    A port from `bind(("127.0.0.1", 0))` comes from the ephemeral range, which every outgoing connection also
    draws from (net.ipv4.ip_local_port_range): between this call and the server's own bind a client connection
    of the suite's can take it, and the server fails with "address already in use". Below the range only
    another listener can, so pick there, at random (several processes call this), never the same one twice.
    """
    low, _ = _ephemeral_range()
    candidates = [p for p in range(_LOWEST_PORT, low) if p not in _handed_out]
    random.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    # A kernel whose ephemeral range starts too low for that: let it choose.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _handed_out.add(port)
    return port


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", PG_OS_USER, "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in `data_dir`, listening on 127.0.0.1:`port`, trust auth for user postgres."""

    data_dir: Path
    port: int
    database: str = "airflow"
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.parent / "postgres.log"

    def url(self, database: str | None = None, driver: str = "postgresql+psycopg2") -> str:
        """SQLAlchemy URL (Airflow's sql_alchemy_conn form); driver="postgresql" for libpq/psycopg2.connect."""
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database or self.database}"

    def dsn(self, database: str | None = None) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database or self.database}"

    def initdb(self) -> None:
        subprocess.run(
            _as_postgres(
                [str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                 "--no-sync", "--locale=C"]
            ),
            check=True,
            capture_output=True,
        )
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# airflow_on_k8s.testing.local_services: throwaway server\n"
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.data_dir}'\n"
                "max_connections = 300\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )

    def start(self, timeout: float = 30) -> None:
        result = subprocess.run(
            _as_postgres(
                [str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t",
                 str(int(timeout)), "start"]
            ),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise ServiceError(f"postgres did not start: {result.stderr.strip()}\n{_tail(self.log_path)}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" closes sessions cleanly, "immediate" is a crash (no checkpoint)."""
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"]),
            capture_output=True,
        )

    @property
    def running(self) -> bool:
        return _port_open(self.port)

    def create_database(self, name: str, template: str | None = None) -> None:
        """Create database `name`, empty or as a copy of `template` (a cheap way to reuse one migrated schema)."""
        import psycopg2

        conn = psycopg2.connect(self.dsn("postgres"))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        finally:
            conn.close()


@contextlib.contextmanager
def postgres_server(database: str = "airflow") -> Iterator[PostgresServer]:
    """A fresh PostgreSQL 15 server with an empty `database`, stopped and deleted on exit."""
    base = Path(tempfile.mkdtemp(prefix="pg-"))
    data = base / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, PG_OS_USER)
        shutil.chown(data, PG_OS_USER)
    server = PostgresServer(data_dir=data, port=free_port(), database=database)
    try:
        server.initdb()
        server.start()
        server.create_database(database)
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class RedisServer:
    """A redis-server on 127.0.0.1:`port` with no persistence (nothing survives a restart)."""

    port: int
    work_dir: Path
    databases: int = 64  # logical DBs, so each test can have its own broker and result DB
    process: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 15) -> None:
        log = open(self.work_dir / "redis.log", "ab")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.work_dir), "--protected-mode", "no", "--databases", str(self.databases)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceError(f"redis-server exited: {_tail(self.work_dir / 'redis.log')}")
            if _port_open(self.port):
                return
            time.sleep(0.05)
        raise ServiceError(f"redis-server not listening on {self.port} after {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None and _port_open(self.port)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server, stopped and its temp dir deleted on exit."""
    work_dir = Path(tempfile.mkdtemp(prefix="redis-"))
    server = RedisServer(port=free_port(), work_dir=work_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(work_dir, ignore_errors=True)


def airflow_env(db_url: str, airflow_home: str | Path, **config: str) -> dict[str, str]:
    """Environment for an Airflow process on `db_url`: this environment plus AIRFLOW_HOME, the DB and `config`.

    `config` keys are Airflow env-var names without the AIRFLOW__ prefix, e.g. CORE__EXECUTOR="CeleryExecutor".
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update(
        AIRFLOW_HOME=str(airflow_home),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=db_url,
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
    )
    env.update({f"AIRFLOW__{key}": value for key, value in config.items()})
    return env


def migrate_airflow_db(db_url: str, airflow_home: str | Path | None = None, timeout: float = 300) -> None:
    """Create Airflow's real schema on `db_url` with `airflow db migrate` (uses a temp AIRFLOW_HOME if none given)."""
    with contextlib.ExitStack() as stack:
        home = airflow_home or stack.enter_context(tempfile.TemporaryDirectory(prefix="airflow-home-"))
        result = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=airflow_env(db_url, home),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise ServiceError(f"airflow db migrate failed ({result.returncode}):\n{result.stderr[-3000:]}")
