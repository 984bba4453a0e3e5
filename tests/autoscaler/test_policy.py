"""The scaling policy: sizing tables, damping sequences, worker choice, and hypothesis properties."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_on_k8s.autoscaler.policy import (
    INT32_MAX,
    Decision,
    Observation,
    PolicyConfig,
    QueueLoad,
    ScalingPolicy,
    WorkerLoad,
    RemovalCandidate,
    choose_workers_to_remove,
    plan_removal,
    deletion_cost,
    raw_desired_workers,
)


def loads(*pairs: tuple[int, int], queue: str = "default") -> tuple[QueueLoad, ...]:
    return tuple(QueueLoad(f"{queue}{i}" if i else queue, q, r) for i, (q, r) in enumerate(pairs))


# --- sizing -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "load", "expected"),
    [
        (PolicyConfig(worker_concurrency=2), (), 0),
        (PolicyConfig(worker_concurrency=2), loads((8, 0)), 4),
        (PolicyConfig(worker_concurrency=2), loads((7, 2)), 5),
        (PolicyConfig(worker_concurrency=2), loads((0, 1)), 1),
        (PolicyConfig(worker_concurrency=16), loads((17, 0)), 2),
        (PolicyConfig(worker_concurrency=2, target_load_factor=0.5), loads((8, 0)), 8),
        # 6 / (2 * 0.3) is 10.000000000000002 in floats; it must not become 11.
        (PolicyConfig(worker_concurrency=2, target_load_factor=0.3), loads((6, 0)), 10),
        (PolicyConfig(worker_concurrency=2, max_workers=3), loads((100, 0)), 3),
        (PolicyConfig(worker_concurrency=2, min_workers=2), loads((0, 0)), 2),
        # Pooled queues share slots: one task in each of two queues fits one worker...
        (PolicyConfig(worker_concurrency=16), loads((1, 0), (1, 0)), 1),
        # ...the per-queue option gives each queue its own ceiling.
        (PolicyConfig(worker_concurrency=16, per_queue_ceiling=True), loads((1, 0), (1, 0)), 2),
        (PolicyConfig(worker_concurrency=4, per_queue_ceiling=True), loads((5, 0), (0, 3), (0, 0)), 3),
    ],
)
def test_raw_desired_workers(config, load, expected):
    assert raw_desired_workers(load, config) == expected


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"min_workers": -1}, "min_workers"),
        ({"max_workers": 0}, "max_workers"),
        ({"min_workers": 5, "max_workers": 3}, "max_workers"),
        ({"worker_concurrency": 0}, "worker_concurrency"),
        ({"target_load_factor": 0.0}, "target_load_factor"),
        ({"target_load_factor": 1.5}, "target_load_factor"),
        ({"scale_down_cooldown_s": -1.0}, "scale_down_cooldown_s"),
        ({"scale_down_stabilization_s": float("nan")}, "scale_down_stabilization_s"),
        ({"scale_up_max_step": -1}, "scale_up_max_step"),
        ({"scale_down_max_step": 0}, "scale_down_max_step"),
        ({"scale_up_stabilization_s": 300.0}, "scale_up_stabilization_s"),
        ({"scale_up_max_step": 1, "scale_down_max_step": 2}, "scale_up_max_step"),
    ],
)
def test_validate_names_the_field_and_the_fix(changes, field):
    config = dataclasses.replace(PolicyConfig(), **changes)
    with pytest.raises(ValueError) as err:
        config.validate()
    first = str(err.value).splitlines()[0]
    assert first.startswith(f"{field}: ")
    assert any(word in first for word in ("use", "raise", "must", "shorten", "lower"))
    with pytest.raises(ValueError):
        ScalingPolicy(config)


def test_default_config_is_valid():
    PolicyConfig().validate()


# --- decisions over time ------------------------------------------------------------------------------------------


def run(policy: ScalingPolicy, steps: list[tuple[float, int, int, int]]) -> list[Decision]:
    """steps: (now, tasks queued, current replicas, busy workers)."""
    return [policy.decide(Observation(now, loads((q, 0)), cur, busy)) for now, q, cur, busy in steps]


def test_scales_up_at_once_to_the_full_need():
    policy = ScalingPolicy(PolicyConfig(worker_concurrency=2))
    [d] = run(policy, [(0, 8, 0, 0)])
    assert (d.desired_replicas, d.raw_desired) == (4, 4)
    assert d.reason.startswith("scale up")


def test_scale_up_step_limit_and_stabilization():
    policy = ScalingPolicy(PolicyConfig(worker_concurrency=2, scale_up_max_step=2, scale_up_stabilization_s=10))
    out = run(policy, [(0, 0, 0, 0), (5, 8, 0, 0), (10, 8, 0, 0), (15, 8, 0, 0), (20, 8, 2, 0), (25, 8, 4, 0)])
    # The zero at t=0 is in the 10 s up-window until t=10 (inclusive); then +2 per decision up to 4.
    assert [d.desired_replicas for d in out] == [0, 0, 0, 2, 4, 4]


def test_a_spike_shorter_than_the_up_window_does_not_scale_up():
    policy = ScalingPolicy(PolicyConfig(worker_concurrency=2, scale_up_stabilization_s=30))
    out = run(policy, [(0, 2, 1, 0), (10, 20, 1, 1), (20, 2, 1, 1), (40, 2, 1, 0)])
    assert [d.desired_replicas for d in out] == [1, 1, 1, 1]


def test_scale_down_waits_for_the_window_then_steps_once_per_cooldown():
    cfg = PolicyConfig(worker_concurrency=2, scale_down_stabilization_s=120, scale_down_cooldown_s=60)
    policy = ScalingPolicy(cfg)
    out = run(
        policy,
        [(0, 8, 4, 4), (30, 0, 4, 0), (119, 0, 4, 0), (150, 0, 4, 0), (160, 0, 3, 0), (209, 0, 3, 0), (210, 0, 3, 0)],
    )
    assert [d.desired_replicas for d in out] == [4, 4, 4, 3, 3, 3, 2]
    assert out[1].reason.startswith("hold: stabilizing")
    assert out[4].reason.startswith("hold: scale-down cooldown")


def test_scale_down_never_removes_a_busy_worker():
    policy = ScalingPolicy(PolicyConfig(worker_concurrency=2, scale_down_stabilization_s=0, scale_down_max_step=5))
    out = run(policy, [(0, 0, 5, 3), (100, 0, 3, 3)])
    assert out[0].desired_replicas == 3
    assert out[1].desired_replicas == 3 and out[1].reason == "hold: all 3 surplus workers are busy"


def test_scale_up_ignores_the_scale_down_cooldown():
    policy = ScalingPolicy(PolicyConfig(worker_concurrency=2, scale_down_stabilization_s=0, scale_down_cooldown_s=600))
    out = run(policy, [(0, 0, 2, 0), (1, 10, 1, 0)])
    assert [d.desired_replicas for d in out] == [1, 5]


def test_a_restarted_policy_does_not_shortcut_the_down_window():
    policy = ScalingPolicy(PolicyConfig(worker_concurrency=2, scale_down_stabilization_s=120))
    out = run(policy, [(1000, 0, 5, 0), (1100, 0, 5, 0), (1120, 0, 5, 0)])
    assert [d.desired_replicas for d in out] == [5, 5, 4]


def test_above_max_shrinks_at_once_but_keeps_busy_workers():
    policy = ScalingPolicy(PolicyConfig(worker_concurrency=2, max_workers=3))
    out = run(policy, [(0, 0, 8, 2), (1, 0, 8, 5)])
    assert out[0].desired_replicas == 3
    assert out[1].desired_replicas == 5


def test_below_min_lifts_to_min():
    policy = ScalingPolicy(PolicyConfig(worker_concurrency=2, min_workers=2, scale_up_max_step=1, scale_down_max_step=1))
    [d] = run(policy, [(0, 0, 0, 0)])
    assert d.desired_replicas == 2


def test_time_going_backwards_is_rejected():
    policy = ScalingPolicy(PolicyConfig())
    run(policy, [(10, 0, 0, 0)])
    with pytest.raises(ValueError, match="went backwards"):
        run(policy, [(9, 0, 0, 0)])


def test_forget_scale_down_lifts_the_cooldown():
    policy = ScalingPolicy(PolicyConfig(worker_concurrency=2, scale_down_stabilization_s=0, scale_down_cooldown_s=60))
    assert run(policy, [(0, 0, 3, 0)])[0].desired_replicas == 2
    policy.forget_scale_down()
    assert run(policy, [(1, 0, 3, 0)])[0].desired_replicas == 2
    assert run(policy, [(2, 0, 3, 0)])[0].reason.startswith("hold: scale-down cooldown")


# --- which workers go ---------------------------------------------------------------------------------------------


def test_deletion_cost_weights_long_tasks_over_many_short_ones():
    now = 10_000.0
    idle = WorkerLoad("idle", True, ())
    one_long = WorkerLoad("long", True, (now - 600,))
    many_short = WorkerLoad("short", True, tuple(now - 10 for _ in range(10)))
    just_reserved = WorkerLoad("reserved", True, (now,))
    assert deletion_cost(idle, now) == 0
    assert deletion_cost(just_reserved, now) == 1
    assert deletion_cost(one_long, now) == 601
    assert deletion_cost(many_short, now) == 110
    assert deletion_cost(WorkerLoad("ancient", True, (0.0,) * 10), 1e12) == INT32_MAX


def test_choose_not_ready_idle_first_then_idle_then_cheapest_busy():
    now = 1000.0
    workers = [
        WorkerLoad("busy-long", True, (now - 900,)),
        WorkerLoad("idle-b", True, ()),
        WorkerLoad("busy-short", True, (now - 5,)),
        WorkerLoad("starting", False, ()),
        WorkerLoad("idle-a", True, ()),
        WorkerLoad("busy-unready", False, (now - 500,)),
    ]
    assert choose_workers_to_remove(workers, 1, now) == ["starting"]
    assert choose_workers_to_remove(workers, 3, now) == ["starting", "idle-a", "idle-b"]
    assert choose_workers_to_remove(workers, 5, now) == ["starting", "idle-a", "idle-b", "busy-unready", "busy-short"]
    assert choose_workers_to_remove(workers, 0, now) == []


# --- properties ---------------------------------------------------------------------------------------------------

configs = st.builds(
    PolicyConfig,
    min_workers=st.integers(0, 3),
    max_workers=st.integers(3, 12),
    worker_concurrency=st.integers(1, 16),
    target_load_factor=st.sampled_from([0.25, 0.5, 0.8, 1.0]),
    scale_up_stabilization_s=st.sampled_from([0.0, 15.0, 30.0]),
    scale_down_stabilization_s=st.sampled_from([30.0, 60.0, 120.0]),
    scale_up_max_step=st.sampled_from([0, 2, 4]),
    scale_down_max_step=st.sampled_from([1, 2]),
    scale_down_cooldown_s=st.sampled_from([0.0, 30.0, 60.0]),
    per_queue_ceiling=st.booleans(),
)

steps = st.lists(
    st.tuples(
        st.floats(0, 90, allow_nan=False),  # seconds since the previous observation
        st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), min_size=0, max_size=3),
        st.integers(0, 15),  # current replicas
        st.floats(0, 1),  # busy share of the current replicas
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(configs, steps)
def test_bounds_busy_floor_steps_and_cooldown_hold_for_any_history(cfg, history):
    policy = ScalingPolicy(cfg)
    now = 0.0
    last_down_at = None
    for dt, pairs, current, busy_share in history:
        now += dt
        busy = math.floor(current * busy_share)
        obs = Observation(now, loads(*pairs), current, busy)
        d = policy.decide(obs)
        desired = d.desired_replicas
        assert desired >= cfg.min_workers
        # Above max only when busy workers pin it there, and then never higher than now.
        assert desired <= max(cfg.max_workers, min(busy, current))
        if desired > cfg.max_workers:
            assert desired <= current
        if desired < current:
            assert desired >= busy, "asked to remove a busy worker"
            if current <= cfg.max_workers:
                assert current - desired <= cfg.scale_down_max_step
                assert last_down_at is None or now - last_down_at >= cfg.scale_down_cooldown_s
            last_down_at = now
        if desired > current and cfg.scale_up_max_step and current >= cfg.min_workers:
            assert desired - current <= cfg.scale_up_max_step
        assert d.raw_desired == raw_desired_workers(obs.loads, cfg)


def _time_to_reach(cfg: PolicyConfig, before: int, after: int, start: int, tick: float) -> float:
    """Seconds from a load step (before -> after tasks) until the policy's replicas reach the new need."""
    policy = ScalingPolicy(cfg)
    replicas = start
    now = 0.0
    # Settle on the old load for longer than any window, following the policy's decisions.
    while now < 400:
        replicas = policy.decide(Observation(now, loads((before, 0)), replicas, 0)).desired_replicas
        now += tick
    target = raw_desired_workers(loads((after, 0)), cfg)
    step_at = now
    while replicas != target:
        replicas = policy.decide(Observation(now, loads((after, 0)), replicas, 0)).desired_replicas
        now += tick
        assert now - step_at < 10_000, "never converged"
    return now - step_at


