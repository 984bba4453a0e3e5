"""`python -m bench.scaling --real`: the comparison on real Airflow 3, Celery, PostgreSQL and Redis.

What runs, all on this machine: PostgreSQL and Redis (airflow_on_k8s/testing/local_services.py), Airflow's api-server
(execution API) and scheduler with the CeleryExecutor (tests/autoscaler/airflow_stack.py, the
autoscaler's end-to-end harness, reused rather than duplicated), and `airflow celery worker`
processes started and stopped by the local-process actuator. The same DAG runs twice:

* `keda-like`: the Airflow chart's KEDA query over the metadata DB, ceil((queued + running) /
  concurrency), through this package's port of the HPA rules with the project's KEDA scale-down
  behavior; removal is blind: the newest workers get SIGTERM, which is what a ReplicaSet does when no
  pod carries a pod-deletion-cost.
* `task-aware`: `python -m airflow_on_k8s.autoscaler --actuator local`, the project's real controller and policy.

In both, a kubelet stand-in SIGKILLs a removed worker's whole process session once its grace period
is over (terminationGracePeriodSeconds): tasks still running die, Airflow notices the missing
heartbeat and retries them (retries=2). Every duration is scaled down (REAL_TIMES) so both runs finish
in a few minutes; the scaling rules themselves are unchanged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = 2
MIN_WORKERS, MAX_WORKERS = 1, 4
SHORT_TASKS, SHORT_S = 10, 15
LONG_TASKS, LONG_S = 3, 90

# The deployed value -> the value in this run (seconds).
REAL_TIMES = {
    "terminationGracePeriodSeconds (600)": 20,
    "[scheduler] task_instance_heartbeat_timeout (300)": 20,
    "retry_delay (300)": 2,
    "controller poll / HPA sync (10 / 15)": 3,
    "scale-down stabilization (120, both modes)": 30,
    "scale-down rate: 1 worker per (60, both modes)": 15,
    "task-aware drain timeout (300)": 60,
}
GRACE_S = REAL_TIMES["terminationGracePeriodSeconds (600)"]
POLL_S = REAL_TIMES["controller poll / HPA sync (10 / 15)"]
DOWN_WINDOW_S = REAL_TIMES["scale-down stabilization (120, both modes)"]
DOWN_PERIOD_S = REAL_TIMES["scale-down rate: 1 worker per (60, both modes)"]


def dag_source(dag_id: str) -> str:
    return f'''
import time
from airflow.sdk import DAG, task

with DAG("{dag_id}", schedule=None, default_args={{"retries": 2, "retry_delay": {REAL_TIMES["retry_delay (300)"]}}}):
    @task
    def work(seconds):
        time.sleep(seconds)

    # The long tasks are queued last (lower priority), so they run on the workers started for the burst.
    for i in range({SHORT_TASKS}):
        work.override(task_id=f"short_{{i:02d}}", priority_weight=10)({SHORT_S})
    for i in range({LONG_TASKS}):
        work.override(task_id=f"long_{{i}}", priority_weight=1)({LONG_S})
'''


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # stat field 6: session id
            pids.append(int(entry.name))
    return pids


def _pid_of(pid_file: Path) -> int | None:
    """The worker's main pid from the local actuator's pid file (first field), if readable."""
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def live_workers(state_dir: Path) -> list[str]:
    """Worker names whose main process runs, read-only: the actuator in charge owns the pid files."""
    return sorted(
        (f.stem for f in state_dir.glob("*.pid") if (pid := _pid_of(f)) is not None and _running(pid)),
        key=lambda n: int(n.rsplit("-", 1)[1]),
    )


def kill_session(pid: int) -> int:
    """SIGKILL every process of the session `pid` leads (a worker and its task processes: its "container")."""
    pids = _session_pids(pid)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def kill_all_workers(state_dir: Path) -> None:
    for pid_file in state_dir.glob("*.pid"):
        pid = _pid_of(pid_file)
        if pid is not None:
            kill_session(pid)


class Kubelet:
    """SIGKILLs the whole session (the container) of a worker still alive `grace_s` after its SIGTERM."""

    def __init__(self, state_dir: Path, grace_s: float):
        self.state_dir, self.grace_s = state_dir, grace_s
        self.sigterm_seen: dict[str, float] = {}
        self.killed: list[str] = []

    def tick(self) -> None:
        now = time.monotonic()
        for marker in self.state_dir.glob("*.stopping"):
            name = marker.stem
            first = self.sigterm_seen.setdefault(name, now)
            pid = _pid_of(self.state_dir / f"{name}.pid")
            if now - first < self.grace_s or name in self.killed or pid is None:
                continue
            if kill_session(pid):
                self.killed.append(name)


class BlindKedaLike:
    """KEDA's chart query -> the HPA rules (bench.hpa) -> scale; scale-down removes the newest workers."""

    def __init__(self, db_url: str, actuator):
        from bench.hpa import DEFAULT_BEHAVIOR, Behavior, HorizontalController, ScalingPolicy, ScalingRules
        from airflow_on_k8s.autoscaler.signals.airflow_db import AirflowDbSignal, ExecutorFilter

        self.load = AirflowDbSignal(db_url, ExecutorFilter.from_airflow_setting("CeleryExecutor"))
        self.actuator = actuator
        # The project's KEDA behavior (airflow_on_k8s/airflow/component.py), time-scaled: 1 pod per period after the window.
        scale_down = ScalingRules((ScalingPolicy("Pods", 1, DOWN_PERIOD_S),), DOWN_WINDOW_S)
        self.hpa = HorizontalController(MIN_WORKERS, MAX_WORKERS, behavior=Behavior(DEFAULT_BEHAVIOR.scale_up, scale_down))

    def step(self) -> None:
        from bench.hpa import external_average_value_replicas
        from bench.keda import airflow_chart_query

        metric = airflow_chart_query(sum(q.queued + q.running for q in self.load.read()), CONCURRENCY)
        live = [w.name for w in self.actuator.list_workers() if not w.terminating]
        current = len(live)
        computed = external_average_value_replicas(current, metric, 1.0, 0.1) if current else None
        desired = self.hpa.reconcile(time.monotonic(), current, computed)
        if desired > current:
            self.actuator.set_replicas(desired)
        elif desired < current:
            self.actuator.remove(newest_first(live)[: current - desired])

    def close(self) -> None:
        self.load.close()


