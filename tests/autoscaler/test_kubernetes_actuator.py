"""The Kubernetes actuator and Lease with the real `kubernetes` client over a faked HTTP layer: exact requests."""

from __future__ import annotations

import datetime

import pytest
from kubernetes.client.exceptions import ApiException

from tests.autoscaler.fake_kube import FakeKube, pod
from airflow_on_k8s.autoscaler.actuators import ScaleConflict, ScaleTarget, WorkerPod
from airflow_on_k8s.autoscaler.actuators.kubernetes import CHOSEN_COST, DELETION_COST, MARKER, KubernetesDeploymentActuator, KubernetesLease

SCALE = "/apis/apps/v1/namespaces/airflow/deployments/airflow-worker/scale"
PODS = "/api/v1/namespaces/airflow/pods"
REPLICA_SETS = "/apis/apps/v1/namespaces/airflow/replicasets"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/airflow/leases"


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube(replicas={"airflow-worker": 3})


@pytest.fixture
def actuator(kube) -> KubernetesDeploymentActuator:
    return KubernetesDeploymentActuator(kube.api_client(), "airflow", "airflow-worker", "component=worker,release=airflow")


def test_reads_and_patches_the_scale_subresource(kube, actuator):
    assert actuator.get_replicas() == 3
    actuator.set_replicas(5)
    assert [(r.method, r.path, r.body, r.content_type) for r in kube.requests] == [
        ("GET", SCALE, None, "application/json"),
        ("PATCH", SCALE, {"spec": {"replicas": 5}}, "application/merge-patch+json"),
    ]
    assert kube.replicas["airflow-worker"] == 5


def test_lists_the_deployments_own_pods_by_its_selector_with_what_the_replicaset_ranks_them_by(kube, actuator):
    labels = {"component": "worker", "release": "airflow"}
    kube.deployment("airflow-worker", 3, match_labels=labels)
    kube.worker_pods("airflow-worker", ["w-b"])
    kube.worker_pods("airflow-worker", ["w-a"], ready=False, phase="Pending", node=None)
    kube.worker_pods("airflow-worker", ["w-c"], deleting=True, annotations={MARKER: "true", DELETION_COST: CHOSEN_COST})
    kube.worker_pods("airflow-worker", ["w-done"], phase="Succeeded", ready=False)
    kube.pods["scheduler"] = pod("scheduler", labels={"component": "scheduler", "release": "airflow"})
    kube.foreign_pod("ke-pod", phase="Pending", ready=False, node=None)
    kube.pods["ke-pod"]["metadata"]["labels"] = dict(labels)
    view = actuator.observe()
    assert view.workers == [
        WorkerPod("w-a", ready=False, phase="Pending", node=None, containers_started=False, template_hash="h1"),
        WorkerPod("w-b", ready=True, node="node-1", template_hash="h1"),
        WorkerPod("w-c", ready=True, terminating=True, marked=True, node="node-1", template_hash="h1",
                  deletion_cost=-(2**31)),
    ]
    assert view.scale == ScaleTarget(3, kube._deployment_version("airflow-worker"))
    assert view.foreign == ["ke-pod"] and view.replica_sets == 1
    scale, replica_sets, pods = kube.requests
    # The pods and ReplicaSets are found by the Deployment's own selector, as the scale subresource states it.
    assert (scale.method, scale.path) == ("GET", SCALE)
    assert (replica_sets.path, replica_sets.query["labelSelector"]) == (REPLICA_SETS, "component=worker,release=airflow")
    assert (pods.path, pods.query["labelSelector"]) == (PODS, "component=worker,release=airflow")


def test_a_second_replicaset_with_pods_or_replicas_is_a_rollout(kube, actuator):
    kube.deployment("airflow-worker", 3)
    kube.worker_pods("airflow-worker", ["w-1", "w-2"], template_hash="old", age=5)
    assert actuator.observe().replica_sets == 1
    kube.replica_set("airflow-worker", "new", replicas=1)  # scaled up, no pod yet
    assert actuator.observe().replica_sets == 2


def test_marks_the_chosen_pods_with_the_lowest_deletion_cost_then_lowers_replicas_if_unchanged(kube, actuator):
    kube.deployment("airflow-worker", 3)
    kube.worker_pods("airflow-worker", ["w-1", "w-2", "w-3"])
    read = actuator.observe().scale
    kube.requests.clear()
    actuator.mark_for_removal(["w-1", "w-3"])
    actuator.remove(["w-1", "w-3"], 1, read)
    assert [(m, p, b if m == "PATCH" else (b["metadata"]["resourceVersion"], b["spec"])) for m, p, b in kube.writes()] == [
        ("PATCH", f"{PODS}/w-1", {"metadata": {"annotations": {DELETION_COST: "-2147483648", MARKER: "true"}}}),
        ("PATCH", f"{PODS}/w-3", {"metadata": {"annotations": {DELETION_COST: "-2147483648", MARKER: "true"}}}),
        ("PUT", SCALE, (read.version, {"replicas": 1})),
    ]
    assert kube.pods["w-2"]["metadata"]["annotations"] == {}
    assert kube.deleted == ["w-1", "w-3"]  # the ReplicaSet took the marked pods


def test_lowering_replicas_fails_with_a_conflict_when_someone_else_scaled_meanwhile(kube, actuator):
    kube.deployment("airflow-worker", 3)
    kube.worker_pods("airflow-worker", ["w-1", "w-2", "w-3"])
    read = actuator.observe().scale
    actuator.set_replicas(4)  # e.g. a Helm upgrade
    with pytest.raises(ScaleConflict):
        actuator.remove(["w-1"], 2, read)
    assert kube.replicas["airflow-worker"] == 4