@settings(max_examples=150, deadline=None)
@given(configs, st.integers(0, 60), st.integers(0, 60), st.sampled_from([1.0, 5.0, 15.0]))
def test_scaling_up_is_never_slower_than_scaling_down(cfg, low, high, tick):
    low, high = sorted((low, high))
    need_low, need_high = raw_desired_workers(loads((low, 0)), cfg), raw_desired_workers(loads((high, 0)), cfg)
    up = _time_to_reach(cfg, low, high, need_low, tick)
    down = _time_to_reach(cfg, high, low, need_high, tick)
    assert up <= down
    if need_high > need_low:
        # And the first move up comes within one up-window (plus a tick to observe it).
        assert up <= cfg.scale_up_stabilization_s + tick * math.ceil((need_high - need_low) / (cfg.scale_up_max_step or 1e9)) + tick


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.lists(st.floats(0, 5000), max_size=4)), min_size=0, max_size=12),
    st.integers(0, 14),
)
def test_never_chooses_a_busy_worker_while_an_idle_one_is_left(specs, count):
    now = 5000.0
    workers = [WorkerLoad(f"w{i}", ready, tuple(starts)) for i, (ready, starts) in enumerate(specs)]
    chosen = choose_workers_to_remove(workers, count, now)
    assert len(chosen) == min(count, len(workers)) and len(set(chosen)) == len(chosen)
    by_name = {w.name: w for w in workers}
    idle_left = [w for w in workers if not w.task_start_times and w.name not in chosen]
    if idle_left:
        assert all(not by_name[n].task_start_times for n in chosen)
    busy_chosen = [by_name[n] for n in chosen if by_name[n].task_start_times]
    busy_left = [w for w in workers if w.task_start_times and w.name not in chosen]
    for gone in busy_chosen:
        for kept in busy_left:
            assert (gone.ready, deletion_cost(gone, now)) <= (kept.ready, deletion_cost(kept, now))


