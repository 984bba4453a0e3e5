"""The control plane itself: the pinned version, the real ReplicaSet controller and scheduler on kwok nodes,
pod-deletion-cost honoured on scale-down, RBAC refusing a ServiceAccount that nothing binds, and the fixture
leaving no process behind."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from airflow_on_k8s.testing.controlplane import ControlPlane, ControlPlaneError, pinned_version, start_kwok
from airflow_on_k8s.testing.node_agent import NodeAgent
from airflow_on_k8s.testing.waiting import wait_for
from airflow_on_k8s.versions import SUPPORTED_KUBERNETES_VERSIONS

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


def make_namespace(api, name: str) -> None:
    """A namespace whose `default` ServiceAccount exists (pods are refused until the controller creates it)."""
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    def has_default_sa():
        try:
            return core.read_namespaced_service_account("default", name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    wait_for(has_default_sa, what=f"ServiceAccount {name}/default")


def test_version_is_the_pinned_release(api):
    """/version reports the release pinned in hack/controlplane/kubernetes/go.mod (build.sh sets upstream's
    version ldflags), and that minor is one the program supports on every cloud."""
    version = client.VersionApi(api).get_code()
    expected = pinned_version("kubernetes")
    assert version.git_version == expected
    major, minor = expected.lstrip("v").split(".")[:2]
    assert (version.major, version.minor) == (major, minor)
    assert version.git_tree_state == "clean"
    for cloud, minors in SUPPORTED_KUBERNETES_VERSIONS.items():
        assert f"{major}.{minor}" in minors, f"the control-plane tier runs {expected}, which {cloud} no longer offers"


def _running_ready(pod) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
    )


def deploy_three_workers(api, ns: str, kwok_nodes: list[str]) -> list:
    """A 3-replica Deployment on the kwok nodes; returns its pods once all are Running and Ready, after checking
    that the real ReplicaSet controller created them and the real scheduler bound them."""
    make_namespace(api, ns)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    labels = {"app": "worker"}
    apps.create_namespaced_deployment(ns, {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "worker"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"type": "kwok"},
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "worker", "image": "registry.invalid/worker:never-pulled",
                                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
                },
            },
        },
    })

    def three_ready():
        pods = core.list_namespaced_pod(ns, label_selector="app=worker").items
        return pods if len(pods) == 3 and all(_running_ready(p) for p in pods) else None

    pods = wait_for(three_ready, what="3 Running+Ready pods")
    for pod in pods:
        owner = pod.metadata.owner_references[0]
        assert (owner.kind, owner.controller) == ("ReplicaSet", True)  # created by the ReplicaSet controller
        assert pod.spec.node_name in kwok_nodes  # bound by the scheduler (nothing else binds pods here)
        assert any(c.type == "PodScheduled" and c.status == "True" for c in pod.status.conditions)
    events = core.list_namespaced_event(ns, field_selector="reason=Scheduled").items
    assert {e.involved_object.name for e in events if e.reporting_component == "default-scheduler"
            or (e.source and e.source.component == "default-scheduler")} == {p.metadata.name for p in pods}
    return pods


def by_node(pods) -> dict[str, list[str]]:
    placement: dict[str, list[str]] = {}
    for pod in pods:
        placement.setdefault(pod.spec.node_name, []).append(pod.metadata.name)
    return placement


def scale_to_one(api, ns: str) -> list[str]:
    """Scale the Deployment to 1 and return the name of the pods left once the others are gone."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.patch_namespaced_deployment_scale("worker", ns, {"spec": {"replicas": 1}})

    def only_one_left():
        names = [p.metadata.name for p in core.list_namespaced_pod(ns, label_selector="app=worker").items]
        return names if len(names) == 1 else None

    left = wait_for(only_one_left, what="scale-down to 1 pod")
    # The ReplicaSet's status follows the deletions it observes, a moment after the pods are gone.
    sets = lambda: [(r.spec.replicas, r.status.replicas)  # noqa: E731
                    for r in apps.list_namespaced_replica_set(ns, label_selector="app=worker").items]
    wait_for(lambda: sets() == [(1, 1)], timeout=10, what="one ReplicaSet with 1 replica")
    assert only_one_left() == left
    return left