def test_clearing_marks_deletes_both_annotations_and_ignores_vanished_pods(kube, actuator):
    kube.pods = {"w-1": pod("w-1", annotations={DELETION_COST: CHOSEN_COST, MARKER: "true", "keep": "me"})}
    actuator.clear_marks(["w-1", "gone"])
    assert kube.writes() == [
        ("PATCH", f"{PODS}/w-1", {"metadata": {"annotations": {DELETION_COST: None, MARKER: None}}}),
        ("PATCH", f"{PODS}/gone", {"metadata": {"annotations": {DELETION_COST: None, MARKER: None}}}),
    ]
    assert kube.pods["w-1"]["metadata"]["annotations"] == {"keep": "me"}


def test_api_errors_surface(kube, actuator):
    kube.replicas = {}
    with pytest.raises(ApiException) as err:
        actuator.get_replicas()
    assert err.value.status == 404


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def wall(clock: Clock):
    return lambda: datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=clock.t)


def lease(kube, identity, clock, duration=15) -> KubernetesLease:
    return KubernetesLease(kube.api_client(), "airflow", "worker-autoscaler", identity,
                           lease_duration_s=duration, clock=clock, wall_clock=wall(clock))


def test_lease_create_renew_and_a_second_candidate_waits(kube):
    clock = Clock()
    a, b = lease(kube, "a", clock), lease(kube, "b", clock)
    assert a.try_acquire() and a.held
    get, post = kube.requests
    assert (get.method, get.path) == ("GET", f"{LEASES}/worker-autoscaler")
    assert (post.method, post.path) == ("POST", LEASES)
    assert post.body["metadata"]["name"] == "worker-autoscaler"
    assert post.body["spec"]["holderIdentity"] == "a"
    assert post.body["spec"]["leaseDurationSeconds"] == 15
    assert post.body["spec"]["leaseTransitions"] == 0
    assert post.body["spec"]["renewTime"].startswith("2026-01-01T00:16:40")

    assert not b.try_acquire() and not b.held  # a's lease, seen fresh by b
    clock.t += 5
    version = kube.leases["worker-autoscaler"]["metadata"]["resourceVersion"]
    assert a.try_acquire()
    put = kube.requests[-1]
    assert (put.method, put.path) == ("PUT", f"{LEASES}/worker-autoscaler")
    assert put.body["metadata"]["resourceVersion"] == version
    assert put.body["spec"]["renewTime"].startswith("2026-01-01T00:16:45")
    assert put.body["spec"]["acquireTime"].startswith("2026-01-01T00:16:40")  # renewals keep acquireTime
    assert put.body["spec"]["leaseTransitions"] == 0
    # b keeps seeing renewals, so a's lease never looks expired to b.
    for _ in range(5):
        clock.t += 10
        assert a.try_acquire()
        assert not b.try_acquire()


def test_an_abandoned_lease_is_taken_over_after_its_duration_on_our_clock(kube):
    clock = Clock()
    a, b = lease(kube, "a", clock), lease(kube, "b", clock)
    assert a.try_acquire()
    assert not b.try_acquire()
    clock.t += 14  # a stopped renewing (crashed); b has seen the same record for 14 s < 15 s
    assert not b.try_acquire()
    assert not a.held  # a's own renew deadline (10 s) passed long before b may take over
    clock.t += 1.5
    assert b.try_acquire()
    spec = kube.leases["worker-autoscaler"]["spec"]
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("b", 1)
    # a comes back: the lease is b's and fresh, so a must not act.
    assert not a.try_acquire() and not a.held


def test_conflicting_write_loses_the_race(kube):
    clock = Clock()
    a, b = lease(kube, "a", clock), lease(kube, "b", clock)
    assert a.try_acquire()
    assert not b.try_acquire()
    clock.t += 16

    def c_writes_first(req):
        # ...but candidate c updates the lease between b's read and b's write.
        current = kube.leases["worker-autoscaler"]
        current["spec"]["holderIdentity"] = "c"
        current["metadata"]["resourceVersion"] = kube._next_version()
        kube.before_write = None

    kube.before_write = c_writes_first
    assert not b.try_acquire() and not b.held
    assert kube.requests[-1].method == "PUT"
    assert kube.leases["worker-autoscaler"]["spec"]["holderIdentity"] == "c"


def test_release_hands_over_at_once(kube):
    clock = Clock()
    a, b = lease(kube, "a", clock), lease(kube, "b", clock)
    assert a.try_acquire()
    assert not b.try_acquire()
    a.release()
    assert not a.held
    spec = kube.leases["worker-autoscaler"]["spec"]
    assert spec.get("holderIdentity") is None and spec["leaseDurationSeconds"] == 1
    assert b.try_acquire()
    assert kube.leases["worker-autoscaler"]["spec"]["leaseTransitions"] == 1


def test_api_outage_keeps_the_lease_only_until_the_renew_deadline(kube):
    clock = Clock()
    a = lease(kube, "a", clock)
    assert a.try_acquire()
    kube.down = True
    clock.t += 9
    assert a.try_acquire()  # a failed renewal within the 10 s renew deadline: still the leader
    clock.t += 2
    assert not a.try_acquire() and not a.held
    kube.down = False
    assert a.try_acquire()  # its own, unexpired record: renewed