def newest_first(names: list[str]) -> list[str]:
    """Workers in the order a ReplicaSet deletes equal-cost pods: the most recently created first."""
    return sorted(names, key=lambda n: int(n.rsplit("-", 1)[1]), reverse=True)


@dataclass
class RealRun:
    mode: str
    makespan_s: float | None
    evicted_tasks: int  # task attempts that did not finish: try_number - 1 summed, + failed
    failed_tasks: int
    workers_killed_at_grace_end: int
    peak_workers: int
    worker_seconds: float
    timeline: list = field(default_factory=list)  # (t, live workers, running tasks)


class RunawayWorkers(RuntimeError):
    """More worker processes than any mode may start: the run is stopped before it loads the machine."""


def run_mode(mode: str, pg, redis, redis_db: int, work: Path) -> RealRun:
    from tests.autoscaler.airflow_stack import AirflowStack
    from airflow_on_k8s.autoscaler.actuators.local_processes import LocalProcessActuator, airflow_worker_command
    from airflow_on_k8s.autoscaler.signals.celery_inspect import CeleryWorkers

    database = f"bench_{mode.replace('-', '_')}"
    pg.create_database(database, template="airflow")
    stack = AirflowStack(pg, database, redis, redis_db, work / mode, CONCURRENCY)
    stack.env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] = str(
        REAL_TIMES["[scheduler] task_instance_heartbeat_timeout (300)"]
    )
    state = work / mode / "workers"
    state.mkdir(parents=True)
    kubelet = Kubelet(state, GRACE_S)
    controller_proc = None
    blind = None
    celery = CeleryWorkers(stack.broker_url, timeout_s=2.0)
    lifetimes: dict[str, list[float]] = {}
    try:
        stack.start()
        # One actuator per state dir: the task-aware controller's own, or ours for the keda-like loop.
        if mode == "task-aware":
            args = [
                "--actuator", "local", "--local-state-dir", str(state), "--identity", "bench",
                "--metrics-host", "127.0.0.1", "--metrics-port", "0",
                "--min-workers", str(MIN_WORKERS), "--max-workers", str(MAX_WORKERS),
                "--worker-concurrency", str(CONCURRENCY), "--poll-interval-s", str(POLL_S),
                "--scale-down-stabilization-s", str(DOWN_WINDOW_S), "--scale-down-cooldown-s", str(DOWN_PERIOD_S),
                "--scale-down-max-step", "1", "--drain-timeout-s", str(REAL_TIMES["task-aware drain timeout (300)"]),
            ]  # fmt: skip
            log = open(work / mode / "controller.log", "ab")
            controller_proc = subprocess.Popen(
                [sys.executable, "-m", "airflow_on_k8s.autoscaler", *args], env=stack.env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
            )
            log.close()
        else:
            actuator = LocalProcessActuator(state, airflow_worker_command(CONCURRENCY), env=stack.env)
            actuator.set_replicas(MIN_WORKERS)
            blind = BlindKedaLike(stack.db_url, actuator)
        # Both modes start from one idle, consuming worker.
        deadline = time.monotonic() + 180
        while not celery.ping() and time.monotonic() < deadline:
            _check_runaway(state)
            time.sleep(1.0)
        dag_id, run_id = "bench_real", f"{mode}-1"
        stack.add_dag(dag_id, dag_source(dag_id))
        started = time.monotonic()
        stack.trigger(dag_id, run_id)
        timeline, next_step, deadline = [], 0.0, started + 600
        while time.monotonic() < deadline:
            now = time.monotonic()
            if blind is not None and now >= next_step:
                blind.step()
                next_step = now + POLL_S
            kubelet.tick()
            alive = _check_runaway(state)
            for name in alive:
                lifetimes.setdefault(name, [now, now])[1] = now
            tis = stack.task_instances(dag_id, run_id)
            timeline.append((round(now - started, 1), len(alive), sum(1 for t in tis if t[1] == "running")))
            done = tis and all(t[1] in ("success", "failed") for t in tis)
            if done and len(alive) <= MIN_WORKERS:
                break
            time.sleep(1.0)
        tis = stack.task_instances(dag_id, run_id)
        span = _run_span_s(stack, dag_id, run_id)
        failed = sum(1 for t in tis if t[1] == "failed")
        all_ok = bool(tis) and all(t[1] == "success" for t in tis)
        return RealRun(
            mode=mode,
            makespan_s=round(span, 1) if all_ok and span is not None else None,
            evicted_tasks=sum(t[2] - 1 for t in tis) + failed,
            failed_tasks=failed,
            workers_killed_at_grace_end=len(kubelet.killed),
            peak_workers=max((n for _, n, _ in timeline), default=0),
            worker_seconds=round(sum(b - a for a, b in lifetimes.values()), 1),
            timeline=timeline,
        )
    finally:
        if controller_proc is not None:
            controller_proc.terminate()
            try:
                controller_proc.wait(30)
            except subprocess.TimeoutExpired:
                controller_proc.kill()
                controller_proc.wait()
        if blind is not None:
            blind.close()
        celery.close()
        kill_all_workers(state)
        stack.stop()


