"""The task-aware autoscaler on a real control plane: kube-apiserver, kube-controller-manager (the real Deployment
and ReplicaSet controllers) and kube-scheduler built from their Go modules, with a real Airflow scheduler
(CeleryExecutor), PostgreSQL and Redis. Worker pods run as real `airflow celery worker` processes named
`celery@<pod name>` on the node agent's nodes (airflow_on_k8s.testing.node_agent), which plays the kubelet:
SIGTERM on deletion, SIGKILL at the end of the pod's grace period.

The autoscaler runs as `python -m airflow_on_k8s.autoscaler --actuator kubernetes`, authenticated with a token of
the ServiceAccount the Pulumi program creates and bound by the Role the program writes (both taken from the
`local` stack's preview), so the API server enforces exactly the program's RBAC.

Figures are printed; run with -s to see them.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from pathlib import Path

import pytest

from airflow_on_k8s.airflow.component import WORKER_POD_LABELS, worker_grace_seconds
from airflow_on_k8s.airflow.worker_autoscaler import LEASE, worker_label_selector
from airflow_on_k8s.autoscaler.actuators.local_processes import airflow_worker_command
from airflow_on_k8s.testing.worker_pool import WORKER_DEPLOYMENT, WorkerPool
from tests.autoscaler.airflow_stack import BURST, CONCURRENCY, ControllerProcess, all_state, burst_dag, report
from tests.autoscaler.helpers import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.k8s]

# A Celery queue of these tests' own: the session's Airflow is shared with other tests, whose leftover tasks on
# `default` must not count here.
QUEUE = "k8s"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


def k8s_dag(dag_id: str, seconds: int, tasks: int = BURST) -> str:
    """burst_dag's tasks (8 unless told), on this module's queue."""
    text = burst_dag(dag_id, seconds, tasks)
    old = 'default_args={"retries": 2, "retry_delay": 1}'
    assert old in text
    return text.replace(old, f'default_args={{"retries": 2, "retry_delay": 1, "queue": "{QUEUE}"}}')


_namespaces = itertools.count(1)


class RealWorkers(WorkerPool):
    """A namespace with the program's RBAC, a worker Deployment and a node agent running its pods
    (airflow_on_k8s.testing.worker_pool), its Celery workers consuming this module's queue on the session's Airflow."""

    def __init__(self, control_plane, stack, grace_s: int):
        super().__init__(control_plane.api_client(), control_plane, f"airflow-{next(_namespaces)}", grace_s,
                         env=stack.env, command=airflow_worker_command(CONCURRENCY, queues=(QUEUE,)),
                         log_dir=stack.work_dir / "pods")


def controller(stack, workers: RealWorkers, identity: str, tmp_path: Path, *extra: str) -> ControllerProcess:
    kubeconfig = workers.token_kubeconfig(tmp_path / f"{identity}.kubeconfig")
    stack.env["KUBECONFIG"] = str(kubeconfig)
    try:
        return ControllerProcess(
            stack, tmp_path / "unused", identity,
            "--actuator", "kubernetes", "--namespace", workers.namespace, "--deployment", WORKER_DEPLOYMENT,
            "--label-selector", worker_label_selector(), "--lease-name", LEASE, "--lease-duration-s", "10",
            "--worker-concurrency", str(CONCURRENCY), "--queues", QUEUE, *extra,
        )  # fmt: skip
    finally:
        del stack.env["KUBECONFIG"]


class Sampler:
    """Samples worker processes, replicas and task states every 0.5 s (in the test's thread, via wait_for)."""

    def __init__(self, stack, workers: RealWorkers, dag_id: str, run_id: str):
        self.stack, self.workers, self.dag_id, self.run_id = stack, workers, dag_id, run_id
        self.started = time.monotonic()
        self.samples: list[tuple[float, int, list]] = []

    def sample(self):
        tis = self.stack.task_instances(self.dag_id, self.run_id)
        self.samples.append((time.monotonic() - self.started, self.workers.running_workers(), tis))
        return self.samples[-1]

    def first(self, predicate) -> float | None:
        return next((t for t, n, tis in self.samples if predicate(n, tis)), None)

    @property
    def peak(self) -> int:
        return max((n for _, n, _ in self.samples), default=0)


def test_burst_scales_to_the_need_and_removes_only_drained_pods_with_two_autoscalers(control_plane, stack, tmp_path):
    """8 tasks of 20 s, concurrency 2: the real ReplicaSet controller creates exactly ceil(8/2) = 4 pods; the
    scale-down deletes exactly the drained pods (no warm shutdown ever hits a busy worker, no SIGKILL); every task
    succeeds on its first try. Two autoscalers share the real Lease; the leader is SIGKILLed mid-drain and the
    other takes over."""
    grace = worker_grace_seconds(60)  # what the program sets for a 60 s drain timeout: the chart's 600 s floor
    workers = RealWorkers(control_plane, stack, grace)
    # Identities name the autoscalers' log files on the session's Airflow: one per test.
    one = controller(stack, workers, "burst-one", tmp_path, "--drain-timeout-s", "60")
    two = controller(stack, workers, "burst-two", tmp_path, "--drain-timeout-s", "60")
    try:
        wait_for(lambda: one.metrics() and two.metrics(), 60, "both autoscalers serving metrics")
        wait_for(lambda: sum(c.metrics().get("airflow_worker_autoscaler_leader", 0) for c in (one, two)) == 1, 30,
                 "one leader")
        stack.add_dag("burst-k8s", k8s_dag("burst-k8s", 20))  # the session's Airflow: ids of our own
        watch = Sampler(stack, workers, "burst-k8s", "burst-k8s-1")
        stack.trigger("burst-k8s", "burst-k8s-1")
        wait_for(lambda: all_state(watch.sample()[2], "running"), 240, "all 8 tasks running", poll_s=0.5)
        assert workers.replicas() == math.ceil(BURST / CONCURRENCY)
        # Kill the leader once it drains a worker (the tasks end together, so the scale-down starts after them).
        leader = one if one.metrics().get("airflow_worker_autoscaler_leader") == 1.0 else two
        standby = two if leader is one else one
        wait_for(lambda: all_state(watch.sample()[2], "success"), 120, "all tasks done", poll_s=0.5)
        wait_for(lambda: (watch.sample(), leader.metrics().get("airflow_worker_autoscaler_drains_in_progress", 0) > 0)[1]
                 or workers.replicas() < 4, 120, "the leader draining", poll_s=0.2)
        leader.kill()
        wait_for(lambda: standby.metrics().get("airflow_worker_autoscaler_leader") == 1.0, 60, "standby leads")
        wait_for(lambda: (watch.sample(), workers.replicas() == 0 and not workers.all_pods())[1], 240,
                 "scaled to 0 and every pod gone", poll_s=0.5)
        tis = stack.task_instances("burst-k8s", "burst-k8s-1")
        full = watch.first(lambda n, tis: n == 4)
        running = watch.first(lambda n, tis: all_state(tis, "running"))
        report("real control plane: burst of 8 x 20 s tasks, concurrency 2", {
            "trigger -> 4 worker processes running (s)": None if full is None else round(full, 1),
            "trigger -> all 8 tasks running (s)": None if running is None else round(running, 1),
            "peak worker processes": watch.peak,
            "pods terminated / SIGKILLed": (len(workers.agent.terminations),
                                            sum(t.killed for t in workers.agent.terminations)),
            "tasks succeeded / retried": (sum(t[1] == "success" for t in tis), sum(t[2] > 1 for t in tis)),
        })
        # `kubectl describe deployment` explains the decisions: the autoscaler's Events on the worker Deployment,
        # written with the program's Role (issue 13).
        events = [e for e in workers.core.list_namespaced_event(workers.namespace).items
                  if e.involved_object.kind == "Deployment" and e.involved_object.name == WORKER_DEPLOYMENT
                  and e.source and e.source.component == "worker-autoscaler"]
        reasons = {e.reason for e in events}
        print("  autoscaler events on the Deployment:", sorted((e.reason, e.count, e.message) for e in events))
        assert {"ScaledUp", "ScaledDown"} <= reasons
        assert watch.peak == 4
        assert [(t[1], t[2]) for t in tis] == [("success", 1)] * BURST
        assert workers.agent.terminations and not any(t.killed for t in workers.agent.terminations)
        assert not workers.agent.errors
    except BaseException:
        print(workers.diagnostics(), "\n--- autoscaler one ---\n", one.log()[-6000:], "\n--- autoscaler two ---\n",
              two.log()[-6000:])
        raise
    finally:
        for c in (one, two):
            c.stop()
        workers.close()


def test_blind_scale_down_on_the_same_controllers_kills_running_tasks(control_plane, stack, tmp_path):
    """The counter-proof: lowering replicas without a drain, as HPA and KEDA do, lets the ReplicaSet pick busy
    pods; the warm shutdown outlasts the grace period and the node agent SIGKILLs tasks. Durations scaled down:
    grace 10 s (the program sets at least 600 s), tasks 60 s."""
    workers = RealWorkers(control_plane, stack, grace_s=10)
    try:
        stack.add_dag("long-k8s", k8s_dag("long-k8s", 60))
        workers.apps.patch_namespaced_deployment_scale(WORKER_DEPLOYMENT, workers.namespace, {"spec": {"replicas": 4}})
        stack.trigger("long-k8s", "long-k8s-1")
        wait_for(lambda: all_state(stack.task_instances("long-k8s", "long-k8s-1"), "running"), 240, "8 tasks running", poll_s=1)
        workers.apps.patch_namespaced_deployment_scale(WORKER_DEPLOYMENT, workers.namespace, {"spec": {"replicas": 1}})
        wait_for(lambda: len(workers.agent.terminations) >= 3, 60, "3 pods terminated", poll_s=0.5)
        killed = [t for t in workers.agent.terminations if t.killed]
        report("real control plane: blind scale-down 4 -> 1 with 8 x 60 s tasks running, grace 10 s", {
            "pods terminated": len(workers.agent.terminations),
            "pods SIGKILLed at the end of grace (tasks killed)": len(killed),
        })
        assert len(killed) >= 1
    finally:
        workers.close()


# --- cases of the scale-down issue that depend on Kubernetes, on the real controllers ------------------------------


def test_pods_with_the_worker_labels_that_the_deployment_does_not_own_are_never_touched(control_plane, stack, tmp_path):
    """Issue 11 case 8: a pod carrying the chart's worker labels but not owned by the worker Deployment's
    ReplicaSet (what a KubernetesExecutor pod looks like in a hybrid setup) is neither counted, marked nor removed;
    the Deployment's own idle workers are removed cleanly."""
    workers = RealWorkers(control_plane, stack, grace_s=30)
    try:
        foreign = {
            "metadata": {"name": "airflow-kubernetes-executor-task", "labels": dict(WORKER_POD_LABELS)},
            "spec": {"nodeSelector": {"airflow-on-k8s/test-node": "agent"}, "automountServiceAccountToken": False,
                     "containers": [{"name": "base", "image": "apache/airflow:test"}]},
        }  # fmt: skip
        workers.core.create_namespaced_pod(workers.namespace, foreign)
        workers.scale_to(2)
        one = controller(stack, workers, "foreign", tmp_path, "--drain-timeout-s", "30")
        try:
            wait_for(lambda: workers.replicas() == 0 and [p.metadata.name for p in workers.all_pods()]
                     == ["airflow-kubernetes-executor-task"], 180, "the Deployment's own workers removed")
            pod = workers.core.read_namespaced_pod("airflow-kubernetes-executor-task", workers.namespace)
            assert pod.metadata.deletion_timestamp is None
            assert "controller.kubernetes.io/pod-deletion-cost" not in (pod.metadata.annotations or {})
            assert "ignoring 1 pods that match the worker labels but not the worker Deployment" in one.log()
            ended = [t for t in workers.agent.terminations if t.pod != "airflow-kubernetes-executor-task"]
            assert ended and not any(t.killed for t in ended)
        finally:
            one.stop()
    finally:
        workers.close()


@pytest.mark.parametrize("strategy, pods, hold", [
    # The chart's strategy surges: live pods outnumber replicas, so the "removal pending" rule holds first.
    ({"maxSurge": "100%", "maxUnavailable": "50%"}, 3, "removal pending"),
    # Without a surge the counts match and only the rollout rule stands between the ReplicaSets and a busy pod.
    ({"maxSurge": 0, "maxUnavailable": 1}, 2, "rollout in progress"),
], ids=["chart-strategy", "no-surge"])
def test_no_scale_down_while_a_rollout_keeps_two_replicasets(control_plane, stack, tmp_path, strategy, pods, hold):
    """Issue 11 case 3: during a rollout the Deployment controller scales ReplicaSets proportionally and
    pod-deletion-cost only ranks pods within one ReplicaSet (KEP-2255), so the autoscaler holds. The rollout is kept
    open with minReadySeconds (the new pods never count as available)."""
    workers = RealWorkers(control_plane, stack, grace_s=30)
    try:
        workers.scale_to(2)
        workers.apps.patch_namespaced_deployment(WORKER_DEPLOYMENT, workers.namespace, {"spec": {
            "minReadySeconds": 300, "strategy": {"rollingUpdate": strategy},
            "template": {"metadata": {"annotations": {"rollout": "1"}}}}})
        # The Deployment controller itself takes the old ReplicaSet down to 1 (maxUnavailable), and the ReplicaSet
        # controller creates pods in slow-start batches of 1, 2, ... (replica_set.go `slowStartBatch`), so "two
        # hashes, `pods` pods" also holds for a moment before the old one is scaled down. Wait until every
        # ReplicaSet has exactly the pods its spec asks for, none terminating: then nothing moves for 300 s.
        wait_for(lambda: _rollout_settled(workers, pods), 120, f"{pods} pods of two settled ReplicaSets")
        before = len(workers.agent.terminations)
        one = controller(stack, workers, f"rollout-{pods}", tmp_path, "--drain-timeout-s", "30")
        try:
            wait_for(lambda: f"hold: {hold}" in one.log(), 120, "the autoscaler holding")
            time.sleep(15)  # several more loops (2 s each): still nothing removed
            assert workers.replicas() == 2
            assert len(workers.agent.terminations) == before
            assert not any("pod-deletion-cost" in str(p.metadata.annotations) for p in workers.live_pods())
            assert "draining" not in one.log()
        finally:
            one.stop()
    finally:
        workers.close()


def _rollout_settled(workers: RealWorkers, pods: int) -> bool:
    """Two ReplicaSets, each with exactly spec.replicas pods (by pod-template-hash), `pods` in all, none terminating."""
    sets = [rs for rs in workers.apps.list_namespaced_replica_set(workers.namespace).items if rs.spec.replicas]
    all_pods = workers.all_pods()
    if len(sets) != 2 or len(all_pods) != pods or any(p.metadata.deletion_timestamp for p in all_pods):
        return False
    per_hash = Counter(p.metadata.labels.get("pod-template-hash") for p in all_pods)
    return all(per_hash[rs.metadata.labels.get("pod-template-hash")] == rs.spec.replicas == (rs.status.replicas or 0)
               for rs in sets)


def _states(stack, dag_id: str, run_id: str) -> list[tuple[str | None, int]]:
    return [(t[1], t[2]) for t in stack.task_instances(dag_id, run_id)]


def _names(pods) -> list[str]:
    return sorted(p.metadata.name for p in pods)


def test_a_busy_worker_that_is_not_ready_holds_the_scale_down(control_plane, stack, tmp_path):
    """Issue 11 case 1: the ReplicaSet deletes a not-ready pod before any pod-deletion-cost is compared
    (tests/k8s/test_controlplane.py proves it on these controllers), so while a busy worker is not Ready the
    autoscaler lowers nothing, even though an idle worker could go. Once it is Ready again, the idle one is removed
    and only it; the task runs to the end on its first try. Durations scaled down: grace 10 s, one 90 s task."""
    workers = RealWorkers(control_plane, stack, grace_s=10)
    one = None
    try:
        workers.scale_to(1)
        (busy,) = _names(workers.live_pods())
        stack.add_dag("notready-k8s", k8s_dag("notready-k8s", 90, tasks=1))
        stack.trigger("notready-k8s", "notready-k8s-1")
        wait_for(lambda: _states(stack, "notready-k8s", "notready-k8s-1") == [("running", 1)], 180, "the task running")
        workers.agent.set_ready(workers.namespace, busy, False)  # a failing readiness probe, the task goes on
        workers.scale_to(2)
        (idle,) = [n for n in _names(workers.live_pods()) if n != busy]
        one = controller(stack, workers, "not-ready", tmp_path, "--drain-timeout-s", "30")
        hold = f"busy worker {busy} (not ready) would be deleted first by the ReplicaSet"
        wait_for(lambda: hold in one.log(), 120, "the autoscaler holding")
        time.sleep(8)  # several more loops (2 s each)
        assert workers.replicas() == 2 and not workers.agent.terminations
        assert "draining" not in one.log()
        workers.agent.set_ready(workers.namespace, busy, True)
        wait_for(lambda: idle not in _names(workers.all_pods()), 120, "the idle worker removed")
        assert busy in _names(workers.live_pods()), "the busy worker was removed while its task ran"
        wait_for(lambda: _states(stack, "notready-k8s", "notready-k8s-1") == [("success", 1)], 180, "the task done")
        assert workers.agent.terminations[0].pod == idle
        assert not any(t.killed for t in workers.agent.terminations)
        assert not workers.agent.errors
    except BaseException:
        print(workers.diagnostics(), "\n--- autoscaler ---\n", one.log()[-6000:] if one else "")
        raise
    finally:
        if one:
            one.stop()
        workers.close()


def test_a_late_replicaset_keeps_the_removal_marks_and_the_drained_worker_takes_no_task(control_plane, stack, tmp_path):
    """Issue 11 case 2: kube-controller-manager is down (a crash or an upgrade) when the autoscaler lowers
    replicas, so the ReplicaSet acts late. Meanwhile the drained worker keeps its mark and takes no task, and no
    further scale-down starts; once the controller is back the ReplicaSet deletes the marked pod and only it, and
    both tasks that arrived in the gap finish on their first try. Durations scaled down: grace 10 s, 30 s tasks."""
    workers = RealWorkers(control_plane, stack, grace_s=10)
    one = None
    try:
        workers.scale_to(2)
        with control_plane.stopped("kube-controller-manager"):
            one = controller(stack, workers, "late-rs", tmp_path, "--drain-timeout-s", "30",
                             "--min-workers", "1", "--scale-down-max-step", "1")
            wait_for(lambda: workers.replicas() == 1, 120, "replicas lowered by the autoscaler")
            marked = [p.metadata.name for p in workers.live_pods()
                      if (p.metadata.annotations or {}).get(DELETION_COST) == str(-(2**31))]
            assert len(marked) == 1, workers.diagnostics()
            (kept,) = [n for n in _names(workers.live_pods()) if n not in marked]
            stack.add_dag("late-k8s", k8s_dag("late-k8s", 30, tasks=2))
            stack.trigger("late-k8s", "late-k8s-1")
            wait_for(lambda: _states(stack, "late-k8s", "late-k8s-1") == [("running", 1)] * 2, 180, "both tasks running")
            # The ReplicaSet still late: the mark stays and nothing else is lowered, through the autoscaler's wait
            # for the removed pod (30 s) and the loops after it, which find live pods > replicas.
            samples, deadline = 0, time.monotonic() + 90
            while samples < 8 or "replicas 1 -> 1" not in one.log():
                assert time.monotonic() < deadline, "no loop after the removal"
                pods = {p.metadata.name: p for p in workers.all_pods()}
                assert set(pods) == {marked[0], kept}
                assert (pods[marked[0]].metadata.annotations or {}).get(DELETION_COST) == str(-(2**31))
                assert workers.replicas() == 1
                samples += 1
                time.sleep(1)
            time.sleep(6)  # three more loops with the removal pending
            assert (workers.core.read_namespaced_pod(marked[0], workers.namespace).metadata.annotations or {}).get(
                DELETION_COST) == str(-(2**31))
            assert "clearing removal marks" not in one.log()
        wait_for(lambda: marked[0] not in _names(workers.all_pods()), 120, "the ReplicaSet deleting the marked pod")
        assert _names(workers.live_pods()) == [kept]
        wait_for(lambda: _states(stack, "late-k8s", "late-k8s-1") == [("success", 1)] * 2, 180, "both tasks done")
        assert [t.pod for t in workers.agent.terminations] == marked
        assert not any(t.killed for t in workers.agent.terminations)
        assert not workers.agent.errors
    except BaseException:
        print(workers.diagnostics(), "\n--- autoscaler ---\n", one.log()[-6000:] if one else "")
        raise
    finally:
        if one:
            one.stop()
        workers.close()
