"""Turns simulation runs into bench/results/: summary.json, table.md and one PNG per scenario."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from bench.model import MODES  # noqa: E402
from bench.sim import RunResult  # noqa: E402

SUMMARY_KEYS = (
    "makespan_s",
    "p50_queue_wait_s",
    "p95_queue_wait_s",
    "max_replicas",
    "worker_pod_minutes",
    "evicted_tasks",
    "task_pool_node_minutes",
)


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def mode_summary(run: RunResult) -> dict[str, Any]:
    """The figures of one mode in one scenario (the SUMMARY_KEYS, then the extras)."""
    waits = run.queue_waits()
    return {
        "makespan_s": _round(run.makespan_s),
        "p50_queue_wait_s": _round(percentile(waits, 50)),
        "p95_queue_wait_s": _round(percentile(waits, 95)),
        "max_replicas": run.max_replicas(),
        "worker_pod_minutes": _round(run.pod_minutes()),
        "evicted_tasks": run.evicted_tasks,
        "task_pool_node_minutes": _round(run.node_minutes("task")),
        # Extras: tasks that used up their retries; nodes of the pool the workers run on.
        "failed_tasks": run.failed_tasks,
        "worker_pool_node_minutes": _round(run.node_minutes("worker")),
    }


def simulated_limit(scenario) -> dict[str, float]:
    """What no autoscaler can beat in a simulated scenario (issue 12, item 5): its last task's end if every task
    started on arrival, plus one worker pod start (start-up + boot; the image already on the node); and the
    worker pod-seconds of perfect packing (task-seconds / concurrency). bench.real_k8s.limits is the real runs'."""
    worker = scenario.setup.worker
    pod_start = worker.startup_s + worker.boot_s
    return {
        "makespan_limit_s": max(t.arrival_s + t.duration_s for t in scenario.tasks) + pod_start,
        "pod_seconds_limit": sum(t.duration_s for t in scenario.tasks) / scenario.setup.celery.concurrency,
    }


def _minutes(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f}"


def _num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_table(summary: dict[str, Any], path: Path) -> None:
    lines = [
        "# Scaling benchmark: HPA vs KEDA vs task-aware",
        "",
        "Simulated with `python -m bench.scaling` (model and sources: bench/README.md). Every mode gets the same",
        "tasks and the same controller clocks; figures are deterministic.",
        "",
    ]
    cal = summary.get("calibration")
    if cal:
        lines += [
            "## Calibration against the seed's experiment (seed-000)",
            "",
            "| | seed (EKS, blog post) | model |",
            "|---|---|---|",
            f"| HPA replicas | {cal['seed']['hpa_sequence']} | {cal['model']['hpa_sequence']} |",
            f"| HPA makespan | ~{cal['seed']['hpa_makespan_s'] / 60:.0f} min | {_minutes(cal['model']['hpa_makespan_s'])} min |",
            f"| KEDA replicas | {cal['seed']['keda_sequence']} | {cal['model']['keda_sequence']} |",
            f"| KEDA makespan | ~{cal['seed']['keda_makespan_s'] / 60:.0f} min | {_minutes(cal['model']['keda_makespan_s'])} min |",
            "",
            cal["residual"],
            "",
        ]
    lines += ["## Scenarios", ""]
    stock = summary.get("stock_cluster_autoscaler", {})
    for name, modes in summary["scenarios"].items():
        meta = summary.get("scenario_info", {}).get(name, {})
        lines += [f"### {name}", "", meta.get("description", ""), ""]
        lines += [
            "| mode | makespan (min) | p50 / p95 queue wait (s) | max replicas | worker pod-min | evicted | failed "
            "| task-pool node-min (3m / stock 10m CA) | worker-pool node-min |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for mode in MODES:
            row = modes[mode]
            stock_nodes = stock.get(name, {}).get(mode)
            lines.append(
                f"| {mode} | {_minutes(row['makespan_s'])} | {_num(row['p50_queue_wait_s'])} / {_num(row['p95_queue_wait_s'])} "
                f"| {row['max_replicas']} | {_num(row['worker_pod_minutes'])} | {row['evicted_tasks']} | {row['failed_tasks']} "
                f"| {_num(row['task_pool_node_minutes'])} / {_num(stock_nodes)} | {_num(row['worker_pool_node_minutes'])} |"
            )
        lines += ["", f"![{name}]({name}.png)", ""]
    robust = summary.get("evictions_over_seeds")
    if robust:
        lines += [
            "## Evictions over workload draws",
            "",
            f"The eviction-prone scenarios re-drawn with {robust['draws']} workload seeds (same model): evicted task",
            "attempts per draw (failed tasks in brackets).",
            "",
            "| scenario | " + " | ".join(MODES) + " |",
            "|---|" + "---|" * len(MODES),
        ]
        for name, per_mode in robust["scenarios"].items():
            cells = [
                " ".join(f"{e}" + (f"({f})" if f else "") for e, f in zip(per_mode[m]["evicted"], per_mode[m]["failed"]))
                for m in MODES
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if (path.parent / "real.md").exists():
        lines += ["## Real run", "", "On real Airflow, Celery, PostgreSQL and Redis (local processes): [real.md](real.md).", ""]
    path.write_text("\n".join(lines))


def plot_scenario(name: str, runs: dict[str, RunResult], path: Path) -> None:
    """Replicas and running tasks over time, one column per mode (like the seed's Grafana panels)."""
    horizon = max(r.horizon_s for r in runs.values())
    end = max(_settled_at(r) for r in runs.values())
    end_min = min(horizon, end * 1.05 + 60) / 60
    fig, axes = plt.subplots(2, len(runs), figsize=(5 * len(runs), 6), sharex=True, sharey="row", squeeze=False)
    for col, (mode, run) in enumerate(runs.items()):
        # The state at t=0 (the last sample of the warm-up), then every change after it.
        before = [s for s in run.timeline if s.t < 0]
        rows = before[-1:] + [s for s in run.timeline if s.t >= 0]
        t = [max(s.t, 0.0) / 60 for s in rows] + [end_min]
        rows.append(rows[-1])
        top, bottom = axes[0][col], axes[1][col]
        top.step(t, [s.replicas for s in rows], where="post", label="replicas (spec)", color="tab:blue")
        top.step(t, [s.ready_workers for s in rows], where="post", label="consuming workers", color="tab:green", alpha=0.7)
        if any(s.task_nodes for s in rows):
            top.step(t, [s.task_nodes for s in rows], where="post", label="task-pool nodes", color="tab:gray", ls="--")
        bottom.step(t, [s.running_tasks for s in rows], where="post", color="tab:orange", label="running tasks")
        outcome = f"makespan {_minutes(run.makespan_s)} min" if run.makespan_s is not None else f"{run.failed_tasks} task(s) failed"
        top.set_title(f"{mode}: {run.evicted_tasks} evicted, {outcome}", fontsize=10)
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3)
        bottom.set_xlabel("minutes since the first task")
        bottom.set_xlim(0, end_min)
    axes[0][0].set_ylabel("worker replicas")
    axes[1][0].set_ylabel("running tasks")
    axes[0][0].legend(fontsize=8, loc="upper right")
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)


def _settled_at(run: RunResult) -> float:
    """When the last thing changed (tasks done, workers and nodes back down)."""
    return run.timeline[-1].t if run.timeline else 0.0


def write_summary(summary: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