def _check_runaway(state: Path) -> list[str]:
    alive = live_workers(state)
    if len(alive) > 2 * MAX_WORKERS:
        kill_all_workers(state)
        raise RunawayWorkers(f"{len(alive)} worker processes alive (at most {MAX_WORKERS} expected); stopped them all")
    return alive


def _run_span_s(stack, dag_id: str, run_id: str) -> float | None:
    """Seconds from the run's first queued task to its last end."""
    import psycopg2

    conn = psycopg2.connect(stack.pg.dsn(stack.database))
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT EXTRACT(EPOCH FROM max(end_date) - min(queued_dttm)) FROM task_instance "
                "WHERE dag_id = %s AND run_id = %s",
                (dag_id, run_id),
            )
            (value,) = cur.fetchone()
            return float(value) if value is not None else None
    finally:
        conn.close()


def write_results(runs: list[RealRun], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "real.json").write_text(json.dumps({"times_scaled": REAL_TIMES, "runs": [asdict(r) for r in runs]}, indent=2) + "\n")
    lines = [
        "# Real run: keda-like (blind scale-down) vs task-aware",
        "",
        f"`python -m bench.scaling --real`: real Airflow 3 (api-server + scheduler, CeleryExecutor), PostgreSQL, Redis and "
        f"`airflow celery worker` processes (concurrency {CONCURRENCY}, {MIN_WORKERS}-{MAX_WORKERS} workers). One DAG run of "
        f"{SHORT_TASKS} tasks of {SHORT_S} s and {LONG_TASKS} of {LONG_S} s; the long ones are still running when the short "
        "ones are done and both modes scale down.",
        "",
        "| mode | makespan (s) | evicted task attempts | failed | workers SIGKILLed at grace end | peak workers | worker-seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r.mode} | {r.makespan_s if r.makespan_s is not None else 'n/a'} | {r.evicted_tasks} | {r.failed_tasks} "
            f"| {r.workers_killed_at_grace_end} | {r.peak_workers} | {r.worker_seconds} |"
        )
    lines += ["", "Durations scaled down for the run (deployed value -> here, seconds):", ""]
    lines += [f"- {k} -> {v}" for k, v in REAL_TIMES.items()]
    lines += ["", "![real run](real.png)"]
    (out / "real.md").write_text("\n".join(lines) + "\n")
    plot_real(runs, out / "real.png")


