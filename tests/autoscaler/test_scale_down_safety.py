"""Scale-down never removes a busy worker, whatever order Kubernetes acts in (issue 11).

Real Celery workers (named like pods), real PostgreSQL with Airflow's schema for the load, and the Kubernetes
side from the `cluster` fixture: the fake API server with the ReplicaSet and Deployment controllers' victim
order (tests/autoscaler/fake_kube.py). The test bodies use only what a real control plane also offers
(pods, their status, a paused controller-manager), so the `cluster` fixture can run them there too.
"""

from __future__ import annotations

import threading
import time

import pytest

from airflow_on_k8s.autoscaler.actuators.kubernetes import DELETION_COST, MARKER, KubernetesDeploymentActuator, KubernetesLease
from airflow_on_k8s.autoscaler.controller import ControllerConfig
from airflow_on_k8s.autoscaler.policy import PolicyConfig
from tests.autoscaler.conftest import load, queues_of
from tests.autoscaler.helpers import wait_for

DEPLOYMENT = "airflow-worker"


def kube_controller(make_controller, cluster, identity="controller-0", **loop):
    api = cluster.api_client()
    return make_controller(
        actuator=KubernetesDeploymentActuator(api, "airflow", DEPLOYMENT, "component=worker"),
        lock=KubernetesLease(api, "airflow", "worker-autoscaler", identity, lease_duration_s=loop.pop("lease_s", 30)),
        **{"removal_wait_s": 1, **loop},
    )


def busy_first(celery_env, seconds: float = 10):
    """Two workers: the first holds a long task, the second is idle (in this order on purpose: with equal
    ranks and no mark the ReplicaSet's tie-break deletes the first)."""
    [busy] = celery_env.start_workers(1)
    task = celery_env.sender.sleep(seconds)
    wait_for(lambda: celery_env.control.snapshot([f"celery@{busy}"])[f"celery@{busy}"].busy, 10, "the task started")
    [idle] = celery_env.start_workers(1)
    return busy, idle, task


def test_busy_pod_that_is_not_ready_ranks_first_so_nothing_is_removed(make_controller, cluster, celery_env, pg_server, load_db):
    # Case 1. A sidecar restart (or a NotReady node) makes the busy pod NotReady while Celery runs its task; the
    # ReplicaSet deletes not-ready pods before it looks at pod-deletion-cost.
    busy, idle, task = busy_first(celery_env)
    cluster.deployment(DEPLOYMENT, replicas=2)
    cluster.worker_pods(DEPLOYMENT, [idle, busy])
    cluster.set_pod(busy, ready=False)
    controller = kube_controller(make_controller, cluster)
    load(pg_server, load_db, running=1)

    decision = controller.run_once()
    cluster.settle()
    assert busy in cluster.live(), "the ReplicaSet deleted the busy worker"
    assert cluster.replicas[DEPLOYMENT] == 2 and decision.desired_replicas == 1
    assert controller.metrics.held_scale_downs.labels("busy_pod_ranks_first")._value.get() == 1
    assert queues_of(celery_env, idle) == ("default",)  # never drained: the removal was not certain

    # Ready again: the idle worker is the one the ReplicaSet deletes first, so it goes.
    cluster.set_pod(busy, ready=True)
    controller.run_once()
    cluster.settle()
    assert cluster.live() == [busy] and cluster.deleted == [idle]
    assert task.get(timeout=20) == f"celery@{busy}"


def test_an_unscheduled_idle_pod_is_removed_first_and_a_busy_one_never(make_controller, cluster, celery_env, pg_server, load_db):
    # Case 1, the other way round: a Pending, unscheduled pod ranks first and holds nothing, so it is the one to go.
    busy, idle, task = busy_first(celery_env)
    cluster.deployment(DEPLOYMENT, replicas=3)
    cluster.worker_pods(DEPLOYMENT, [busy, idle])
    cluster.worker_pods(DEPLOYMENT, ["never-scheduled"], phase="Pending", ready=False, node=None)
    controller = kube_controller(make_controller, cluster, drain_timeout_s=2)
    load(pg_server, load_db, running=1)
    controller.run_once()
    cluster.settle()
    assert busy in cluster.live() and "never-scheduled" in cluster.deleted
    assert task.get(timeout=20) == f"celery@{busy}"