# --- plan_removal: only pods the ReplicaSet itself deletes first --------------------------------------------------

def cand(name, *, node=True, phase="Running", ready=True, busy=False, cost=0, started=()):
    return RemovalCandidate(name, assigned=node, phase=phase, ready=ready, busy=busy, task_start_times=started,
                            deletion_cost=cost)


@pytest.mark.parametrize(
    "pods, count, chosen, reason",
    [
        # All ready in one ReplicaSet: our lowest cost decides, so any idle pod can go.
        ([cand("busy", busy=True, started=(0,)), cand("idle")], 1, ("idle",), ""),
        # A busy pod that is not ready (sidecar restart, NotReady node) ranks before any cost: hold.
        ([cand("busy", ready=False, busy=True), cand("idle")], 1, (), "busy worker busy (not ready) would be deleted first"),
        ([cand("busy", phase="Unknown", busy=True), cand("idle")], 1, (), "busy worker busy (Unknown) would be deleted first"),
        ([cand("busy", phase="Pending", busy=True), cand("idle")], 1, (), "busy worker busy (Pending) would be deleted first"),
        ([cand("busy", node=False, phase="Pending", busy=True), cand("idle")], 1, (), "busy worker busy (unassigned)"),
        # Idle pods that rank first go first; the busy one behind them is safe.
        ([cand("idle-ready"), cand("pending", node=False, phase="Pending", ready=False),
          cand("busy", busy=True)], 2, ("pending", "idle-ready"), ""),
        # Two to remove, but the second would need a busy not-ready pod to go before it: remove one.
        ([cand("idle-unready", ready=False), cand("busy-unready", ready=False, busy=True), cand("idle")], 2,
         ("idle-unready",), "stopped at busy worker busy-unready"),
        # Within a rank, the cheapest idle first; busy pods only after every idle one.
        ([cand("b"), cand("a"), cand("busy", busy=True)], 1, ("a",), ""),
        # Someone else's mark as low as ours: the ReplicaSet would toss a coin.
        ([cand("idle"), cand("theirs", busy=True, cost=-(2**31))], 1, (), "theirs already carry the lowest pod-deletion-cost"),
        ([cand("busy", busy=True)], 1, (), "no idle worker"),
        ([cand("idle")], 0, (), "nothing to remove"),
    ],
)
def test_plan_removal_chooses_only_a_prefix_of_the_replicasets_deletion_order(pods, count, chosen, reason):
    plan = plan_removal(pods, count, now=100.0)
    assert plan.chosen == chosen
    assert plan.reason.startswith(reason)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.builds(cand, st.sampled_from("abcdefgh"), node=st.booleans(), phase=st.sampled_from(["Pending", "Unknown", "Running"]),
                  ready=st.booleans(), busy=st.booleans()),
        min_size=1, max_size=8, unique_by=lambda c: c.name,
    ),
    st.integers(min_value=0, max_value=8),
)
def test_the_replicaset_order_with_our_marks_deletes_exactly_the_chosen_idle_pods(pods, count):
    from bench.replicaset import RsPod, pods_to_delete

    plan = plan_removal(pods, count, now=100.0)
    assert len(plan.chosen) <= count
    assert not {p.name for p in pods if p.busy} & set(plan.chosen)
    # Ported victim order (pkg/controller/controller_utils.go): with the chosen marked, lowering replicas by
    # their number deletes exactly them.
    rs = [RsPod(p.name, p.name, "node" if p.assigned else None, p.phase, p.ready, 0.0, 0.0,
                deletion_cost=-(2**31) if p.name in plan.chosen else 0) for p in pods]
    assert set(pods_to_delete(rs, len(plan.chosen), now=1.0)) == set(plan.chosen)