def test_without_deletion_cost_the_doubled_up_pods_go_first(api, kwok_nodes):
    """The baseline the next test departs from: 3 pods on 2 nodes, scaled to 1, keep the pod alone on its node
    (ActivePodsWithRanks rule 5, "doubled up < not doubled up")."""
    pods = deploy_three_workers(api, "no-deletion-cost", kwok_nodes)
    placement = by_node(pods)
    assert sorted(len(names) for names in placement.values()) == [1, 2], placement  # the scheduler spreads
    alone = next(names[0] for names in placement.values() if len(names) == 1)
    assert scale_to_one(api, "no-deletion-cost") == [alone]


def test_replicaset_controller_and_scheduler_honour_pod_deletion_cost(api, kwok_nodes):
    """3 replicas are created by the real ReplicaSet controller and bound by the real scheduler to kwok nodes;
    scaled to 1, exactly the two lowest-cost pods go.

    The ReplicaSet controller picks the pods to delete by sorting them with ActivePodsWithRanks
    (k8s.io/kubernetes pkg/controller/controller_utils.go, v1.34.4): unassigned < assigned, Pending < Unknown
    < Running, not ready < ready, then (4) lower pod-deletion-cost first, before (5) "doubled up" (more ready
    pods of the set on the same node) and (6) the most recently ready. The pod kept here is one of the
    doubled-up pods, which rule 5 alone would delete first (the previous test): only the deletion cost keeps it.
    """
    ns = "deletion-cost"
    core = client.CoreV1Api(api)
    pods = deploy_three_workers(api, ns, kwok_nodes)
    doubled_up = max(by_node(pods).values(), key=len)
    assert len(doubled_up) == 2, by_node(pods)
    keep = sorted(doubled_up)[0]
    others = sorted(p.metadata.name for p in pods if p.metadata.name != keep)
    costs = {keep: 1000, others[0]: -100, others[1]: 5}
    for name, cost in costs.items():
        core.patch_namespaced_pod(name, ns, {"metadata": {"annotations": {DELETION_COST: str(cost)}}})
    # The ReplicaSet controller sorts the pods in its informer cache: let the annotation updates reach it.
    wait_for(lambda: all(
        core.read_namespaced_pod(n, ns).metadata.annotations.get(DELETION_COST) == str(c) for n, c in costs.items()
    ), what="annotations")
    time.sleep(2)  # (watch events arrive in milliseconds; 2 s leaves room on a loaded machine)

    assert scale_to_one(api, ns) == [keep]


def test_a_pod_that_is_not_ready_is_deleted_before_the_one_marked_for_deletion(api, tmp_path):
    """The premise of the scale-down issue's case 1, on the real ReplicaSet controller: rule 3 of
    ActivePodsWithRanks ("not ready < ready") comes before rule 4 (pod-deletion-cost), so lowering replicas by one
    deletes a not-ready pod even when another carries the lowest possible cost. The task-aware autoscaler must
    therefore hold while a busy pod is not Ready (tests/autoscaler/test_real_k8s.py proves that it does)."""
    ns = "not-ready-first"
    make_namespace(api, ns)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    labels = {"app": "worker"}
    nodes = {"rank-node-1": {"airflow-on-k8s/test-node": "rank"}}
    with NodeAgent(api, nodes, lambda pod: None, tmp_path / "pods") as agent:
        apps.create_namespaced_deployment(ns, {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "worker"},
            "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": {
                "metadata": {"labels": labels},
                "spec": {"nodeSelector": nodes["rank-node-1"], "terminationGracePeriodSeconds": 0,
                         "containers": [{"name": "worker", "image": "registry.invalid/worker:never-pulled"}]}}},
        })  # fmt: skip

        def two_ready():
            pods = core.list_namespaced_pod(ns, label_selector="app=worker").items
            return pods if len(pods) == 2 and all(_running_ready(p) for p in pods) else None

        marked, not_ready = sorted(p.metadata.name for p in wait_for(two_ready, what="2 Running+Ready pods"))
        core.patch_namespaced_pod(marked, ns, {"metadata": {"annotations": {DELETION_COST: str(-(2**31))}}})
        agent.set_ready(ns, not_ready, False)
        wait_for(lambda: not _running_ready(core.read_namespaced_pod(not_ready, ns)), what="the pod reported not Ready")
        time.sleep(2)  # the ReplicaSet controller sorts the pods of its informer cache: let the updates reach it
        assert scale_to_one(api, ns) == [marked]


