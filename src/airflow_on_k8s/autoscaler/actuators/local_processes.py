"""Celery workers as local processes: the actuator for tests, demos and benchmarks.

"Replicas" are the live workers that are not shutting down. Scaling up starts new workers with unique
names (`worker-1`, `worker-2`, ...; never reused, so a Celery hostname always means one process). Removal
sends SIGTERM to the named worker's main process only, which is Celery's warm shutdown: it stops taking
tasks and exits once its running tasks are done.

Everything the actuator knows lives in `state_dir` (a pid file per worker, marker files), so a restarted
controller finds the workers it started before, like a controller re-listing pods:

    <name>.pid       the worker's main pid and start time (removed once the process is gone); the start time
                     tells a recycled pid apart (Celery rewrites its process title, so the command line cannot)
    <name>.marked    chosen for removal (the stand-in for a pod-deletion-cost annotation)
    <name>.stopping  SIGTERM sent (the stand-in for a pod's deletionTimestamp)
    leader.lock      `FileLeaderLock`, the stand-in for the Kubernetes Lease: an exclusive flock held by
                     the active controller for its whole life; the kernel drops it when that process dies.

Workers run in their own session, so signals sent to the controller or the test runner do not reach them.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from airflow_on_k8s.autoscaler.actuators import ScaleConflict, ScaleTarget, WorkerPod, WorkerView

WorkerCommand = Callable[[str], list[str]]


def airflow_worker_command(
    concurrency: int, queues: Sequence[str] = ("default",), hostname_template: str = "celery@{pod}"
) -> WorkerCommand:
    """`airflow celery worker` for worker `name`, with Celery hostname from the template."""

    def command(name: str) -> list[str]:
        return [
            sys.executable, "-m", "airflow", "celery", "worker",
            "--celery-hostname", hostname_template.replace("{pod}", name),
            "--concurrency", str(concurrency),
            "--queues", ",".join(queues),
            "--skip-serve-logs", "--without-mingle", "--without-gossip",
        ]  # fmt: skip

    return command


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None if no such running process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3 of stat); starttime is field 22, i.e. fields[19].
    return None if fields[0] in ("Z", "X") else fields[19]


class LocalProcessActuator:
    """Starts and stops worker processes built by `command(name)` (see module docstring)."""

    def __init__(
        self,
        state_dir: str | Path,
        command: WorkerCommand,
        *,
        env: dict[str, str] | None = None,
        name_prefix: str = "worker",
        log_dir: str | Path | None = None,
    ):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.command = command
        self.env = env
        self.name_prefix = name_prefix
        self.log_dir = Path(log_dir) if log_dir else self.state_dir
        self._children: dict[str, subprocess.Popen] = {}

    # --- what exists ----------------------------------------------------------------------------------------------

    def _pid_record(self, name: str) -> tuple[int, str] | None:
        try:
            pid, started = (self.state_dir / f"{name}.pid").read_text().split()
            return int(pid), started
        except (OSError, ValueError):
            return None

    def _pid(self, name: str) -> int | None:
        record = self._pid_record(name)
        return record[0] if record else None

    def _alive(self, name: str) -> bool:
        child = self._children.get(name)
        if child is not None:
            return child.poll() is None  # poll() also reaps an exited child
        record = self._pid_record(name)
        return record is not None and _start_time(record[0]) == record[1]

    def _forget_dead(self) -> list[str]:
        alive = []
        for pidfile in sorted(self.state_dir.glob("*.pid"), key=lambda p: self._number(p.stem)):
            name = pidfile.stem
            if self._alive(name):
                alive.append(name)
            else:
                for suffix in (".pid", ".marked", ".stopping"):
                    (self.state_dir / f"{name}{suffix}").unlink(missing_ok=True)
                self._children.pop(name, None)
        return alive

    def _number(self, name: str) -> int:
        tail = name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    def list_workers(self) -> list[WorkerPod]:
        return [
            WorkerPod(
                name=name,
                ready=not (self.state_dir / f"{name}.stopping").exists(),
                terminating=(self.state_dir / f"{name}.stopping").exists(),
                marked=(self.state_dir / f"{name}.marked").exists(),
            )
            for name in self._forget_dead()
        ]

    def alive(self) -> list[str]:
        """Names of the worker processes still running (including those shutting down)."""
        return self._forget_dead()

    def get_replicas(self) -> int:
        return sum(1 for w in self.list_workers() if not w.terminating)

    def observe(self) -> WorkerView:
        workers = self.list_workers()
        return WorkerView(ScaleTarget(sum(1 for w in workers if not w.terminating)), workers)

    # --- changes --------------------------------------------------------------------------------------------------

    def _next_name(self) -> str:
        counter = self.state_dir / "next-id"
        n = int(counter.read_text()) if counter.exists() else 1
        counter.write_text(str(n + 1))
        return f"{self.name_prefix}-{n}"

    def start_worker(self) -> str:
        name = self._next_name()
        log = open(self.log_dir / f"{name}.log", "ab")
        child = subprocess.Popen(
            self.command(name), env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self._children[name] = child
        (self.state_dir / f"{name}.pid").write_text(f"{child.pid} {_start_time(child.pid)}")
        return name

    def set_replicas(self, replicas: int) -> None:
        """Start workers until `replicas` are running; never stops any (removal is `remove`, by name)."""
        for _ in range(max(0, replicas - self.get_replicas())):
            self.start_worker()

    def mark_for_removal(self, names: Iterable[str]) -> None:
        for name in names:
            (self.state_dir / f"{name}.marked").touch()

    def clear_marks(self, names: Iterable[str]) -> None:
        for name in names:
            (self.state_dir / f"{name}.marked").unlink(missing_ok=True)

    def _signal(self, name: str, sig: int) -> None:
        pid = self._pid(name)
        if pid is not None and self._alive(name):
            os.kill(pid, sig)

    def remove(self, names: list[str], replicas: int | None = None, expected: ScaleTarget | None = None) -> None:
        """Warm shutdown (SIGTERM) of exactly these workers; with `expected`, only if the count is still that."""
        if expected is not None and self.get_replicas() != expected.replicas:
            raise ScaleConflict(f"{self.get_replicas()} workers run, not the {expected.replicas} read before the drain")
        for name in names:
            (self.state_dir / f"{name}.stopping").touch()
            self._signal(name, signal.SIGTERM)

    def kill(self, name: str) -> None:
        """SIGKILL a worker and its pool processes (a crash, for fault tests)."""
        pid = self._pid(name)
        if pid is not None and self._alive(name):
            os.killpg(pid, signal.SIGKILL)
        self.wait_gone([name], timeout_s=10)

    def wait_gone(self, names: Iterable[str], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        names = set(names)
        while time.monotonic() < deadline:
            if not names & set(self._forget_dead()):
                return True
            time.sleep(0.2)
        return False

    def kill_all(self) -> None:
        """SIGKILL every worker's process group (test teardown, when nothing they run matters any more)."""
        for name in self.alive():
            pid = self._pid(name)
            if pid is not None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.wait_gone(self.alive(), 10)

    def stop_all(self, timeout_s: float = 30) -> None:
        """Warm-shut-down every worker; SIGKILL the process groups of those still running after `timeout_s`."""
        names = self.alive()
        self.remove(names)
        if not self.wait_gone(names, timeout_s):
            for name in self.alive():
                pid = self._pid(name)
                if pid is not None:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            self.wait_gone(names, 10)


class FileLeaderLock:
    """The local stand-in for a Kubernetes Lease: an exclusive, non-blocking flock on `path`.

    Held from the first successful `try_acquire` until `release` or the holder's death (the kernel releases
    flocks of dead processes), so a second controller on the same state dir never acts.
    """

    retry_period_s = 1.0

    def __init__(self, path: str | Path, identity: str | None = None):
        self.path = Path(path)
        self.identity = identity or f"pid-{os.getpid()}"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, self.identity.encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text()
        except OSError:
            return ""

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