def plot_real(runs: list[RealRun], path: Path) -> None:
    """Worker processes and running tasks over time, one column per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 3.5), sharey=True, squeeze=False)
    for ax, run in zip(axes[0], runs):
        t = [row[0] for row in run.timeline]
        ax.step(t, [row[1] for row in run.timeline], where="post", label="worker processes", color="tab:blue")
        ax.step(t, [row[2] for row in run.timeline], where="post", label="running tasks", color="tab:orange")
        outcome = f"makespan {run.makespan_s} s" if run.makespan_s is not None else f"{run.failed_tasks} failed"
        ax.set_title(f"{run.mode}: {run.evicted_tasks} evicted, {outcome}", fontsize=10)
        ax.set_xlabel("seconds since the DAG run was triggered")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)


def main(out: Path) -> int:
    import tempfile

    from airflow_on_k8s.testing.local_services import migrate_airflow_db, postgres_server, redis_server

    with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp, postgres_server("airflow") as pg, redis_server() as redis:
        work = Path(tmp)
        print("migrating the Airflow schema...", file=sys.stderr)
        migrate_airflow_db(pg.url("airflow"), work / "migrate-home")
        runs = []
        for i, mode in enumerate(("keda-like", "task-aware")):
            print(f"running {mode}...", file=sys.stderr)
            run = run_mode(mode, pg, redis, 10 + i, work)
            print(f"  {mode}: makespan {run.makespan_s} s, evicted {run.evicted_tasks}, killed workers "
                  f"{run.workers_killed_at_grace_end}", file=sys.stderr)
            runs.append(run)
    write_results(runs, out)
    print((out / "real.md").read_text())
    return 0 if all(r.makespan_s is not None or r.failed_tasks for r in runs) else 1