def test_rbac_denies_an_unbound_service_account(api, control_plane):
    ns = "rbac"
    make_namespace(api, ns)
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="unbound")))
    token = core.create_namespaced_service_account_token(
        "unbound", ns, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[],
                                                                                          expiration_seconds=600))
    ).status.token
    sa_api = control_plane.token_client(token)
    try:
        # The token is valid (authenticated as the ServiceAccount), so what follows is authorization, not 401.
        review = client.AuthenticationV1Api(sa_api).create_self_subject_review(client.V1SelfSubjectReview())
        assert review.status.user_info.username == f"system:serviceaccount:{ns}:unbound"

        for attempt in (
            lambda: client.CoreV1Api(sa_api).list_namespaced_pod(ns),
            lambda: client.CoreV1Api(sa_api).list_namespaced_secret(ns),
            lambda: client.AppsV1Api(sa_api).patch_namespaced_deployment_scale("worker", "deletion-cost",
                                                                             {"spec": {"replicas": 5}}),
        ):
            with pytest.raises(ApiException) as denied:
                attempt()
            assert denied.value.status == 403, denied.value

        # Positive control: bound to a Role that allows listing pods, the same token may list them.
        rbac.create_namespaced_role(ns, {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        })
        rbac.create_namespaced_role_binding(ns, {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "pod-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "unbound", "namespace": ns}],
        })

        def can_list():
            try:
                return client.CoreV1Api(sa_api).list_namespaced_pod(ns) is not None
            except ApiException as exc:
                if exc.status == 403:
                    return False
                raise

        wait_for(can_list, timeout=10, what="the RoleBinding to take effect")
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(sa_api).list_namespaced_secret(ns)
        assert denied.value.status == 403
    finally:
        sa_api.close()


def _alive(pids: list[int]) -> list[int]:
    """The pids still running (a zombie not yet reaped counts as gone)."""
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().split(") ", 1)[1].split()[0] != "Z":
                    alive.append(pid)
        except FileNotFoundError:
            pass
    return alive


def test_stop_leaves_no_process_and_no_files(control_plane):
    """A second control plane with kwok: stop() ends every process and removes the work dir."""
    plane = ControlPlane()
    plane.start()
    try:
        with start_kwok(plane):
            pids = plane.pids()
            assert len(pids) == 5 and _alive(pids) == pids
    finally:
        plane.stop()
    assert _alive(pids) == []
    assert subprocess.run(["pgrep", "-f", str(plane.work_dir)], capture_output=True).stdout == b""
    assert not plane.work_dir.exists()


def test_a_failed_start_says_why_and_cleans_up():
    plane = ControlPlane(extra_apiserver_args=["--no-such-flag"])
    with pytest.raises(ControlPlaneError, match=r"kube-apiserver exited with code 1:\n(.|\n)*--no-such-flag"):
        plane.start()
    assert plane.processes == []
    assert subprocess.run(["pgrep", "-f", str(plane.work_dir)], capture_output=True).stdout == b""
    assert (plane.log_dir / "kube-apiserver.log").exists()  # kept for a post-mortem
    shutil.rmtree(plane.work_dir)
