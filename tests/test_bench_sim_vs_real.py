"""bench/sim_vs_real.py on a hand-written, synthetic real-results file (no control plane): the mapping keeps the
real scenario's tasks, order and clocks; the comparison flags differences above 10 % and explains each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import sim_vs_real
from bench.scaling import main as scaling_main

FIXTURE = Path(__file__).parent / "fixtures" / "bench" / "real-k8s-synthetic.json"


@pytest.fixture(scope="module")
def doc() -> dict:
    return json.loads(FIXTURE.read_text())


def test_mapping_keeps_tasks_order_clocks_and_bounds(doc):
    runs = {r["mode"]: r for r in doc["runs"]}
    setup, sources = sim_vs_real.setup_for(doc, "tiny", runs)
    scenario = sim_vs_real.scenario_for(doc, "tiny", setup)
    # Same task count and durations; the priority-5 tasks are queued first (Airflow's priority_weight order).
    assert [t.duration_s for t in scenario.tasks] == [20, 20, 30, 30, 30, 30]
    assert all(t.arrival_s == 0 and t.cpu_m == 80 for t in scenario.tasks)
    assert (setup.min_workers, setup.max_workers) == (1, 3)
    assert setup.worker.request_m == 100 and setup.worker.limit_m is None
    assert setup.worker.startup_s + setup.worker.boot_s == pytest.approx(8.0)  # the measured pod start
    assert setup.worker.termination_grace_s == 20 and setup.airflow.heartbeat_timeout_s == 20
    assert setup.airflow.retry_delay_s == 2 and setup.hpa_flags.sync_period_s == 3
    assert setup.metrics_resolution_s == 10 and setup.keda.params.polling_interval_s == 2
    assert setup.task_aware.poll_interval_s == 3
    assert setup.task_aware.policy.scale_down_stabilization_s == 30
    assert setup.worker_pool.static_nodes == 2
    assert "pod boot (process -> Celery consuming)" in sources


def test_curve_figures_read_the_timeline(doc):
    keda = next(r for r in doc["runs"] if r["mode"] == "keda")
    c = sim_vs_real.curve_figures(keda)
    assert c.lead_in_s == 3.0 and c.task_start_s == 1.0
    assert c.scale_up_lags_s == ((2, 11.0),)  # replicas 1 -> 3 at 5 s (2 pods added), running 2 -> 6 at 16 s


def test_boot_fit_recovers_shared_cores():
    # Synthetic points drawn from start-up 1 + 2 s x max(1, k / 1) + task start 1.
    points = [(1, 4.0), (2, 6.0), (3, 8.0), (4, 10.0)]
    assert sim_vs_real.fit_boot(points, 1.0, 1.0) == (2.0, 1.0)


def test_boots_sharing_cores_take_longer_together(doc):
    runs = {r["mode"]: r for r in doc["runs"]}
    setup, _ = sim_vs_real.setup_for(doc, "tiny", runs, boot_s=3.0, boot_cores=1.0)
    scenario = sim_vs_real.scenario_for(doc, "tiny", setup)
    from bench.sim import simulate

    run = simulate(setup, list(scenario.tasks), "task-aware", scenario.horizon_s, 0)
    new = [p for p in run.pods if p.created_at >= 0 and p.started_at is not None]
    assert len(new) == 2  # 1 -> 3 workers: two pods start together
    boots = sorted(round(p.consuming_at - p.started_at, 6) for p in new)
    assert boots == [6.0, 6.0]  # 3 s x 2 pods / 1 core, each


def test_task_start_delays_the_simulated_tasks(doc):
    runs = {r["mode"]: r for r in doc["runs"]}
    base, _ = sim_vs_real.setup_for(doc, "tiny", runs)
    slow, _ = sim_vs_real.setup_for(doc, "tiny", runs, task_start_s=2.0)
    scenario = sim_vs_real.scenario_for(doc, "tiny", base)
    from bench.sim import simulate

    a = simulate(base, list(scenario.tasks), "keda", scenario.horizon_s, 0)
    b = simulate(slow, list(scenario.tasks), "keda", scenario.horizon_s, 0)
    assert min(b.queue_waits()) == pytest.approx(min(a.queue_waits()) + 2.0)
    assert b.makespan_s > a.makespan_s


def test_differences_above_ten_percent_are_flagged_and_explained(doc, tmp_path):
    cmp = sim_vs_real.write_comparison(doc, tmp_path, str(FIXTURE), seeds=range(3))
    for variant in ("measured", "recalibrated"):
        rows = {r["mode"]: r for r in cmp["variants"][variant]}
        assert rows["hpa"]["status"].startswith("unavailable")
        ta = rows["task-aware"]["figures"]
        # The fixture's task-aware row is impossible for the model (9 replicas with max 3; 5 evictions): flagged.
        assert ta["max_replicas"]["flagged"] and ta["max_replicas"]["sim"] <= 3
        assert ta["evicted_task_attempts"]["flagged"] and ta["evicted_task_attempts"]["diff_pct"] == -100
        assert ta["worker_pod_seconds"]["flagged"]
        for key, f in ta.items():
            d = f["diff_pct"]
            assert f["flagged"] == (d is not None and abs(d) > 10), key
    md = (tmp_path / "sim-vs-real.md").read_text()
    assert (tmp_path / "sim-vs-real.json").exists() and (tmp_path / "sim-vs-real.png").exists()
    # Every flagged cell has its line in the explanation section of its variant.
    for variant, section in (("measured", md.split("### Flagged differences (measured)")[1].split("## ")[0]),
                             ("recalibrated", md.split("### Flagged differences (recalibrated)")[1].split("## ")[0])):
        flagged = [(r["mode"], k) for r in cmp["variants"][variant] if r["status"] == "ok"
                   for k, f in r["figures"].items() if f["flagged"]]
        assert flagged
        for mode, key in flagged:
            line = next(l for l in section.splitlines() if l.startswith(f"- **tiny / {mode} / {key}**"))
            assert len(line.split("): ", 1)[1]) > 20


def test_cli_flag_writes_the_comparison(tmp_path):
    assert scaling_main(["--real-k8s-compare", "--real-k8s-results", str(FIXTURE), "--out", str(tmp_path)]) == 0
    assert "| tiny | keda |" in (tmp_path / "sim-vs-real.md").read_text()
    assert scaling_main(["--real-k8s-compare", "--out", str(tmp_path / "empty")]) == 2
