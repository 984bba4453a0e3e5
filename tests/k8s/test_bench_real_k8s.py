"""`python -m bench.scaling --real-k8s` end to end, in its smallest configuration: the seed's experiment with 30 s
tasks (--quick), for real KEDA and the task-aware autoscaler, on a control plane of its own (the command starts
everything it needs). Asserts the result files' structure and what the runs must show: every task succeeds, both
modes reach ceil(8 tasks / concurrency 2) = 4 replicas, and the task-aware mode kills no task.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.k8s]

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_KEYS = {
    "scenario", "mode", "status", "makespan_s", "p50_queue_wait_s", "p95_queue_wait_s", "max_replicas",
    "worker_pod_seconds", "evicted_task_attempts", "failed_tasks", "succeeded_tasks", "tasks", "pods_sigkilled",
    "pod_start_s", "wall_s", "settings", "timeline", "controller_view", "makespan_x_limit", "pod_seconds_x_limit",
}


def test_real_k8s_quick_run_writes_the_table_and_task_aware_evicts_nothing(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.scaling", "--real-k8s", "--quick", "--mode", "keda", "--mode", "task-aware",
         "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=840,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    for suffix in ("json", "md", "png"):
        assert (out / f"real-k8s.{suffix}").stat().st_size > 0
    doc = json.loads((out / "real-k8s.json").read_text())
    assert {"command", "times_scaled", "scenarios", "runs", "cpu"} <= set(doc)
    limit = doc["scenarios"]["seed-000"]["limit"]
    assert limit["longest_chain_s"] == 30 and limit["pod_seconds_limit"] == 8 * 30 / 2
    runs = {r["mode"]: r for r in doc["runs"]}
    assert set(runs) == {"keda", "task-aware"}
    for mode, run in runs.items():
        assert RUN_KEYS <= set(run), (mode, RUN_KEYS - set(run))
        assert run["status"] == "ok", (mode, run["status"])
        assert run["succeeded_tasks"] == run["tasks"] == 8 and run["failed_tasks"] == 0, (mode, run)
        assert run["max_replicas"] == 4, (mode, run["max_replicas"])  # ceil(8 queued / concurrency 2)
        # Nothing beats the limit: the run takes at least the longest task plus one pod start.
        assert run["makespan_s"] >= limit["longest_chain_s"]
        assert run["makespan_x_limit"] is not None and run["pod_seconds_x_limit"] >= 1.0
        assert run["timeline"] and len(run["timeline"][0]) == 5
    task_aware = runs["task-aware"]
    assert task_aware["evicted_task_attempts"] == 0 and task_aware["pods_sigkilled"] == 0
    # The KEDA run used the program's ScaledObject (the chart's query) through real KEDA.
    trigger = runs["keda"]["settings"]["scaled_object"]["spec"]["triggers"][0]
    assert trigger["type"] == "postgresql" and "ceil(COUNT(*)::decimal / 2)" in trigger["metadata"]["query"]
    # What KEDA's HPA read is recorded with the curves: the query's value (ceil(8 / 2) = 4 workers' worth, spread
    # over the current replicas as an average) and the replicas it wanted; the task-aware mode has no HPA.
    views = [view for _, view in runs["keda"]["controller_view"]]
    assert views and max(v.get("desired") or 0 for v in views) == 4, views[:5]
    assert any(v.get("external_average") not in (None, "0") for v in views), views[:5]
    assert runs["task-aware"]["controller_view"] == []
    table = (out / "real-k8s.md").read_text()
    assert "| seed-000 | keda |" in table and "| seed-000 | task-aware |" in table
    assert "-> 30" in table or "300 s -> 30 s" in table  # the scaled durations are stated
