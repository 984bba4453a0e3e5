"""The scaling benchmark: its ports of the Kubernetes/KEDA rules against hand-computed cases, the
simulator's shutdown and eviction mechanics, the calibration against the seed, and the results' shape."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bench import calibrate
from bench.hpa import (
    DEFAULT_BEHAVIOR,
    Behavior,
    CpuSample,
    HorizontalController,
    HpaControllerFlags,
    PodView,
    ScalingPolicy,
    ScalingRules,
    cpu_replicas,
    external_average_value_replicas,
)
from bench.keda import KedaOperator, KedaParams, airflow_chart_query
from bench.model import MODES, behavior_from_k8s, project_setup, seed_setup
from bench.replicaset import RsPod, deletion_order, pods_to_delete
from bench.report import SUMMARY_KEYS, percentile
from bench.scaling import run_simulated
from bench.scenarios import all_scenarios, long_and_short, seed_000
from bench.sim import Simulation, TaskSpec, simulate

FLAGS = HpaControllerFlags()
NOW = 10_000.0


def running(name: str, usage_m: float, request_m: float = 500, started_ago: float = 3600) -> PodView:
    """A pod long past its CPU initialization period with a fresh sample."""
    start = NOW - started_ago
    return PodView(name, request_m, "Running", ready=True, ready_transition=start, start_time=start,
                   sample=CpuSample(usage_m, NOW - 5, 15))


# --- HPA replica calculator (replica_calculator.go) -----------------------------------------------------

def test_hpa_scales_by_ceil_of_integer_utilization_ratio():
    # 405m of 500m = 81 % against 60 %: ceil(1 * 81/60) = 2 (the seed's first step).
    assert cpu_replicas(1, 60, [running("a", 405)], NOW, FLAGS) == (2, 81)
    # 4 pods at 80 %: ceil(4 * 80/60) = ceil(5.33) = 6.
    assert cpu_replicas(4, 60, [running(n, 400) for n in "abcd"], NOW, FLAGS) == (6, 80)


def test_hpa_utilization_is_truncated_to_an_integer_percent():
    # 404m of 500m is 80.8 %, which Kubernetes truncates to 80: 6 * 80/60 = 8, not ceil(6 * 80.8/60) = 9.
    assert cpu_replicas(6, 60, [running(n, 404) for n in "abcdef"], NOW, FLAGS) == (8, 80)


def test_hpa_keeps_size_within_tolerance():
    # 65/60 = 1.083, inside the 0.1 tolerance.
    assert cpu_replicas(3, 60, [running(n, 325) for n in "abc"], NOW, FLAGS) == (3, 65)


def test_hpa_counts_pending_pods_as_idle_on_scale_up_and_holds_if_that_flips_direction():
    pending = PodView("new", 500, "Pending")
    # Alone the ready pod says scale up (80/60); with the pending pod at 0 % it is 40 %: no change.
    assert cpu_replicas(2, 60, [running("a", 400), pending], NOW, FLAGS) == (2, 80)
    # With three busy pods the pending one at 0 % still leaves 60 %... within tolerance: no change either.
    assert cpu_replicas(4, 60, [running(n, 400) for n in "abc"] + [pending], NOW, FLAGS)[0] == 4
    # Three pods at 100 % and one pending: 300/400 = 75 % -> 1.25 -> ceil(4 * 1.25) = 5.
    assert cpu_replicas(4, 60, [running(n, 500) for n in "abc"] + [pending], NOW, FLAGS)[0] == 5


def test_hpa_assumes_missing_metrics_at_full_request_when_scaling_down():
    no_sample = PodView("b", 500, "Running", ready=True, ready_transition=0, start_time=0, sample=None)
    # One pod at 10 % says scale down; the sample-less pod counted at 100 % makes it 55 %: within tolerance.
    assert cpu_replicas(2, 60, [running("a", 50), no_sample], NOW, FLAGS)[0] == 2


def test_hpa_ignores_a_new_pods_sample_taken_before_one_window_after_ready():
    # Started 60 s ago (inside the 300 s initialization period), ready since then; sample at -50 s with a
    # 15 s window was not one full window after the ready transition (-60 + 15 = -45): set aside.
    young = PodView("young", 500, "Running", ready=True, ready_transition=NOW - 60, start_time=NOW - 60,
                    sample=CpuSample(500, NOW - 50, 15))
    # Counted, it would make (400 + 500) / 1000 = 90 % -> 3; set aside and taken as 0 %: 40 % -> hold.
    assert cpu_replicas(2, 60, [running("a", 400), young], NOW, FLAGS)[0] == 2
    later = replace(young, sample=CpuSample(500, NOW - 40, 15))
    assert cpu_replicas(2, 60, [running("a", 400), later], NOW, FLAGS)[0] == 3


def test_hpa_ignores_terminating_pods():
    leaving = replace(running("old", 0), deleting=True)
    assert cpu_replicas(1, 60, [running("a", 405), leaving], NOW, FLAGS)[0] == 2


# --- HPA normalization (horizontal.go) -------------------------------------------------------------------

def test_legacy_scale_up_limit_is_double_or_four():
    hpa = HorizontalController(min_replicas=1, max_replicas=50)
    assert hpa.reconcile(0, current=1, metric_desired=20) == 4
    assert hpa.reconcile(15, current=4, metric_desired=20) == 8
    assert hpa.reconcile(30, current=8, metric_desired=20) == 16
    assert hpa.reconcile(45, current=16, metric_desired=20) == 20


def test_legacy_scale_down_waits_for_the_highest_recommendation_of_five_minutes():
    hpa = HorizontalController(min_replicas=1, max_replicas=10)
    assert hpa.reconcile(0, current=8, metric_desired=8) == 8
    assert hpa.reconcile(15, current=8, metric_desired=2) == 8
    assert hpa.reconcile(300, current=8, metric_desired=2) == 8  # the 8 of t=0 is still in the window
    assert hpa.reconcile(301, current=8, metric_desired=2) == 2
    assert hpa.reconcile(316, current=2, metric_desired=0) == 2  # the 2s of t=300 and t=301 are in the window
    assert hpa.reconcile(700, current=2, metric_desired=0) == 1


def test_default_behavior_allows_plus_four_or_double_per_fifteen_seconds():
    hpa = HorizontalController(min_replicas=1, max_replicas=100, behavior=DEFAULT_BEHAVIOR)
    assert hpa.reconcile(0, current=2, metric_desired=40) == 6  # max(2 + 4, 2 * 2)
    assert hpa.reconcile(10, current=6, metric_desired=40) == 6  # same 15 s period: started it at 2
    assert hpa.reconcile(16, current=6, metric_desired=40) == 12  # new period: max(6 + 4, 6 * 2)
    assert hpa.reconcile(32, current=12, metric_desired=40) == 24


def test_project_keda_behavior_removes_one_pod_a_minute_after_two_quiet_minutes():
    behavior = behavior_from_k8s(
        {"scaleDown": {"stabilizationWindowSeconds": 120, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}}
    )
    assert behavior.scale_up == DEFAULT_BEHAVIOR.scale_up  # the API server's defaults fill scaleUp
    hpa = HorizontalController(min_replicas=1, max_replicas=10, behavior=behavior)
    assert hpa.reconcile(0, current=5, metric_desired=5) == 5
    assert hpa.reconcile(60, current=5, metric_desired=1) == 5  # 5 still in the 120 s window
    assert hpa.reconcile(121, current=5, metric_desired=1) == 4
    assert hpa.reconcile(151, current=4, metric_desired=1) == 4  # one pod per 60 s
    assert hpa.reconcile(182, current=4, metric_desired=1) == 3


def test_disabled_and_min_select_policies():
    rules = ScalingRules((ScalingPolicy("Pods", 1, 60), ScalingPolicy("Percent", 100, 60)), 0, "Min")
    hpa = HorizontalController(1, 20, behavior=Behavior(rules, DEFAULT_BEHAVIOR.scale_down))
    assert hpa.reconcile(0, current=4, metric_desired=10) == 5  # min(4 + 1, 4 * 2)
    frozen = Behavior(ScalingRules((), 0, "Disabled"), DEFAULT_BEHAVIOR.scale_down)
    assert HorizontalController(1, 20, behavior=frozen).reconcile(0, current=4, metric_desired=10) == 4


# --- KEDA ------------------------------------------------------------------------------------------------

def test_keda_chart_query_and_average_value_target():
    assert [airflow_chart_query(n, 2) for n in (0, 1, 2, 7, 8)] == [0, 1, 1, 4, 4]
    # The seed: 8 tasks -> query 4, target 1 per pod: 1 -> 4 in one step.
    assert external_average_value_replicas(status_replicas=1, total_usage=4, target_per_pod=1, tolerance=0.1) == 4
    assert external_average_value_replicas(4, 4, 1, 0.1) == 4
    assert external_average_value_replicas(4, 3, 1, 0.1) == 3
    assert external_average_value_replicas(10, 9.5, 1, 0.1) == 10  # 0.95 is within tolerance


def test_keda_operator_activates_from_zero_and_deactivates_after_cooldown():
    keda = KedaOperator(KedaParams(polling_interval_s=5, cooldown_period_s=120), min_replica_count=0)
    assert keda.hpa_min_replicas() == 1
    assert keda.poll(0, metric_value=0, current_replicas=0) is None
    assert keda.poll(5, metric_value=1, current_replicas=0) == 1
    assert keda.poll(10, metric_value=3, current_replicas=2) is None  # 1 <-> N is the HPA's job
    assert keda.poll(100, metric_value=0, current_replicas=2) is None  # cooling down
    assert keda.poll(130, metric_value=0, current_replicas=2) == 0
    assert KedaOperator(KedaParams(), min_replica_count=1).poll(999, 0, 1) is None  # min 1: never to zero


# --- ReplicaSet deletion order (controller_utils.go) ---------------------------------------------------

def rs_pod(name: str, **kw) -> RsPod:
    base = dict(uid=name, node="n1", phase="Running", ready=True, ready_since=0.0, created_at=0.0)
    base.update(kw)
    return RsPod(name, **base)


def test_replicaset_deletes_unscheduled_pending_and_unready_pods_first():
    pods = [
        rs_pod("ready"),
        rs_pod("unready", ready=False, ready_since=None),
        rs_pod("pending", phase="Pending", ready=False, ready_since=None),
        rs_pod("unscheduled", node=None, phase="Pending", ready=False, ready_since=None),
    ]
    assert [p.name for p in deletion_order(pods, NOW)] == ["unscheduled", "pending", "unready", "ready"]


def test_replicaset_honours_pod_deletion_cost_before_age():
    young_busy = rs_pod("young-busy", ready_since=NOW - 60, created_at=NOW - 60, deletion_cost=300)
    old_idle = rs_pod("old-idle", ready_since=NOW - 5000, created_at=NOW - 5000, deletion_cost=0)
    assert pods_to_delete([young_busy, old_idle], 1, NOW) == ["old-idle"]
    # Without costs (HPA, KEDA) the newer pod goes first, busy or not.
    assert pods_to_delete([replace(young_busy, deletion_cost=0), old_idle], 1, NOW) == ["young-busy"]


def test_replicaset_prefers_doubled_up_pods_then_log_scaled_age_with_uid_ties():
    alone = rs_pod("alone", node="n2", ready_since=NOW - 10)
    a = rs_pod("a", node="n1", ready_since=NOW - 4000)
    b = rs_pod("b", node="n1", ready_since=NOW - 4000)
    assert deletion_order([alone, a, b], NOW)[-1].name == "alone"  # 2 pods on n1 rank before 1 on n2
    # 1300 s and 1200 s ago share floor(log2(ns)) = 40: the lower UID goes first, not the newer pod.
    older = rs_pod("older", uid="0001", ready_since=NOW - 1300, created_at=NOW - 1300)
    newer = rs_pod("newer", uid="ffff", ready_since=NOW - 1200, created_at=NOW - 1200)
    assert pods_to_delete([newer, older], 1, NOW) == ["older"]
    far_older = replace(older, ready_since=NOW - 5000, created_at=NOW - 5000)
    assert pods_to_delete([newer, far_older], 1, NOW) == ["newer"]


# --- simulator mechanics ----------------------------------------------------------------------------------

def one_worker(tasks: list[TaskSpec]) -> Simulation:
    """One worker that no autoscaler moves (min = max = 1), nodes already there."""
    setup = replace(seed_setup(), min_workers=1, max_workers=1)
    return Simulation(setup, tasks, "hpa")


def test_warm_shutdown_lets_a_task_finish_within_the_grace_period():
    sim = one_worker([TaskSpec(0.0, 300.0)])
    sim.run(100)
    (pod,) = [p for p in sim.pods if p.active]
    sim._terminate(pod)
    result = sim.run(2000)
    assert result.evicted_tasks == 0
    assert pod.gone_at == pytest.approx(300 + sim.setup.worker.idle_shutdown_s)
    assert result.tasks[0].state == "done" and result.tasks[0].attempts == 1


def test_a_task_still_running_at_the_end_of_the_grace_period_is_killed_and_retried():
    sim = one_worker([TaskSpec(0.0, 1000.0)])
    sim.run(100)
    (pod,) = [p for p in sim.pods if p.active]
    sim._terminate(pod)
    sim.run(100 + 600)
    task = sim.tasks[0]
    assert pod.gone_at == 700 and task.state == "zombie" and sim.evicted == 1
    # The ReplicaSet replaced the pod; the scheduler notices after 300 s and retries after 300 s more.
    assert sim._db_loads()["default"] == (0, 1)  # still "running" in the DB meanwhile
    result = sim.run(5000)
    assert task.state == "done" and task.attempts == 2
    assert task.finished_at == pytest.approx(700 + 300 + 300 + 1000)
    assert result.evicted_tasks == 1


def test_a_killed_kpo_task_reattaches_to_its_pod_that_still_runs():
    setup = replace(project_setup(), min_workers=1, max_workers=1)
    sim = Simulation(setup, [TaskSpec(0.0, 2400.0, kind="kpo")], "hpa")
    sim.run(100)
    (pod,) = [p for p in sim.pods if p.active]
    task_pod = sim.tasks[0].task_pod
    sim._terminate(pod)
    result = sim.run(10_000)
    task = result.tasks[0]
    assert result.evicted_tasks == 1 and task.attempts == 2
    assert task.finished_at == pytest.approx(task_pod.ends_at)  # the work was not redone
    assert len(sim.task_pods) == 1


def test_task_aware_mode_never_evicts_where_blind_scale_down_does():
    per_mode = {mode: [] for mode in MODES}
    for seed in (1, 2, 3):
        scenario = long_and_short(seed)
        for mode in MODES:
            per_mode[mode].append(simulate(scenario.setup, list(scenario.tasks), mode, scenario.horizon_s, seed).evicted_tasks)
    assert per_mode["task-aware"] == [0, 0, 0]
    assert all(n > 0 for n in per_mode["keda"])  # KEDA's chart query counts tasks, not where they run
    assert sum(per_mode["hpa"]) > 0


def test_hpa_on_cpu_does_not_see_kubernetes_pod_operator_tasks():
    setup = project_setup()
    tasks = [TaskSpec(0.0, 600.0, kind="kpo") for _ in range(10)]
    hpa = simulate(setup, tasks, "hpa", 3 * 3600)
    task_aware = simulate(setup, tasks, "task-aware", 3 * 3600)
    assert hpa.max_replicas() == 1 and task_aware.max_replicas() == 5
    assert task_aware.makespan_s < hpa.makespan_s
    assert task_aware.node_minutes("task") > 0  # the pods ran on the task pool, which scaled from zero


def test_stock_cluster_autoscaler_keeps_task_nodes_longer():
    setup = project_setup()
    tasks = [TaskSpec(0.0, 300.0, kind="kpo") for _ in range(6)]
    project = simulate(setup, tasks, "task-aware", 3600)
    stock = simulate(setup.with_stock_ca(), tasks, "task-aware", 3600)
    assert setup.task_pool.scale_down_unneeded_s == 180  # airflow_on_k8s/config.py's default, 3m
    assert stock.node_minutes("task") - project.node_minutes("task") == pytest.approx(2 * 7, abs=1)


# --- calibration and results -----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 5, 11])
def test_calibration_reproduces_the_seed_within_tolerance(seed):
    scenario = seed_000()
    hpa = simulate(scenario.setup, list(scenario.tasks), "hpa", scenario.horizon_s, seed)
    keda = simulate(scenario.setup, list(scenario.tasks), "keda", scenario.horizon_s, seed)
    assert hpa.replica_sequence() == calibrate.SEED_HPA_SEQUENCE
    assert keda.replica_sequence() == calibrate.SEED_KEDA_SEQUENCE
    assert abs(hpa.makespan_s - calibrate.SEED_HPA_MAKESPAN_S) <= calibrate.MAKESPAN_TOLERANCE_S
    assert abs(keda.makespan_s - calibrate.SEED_KEDA_MAKESPAN_S) <= calibrate.MAKESPAN_TOLERANCE_S


def test_summary_json_shape_and_determinism(tmp_path):
    first = run_simulated(tmp_path / "a", only=["seed-000"])
    second = run_simulated(tmp_path / "b", only=["seed-000"])
    assert first == second
    written = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert set(written["scenarios"]["seed-000"]) == set(MODES)
    for figures in written["scenarios"]["seed-000"].values():
        assert set(SUMMARY_KEYS) <= set(figures)
    assert (tmp_path / "a" / "seed-000.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| hpa | 8." in (tmp_path / "a" / "table.md").read_text()


def test_committed_results_cover_every_scenario_and_mode():
    summary = json.loads((Path(__file__).parent.parent / "bench" / "results" / "summary.json").read_text())
    assert set(summary["scenarios"]) == {s.name for s in all_scenarios()}
    for modes in summary["scenarios"].values():
        assert set(modes) == set(MODES)
        for figures in modes.values():
            assert set(SUMMARY_KEYS) <= set(figures)


def test_percentile_interpolates_linearly():
    assert percentile([10, 20, 30, 40], 50) == 25
    assert percentile([5], 95) == 5
    assert percentile([], 50) is None


# --- the real run's own pieces ------------------------------------------------------------------------------

def test_blind_removal_takes_the_newest_workers_like_a_replicaset_without_costs():
    from bench.real import newest_first

    assert newest_first(["worker-2", "worker-10", "worker-9"])[:2] == ["worker-10", "worker-9"]


def test_kubelet_stand_in_kills_the_whole_worker_session_only_after_the_grace_period(tmp_path):
    import subprocess
    import sys
    import time

    from bench.real import Kubelet, _running, _session_pids, live_workers

    # A "worker" (session leader) with a child, like a Celery worker and its task process.
    proc = subprocess.Popen([sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"],
                            start_new_session=True)
    try:
        (tmp_path / "worker-1.pid").write_text(f"{proc.pid} 0")
        time.sleep(0.5)
        child = [int(p) for p in subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()]
        assert len(child) == 2
        kubelet = Kubelet(tmp_path, grace_s=0.3)
        kubelet.tick()  # no SIGTERM yet: nothing happens
        (tmp_path / "worker-1.stopping").touch()
        kubelet.tick()  # SIGTERM seen now; grace not over
        assert live_workers(tmp_path) == ["worker-1"] and kubelet.killed == []
        time.sleep(0.4)
        kubelet.tick()
        assert kubelet.killed == ["worker-1"]
        proc.wait(5)
        time.sleep(0.2)
        # The child died too (it may linger as a zombie until init reaps it).
        assert not [p for p in _session_pids(proc.pid) if _running(p)]
        assert live_workers(tmp_path) == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_real_benchmark_records_what_an_hpa_read_from_its_status():
    """bench.real_k8s.hpa_view, on the objects the kubernetes client returns: the CPU utilization an HPA on CPU
    last read, or the external metric's average for KEDA's HPA, with the replicas it wants; None before the HPA
    controller has written a status or once the HPA is gone."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from bench.real_k8s import hpa_view

    class Api:
        def __init__(self, status=None, missing=False):
            self.status, self.missing = status, missing

        def read_namespaced_horizontal_pod_autoscaler(self, name, namespace):
            if self.missing:
                raise ApiException(status=404)
            spec = client.V2HorizontalPodAutoscalerSpec(max_replicas=4, scale_target_ref=client.V2CrossVersionObjectReference(
                kind="Deployment", name="airflow-worker"))
            return client.V2HorizontalPodAutoscaler(spec=spec, status=self.status)

    cpu = client.V2HorizontalPodAutoscalerStatus(desired_replicas=4, current_metrics=[client.V2MetricStatus(
        type="Resource", resource=client.V2ResourceMetricStatus(
            name="cpu", current=client.V2MetricValueStatus(average_utilization=137)))])
    external = client.V2HorizontalPodAutoscalerStatus(desired_replicas=3, current_metrics=[client.V2MetricStatus(
        type="External", external=client.V2ExternalMetricStatus(
            metric=client.V2MetricIdentifier(name="s0-postgresql"),
            current=client.V2MetricValueStatus(average_value="1500m")))])
    assert hpa_view(Api(cpu), "ns", "w") == {"desired": 4, "cpu_utilization_pct": 137}
    assert hpa_view(Api(external), "ns", "w") == {"desired": 3, "external_average": "1500m"}
    assert hpa_view(Api(None), "ns", "w") is None
    assert hpa_view(Api(missing=True), "ns", "w") is None