def test_a_late_replicaset_keeps_the_mark_and_the_drain(make_controller, cluster, celery_env, pg_server, load_db):
    # Case 2. The controller-manager is down (restart, upgrade) when replicas are lowered; the next loops must not
    # clear the mark or give the worker its queues back, or the ReplicaSet later deletes by its own order.
    busy, idle, task = busy_first(celery_env)
    cluster.deployment(DEPLOYMENT, replicas=2)
    cluster.worker_pods(DEPLOYMENT, [busy, idle])
    controller = kube_controller(make_controller, cluster)
    cluster.pause_controllers()
    load(pg_server, load_db, running=1)
    assert controller.run_once().desired_replicas == 1
    assert cluster.replicas[DEPLOYMENT] == 1 and cluster.live() == sorted([busy, idle])
    for _ in range(2):
        decision = controller.run_once()
        assert decision.desired_replicas == 1
        assert cluster.pods[idle]["metadata"]["annotations"].get(MARKER) == "true"
        assert queues_of(celery_env, idle) == ()
    # Someone (a Helm upgrade, a human) strips the cost while it is pending: it is put back.
    cluster.pods[idle]["metadata"]["annotations"].pop(DELETION_COST)
    controller.run_once()
    assert cluster.pods[idle]["metadata"]["annotations"][DELETION_COST] == str(-(2**31))
    cluster.resume_controllers()
    cluster.settle()
    assert cluster.deleted == [idle] and busy in cluster.live()
    assert task.get(timeout=20) == f"celery@{busy}"


def test_no_new_scale_down_while_an_earlier_one_is_pending(make_controller, cluster, celery_env, pg_server, load_db):
    # Case 2: live pods > replicas (a lowering not yet acted on, by anyone) means the ReplicaSet will delete
    # more pods than we would mark.
    busy, idle, task = busy_first(celery_env)
    [spare] = celery_env.start_workers(1)
    cluster.deployment(DEPLOYMENT, replicas=3)
    cluster.worker_pods(DEPLOYMENT, [busy, idle, spare])
    cluster.pause_controllers()
    cluster.replicas[DEPLOYMENT] = 2  # e.g. `kubectl scale` while the controller-manager restarts
    controller = kube_controller(make_controller, cluster)
    load(pg_server, load_db, running=1)
    decision = controller.run_once()
    assert decision.reason.startswith("hold: removal pending")
    assert cluster.replicas[DEPLOYMENT] == 2
    assert controller.metrics.held_scale_downs.labels("removal_pending")._value.get() == 1
    assert not [w for w in cluster.writes() if "/pods/" in w[1]]
    assert task.get(timeout=20) == f"celery@{busy}"


def test_the_count_is_lowered_only_if_nobody_changed_it_during_the_drain(make_controller, cluster, celery_env, pg_server, load_db):
    # Case 2: the write that lowers replicas carries the resourceVersion read before the drain.
    busy, idle, task = busy_first(celery_env)
    cluster.deployment(DEPLOYMENT, replicas=2)
    cluster.worker_pods(DEPLOYMENT, [busy, idle])
    controller = kube_controller(make_controller, cluster)

    def helm_upgrade_during_the_drain(request):
        if "/pods/" in request.path:  # the mark, written after the drain
            cluster.replicas[DEPLOYMENT] = 3
            cluster.touch_deployment(DEPLOYMENT)
            cluster.before_write = None

    cluster.before_write = helm_upgrade_during_the_drain
    load(pg_server, load_db, running=1)
    controller.run_once()
    assert cluster.replicas[DEPLOYMENT] == 3  # not lowered over the other writer's change
    assert controller.metrics.held_scale_downs.labels("scale_conflict")._value.get() == 1
    assert MARKER not in cluster.pods[idle]["metadata"]["annotations"]
    assert queues_of(celery_env, idle) == ("default",)
    assert task.get(timeout=20) == f"celery@{busy}"


def test_no_scale_down_during_a_rollout(make_controller, cluster, celery_env, pg_server, load_db):
    # Case 3. Two ReplicaSets: the Deployment controller takes the removal from the larger, older one, where our
    # mark on the new one's pod means nothing (pod-deletion-cost ranks pods within one ReplicaSet, KEP-2255).
    busy, idle, task = busy_first(celery_env)
    [fresh] = celery_env.start_workers(1)
    cluster.deployment(DEPLOYMENT, replicas=3)
    cluster.worker_pods(DEPLOYMENT, [busy, idle], template_hash="old", age=10)
    cluster.worker_pods(DEPLOYMENT, [fresh], template_hash="new")
    controller = kube_controller(make_controller, cluster)
    load(pg_server, load_db, running=1)
    decision = controller.run_once()
    cluster.settle()
    assert decision.reason.startswith("hold: rollout in progress")
    assert cluster.replicas[DEPLOYMENT] == 3 and cluster.deleted == []
    assert controller.metrics.held_scale_downs.labels("rollout")._value.get() == 1
    assert task.get(timeout=20) == f"celery@{busy}"


def test_pods_the_deployment_does_not_own_are_never_chosen_or_counted(make_controller, cluster, celery_env, pg_server, load_db):
    # Case 8. The chart's KubernetesExecutor pods carry the same component=worker labels; a Pending one looks like
    # the cheapest pod to remove, but lowering replicas makes the ReplicaSet delete one of its own.
    busy, idle, task = busy_first(celery_env)
    cluster.deployment(DEPLOYMENT, replicas=2)
    cluster.worker_pods(DEPLOYMENT, [busy, idle])
    cluster.foreign_pod("ke-task-pod", phase="Pending", ready=False, node=None)
    controller = kube_controller(make_controller, cluster, drain_timeout_s=5)
    load(pg_server, load_db, running=1)
    controller.run_once()
    cluster.settle()
    assert cluster.deleted == [idle] and busy in cluster.live()
    assert not [w for w in cluster.writes() if w[1].endswith("/ke-task-pod")]
    assert controller.metrics.foreign_pods._value.get() == 1
    assert task.get(timeout=20) == f"celery@{busy}"


def test_the_lease_is_renewed_while_the_loop_waits_so_no_second_leader_acts(make_controller, cluster, celery_env, pg_server, load_db):
    # Case 6. A leader busy in a long wait (here: the poll interval after a scale-up) keeps its lease, renewed in
    # the background; the standby must never see it expire.
    cluster.deployment(DEPLOYMENT, replicas=0)
    leader = kube_controller(make_controller, cluster, identity="a", lease_s=3, poll_interval_s=8)
    standby = kube_controller(make_controller, cluster, identity="b", lease_s=3)
    load(pg_server, load_db, queued=1)
    runner = threading.Thread(target=leader.run)
    runner.start()
    try:
        wait_for(lambda: cluster.replicas[DEPLOYMENT] == 1, 10, "the leader's first loop")
        deadline = time.monotonic() + 7
        while time.monotonic() < deadline:
            assert standby.run_once() is None, "the standby took over from a live leader"
            assert not standby.lock.held
            time.sleep(0.5)
    finally:
        leader.stop.set()
        runner.join(20)
    assert standby.run_once() is not None  # the leader released the lease on its way out


def test_a_leader_that_lost_its_lease_writes_nothing(make_controller, cluster, celery_env, pg_server, load_db):
    # Case 6: every write is gated on the lease; here it is lost between the read and the scale-down.
    busy, idle, task = busy_first(celery_env)
    cluster.deployment(DEPLOYMENT, replicas=2)
    cluster.worker_pods(DEPLOYMENT, [busy, idle])
    controller = kube_controller(make_controller, cluster, lease_s=3)
    load(pg_server, load_db, running=1)
    real_snapshot = controller.celery.snapshot

    def slow_snapshot(hosts):
        states = real_snapshot(hosts)
        time.sleep(controller.lock.renew_deadline_s + 0.5)  # a broker stall longer than the renew deadline
        return states

    controller.celery.snapshot = slow_snapshot
    controller.run_once()
    controller.celery.snapshot = real_snapshot
    assert cluster.replicas[DEPLOYMENT] == 2
    assert not [w for w in cluster.writes() if "leases" not in w[1]]
    assert queues_of(celery_env, idle) == ("default",)
    assert task.get(timeout=20) == f"celery@{busy}"
