"""A node agent for tests: the part of the kubelet's contract this project depends on, with real processes.

It registers Node objects, keeps them Ready (node status and a Lease in kube-node-lease, which the node
lifecycle controller reads), and for every pod the scheduler binds to one of its nodes:

- starts the pod's process (from `runner(pod)`, e.g. a real `airflow celery worker` named `celery@<pod name>`) in
  a session of its own, reports the pod Running and Ready (the chart's Celery workers have no readiness probe,
  so a kubelet reports them Ready once the container runs) and restarts the process if it exits, counting
  restarts (restartPolicy Always);
- reports a pod not Ready on request (`set_ready`), as a kubelet does when a readiness probe fails or the
  container is unhealthy, while its process keeps running (and may hold a task);
- once the pod has a deletionTimestamp: SIGTERM to the main process only (the chart sets DUMB_INIT_SETSID=0 so
  Celery gets a warm shutdown), waits up to the pod's terminationGracePeriodSeconds, SIGKILLs the whole process
  group if it is still running (the container runtime kills every process of the container), then removes the
  pod with grace period 0 and its UID as precondition, as the kubelet's status manager does.

Every termination is recorded (`terminations`), so a test can tell a clean warm shutdown from a kill.

It polls (every `poll_s`) instead of watching: simpler, and tests need no lower latency than half a second.
Nothing connects to a node or pod IP: pods report 127.0.0.1, and nothing is served there on their behalf.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)

NODE_LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_S = 40  # the kubelet's default nodeLeaseDurationSeconds
HEARTBEAT_S = 10  # the kubelet renews its Lease every 10 s (a quarter of the duration)


@dataclass(frozen=True)
class ProcessSpec:
    """What to run for a pod: argv, environment, and where its output goes."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


# Given the pod the scheduler bound here, what to run for it (None: run nothing, only report it Running).
PodRunner = Callable[[client.V1Pod], ProcessSpec | None]


@dataclass
class Termination:
    """How a pod's process ended after the pod was deleted."""

    pod: str
    sigterm_at: float
    ended_at: float
    killed: bool  # SIGKILLed at the end of the grace period, i.e. the process (and its tasks) did not finish


@dataclass
class _Container:
    uid: str
    process: subprocess.Popen | None
    log_path: Path | None
    node: str = ""
    container: str = ""  # the pod's first container: the one the process stands for
    restarts: int = 0
    sigterm_at: float | None = None


@dataclass(frozen=True)
class RunningContainer:
    """A pod's process that is running now, and where (`NodeAgent.running_containers`)."""

    namespace: str
    pod: str
    node: str
    container: str
    pid: int


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class NodeAgent:
    """Runs `runner`'s processes for the pods bound to `nodes` (see module docstring)."""

    def __init__(
        self,
        api: client.ApiClient,
        nodes: dict[str, dict[str, str]],
        runner: PodRunner,
        log_dir: Path,
        *,
        capacity: dict[str, str] | None = None,
        base_env: dict[str, str] | None = None,
        poll_s: float = 0.5,
    ):
        """`nodes`: node name -> labels. `capacity`: each node's cpu/memory/pods (also its allocatable)."""
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.nodes = nodes
        self.runner = runner
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity or {"cpu": "8", "memory": "32Gi", "pods": "110"}
        self.base_env = base_env if base_env is not None else dict(os.environ)
        self.poll_s = poll_s
        self.terminations: list[Termination] = []
        self._containers: dict[tuple[str, str], _Container] = {}  # (namespace, name) -> container
        self._not_ready: set[tuple[str, str]] = set()  # pods reported not Ready (set_ready)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_heartbeat = 0.0
        self.errors: list[str] = []

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> NodeAgent:
        for name, labels in self.nodes.items():
            self._register(name, labels)
        self._heartbeat()
        self._thread = threading.Thread(target=self._run, name="node-agent", daemon=True)
        self._thread.start()
        return self

    def stop(self, grace_s: float = 10, delete_nodes: bool = True) -> None:
        """Stop the loop and every process (SIGTERM, then SIGKILL after `grace_s`), and deregister the nodes
        (a node that stopped heartbeating would otherwise linger NotReady for later tests)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
        for c in self._containers.values():
            if c.process and c.process.poll() is None:
                c.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for c in self._containers.values():
            if c.process:
                try:
                    c.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self._kill_group(c.process)
        if delete_nodes:
            for name in self.nodes:
                try:
                    self.core.delete_node(name)
                except ApiException as e:
                    if e.status != 404:
                        raise

    def __enter__(self) -> NodeAgent:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def running_containers(self) -> list[RunningContainer]:
        """Every pod's process that is running now, with its node and container (what a kubelet's cAdvisor
        measures; kubelet_metrics reads their CPU from here)."""
        return [
            RunningContainer(ns, name, c.node, c.container, c.process.pid)
            for (ns, name), c in list(self._containers.items())
            if c.process is not None and c.process.poll() is None
        ]

    def node_status(self, name: str) -> dict:
        """The status posted for node `name` on registration and every heartbeat; a subclass adds fields by
        extending it (kubelet_metrics adds the kubelet's daemonEndpoints)."""
        now = _now()
        ready = client.V1NodeCondition(
            type="Ready", status="True", reason="KubeletReady", message="node agent is posting ready status",
            last_heartbeat_time=now, last_transition_time=now,
        )
        return {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": [ready],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
            "nodeInfo": {
                "architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "node-agent",
                "kubeProxyVersion": "", "bootID": "", "machineID": "", "systemUUID": "", "kernelVersion": "",
                "osImage": "", "containerRuntimeVersion": "node-agent://1",
            },
        }  # fmt: skip

    def processes(self) -> dict[str, int]:
        """Pod name -> pid of its running process."""
        return {c.pod: c.pid for c in self.running_containers()}

    # --- nodes -------------------------------------------------------------------------------------------------

    def _register(self, name: str, labels: dict[str, str]) -> None:
        body = client.V1Node(
            metadata=client.V1ObjectMeta(name=name, labels={"kubernetes.io/hostname": name, **labels}),
            spec=client.V1NodeSpec(),
        )
        try:
            self.core.create_node(body)
        except ApiException as e:
            if e.status != 409:
                raise
        self._post_node_status(name)

    def _post_node_status(self, name: str) -> None:
        self.core.patch_node_status(name, {"status": self.node_status(name)})

    def _heartbeat(self) -> None:
        """Renew each node's Lease (what the node lifecycle controller watches) and its Ready condition."""
        now = _now()
        for name in self.nodes:
            spec = client.V1LeaseSpec(holder_identity=name, lease_duration_seconds=LEASE_DURATION_S, renew_time=now)
            try:
                self.coordination.patch_namespaced_lease(name, NODE_LEASE_NAMESPACE, {"spec": spec})
            except ApiException as e:
                if e.status != 404:
                    raise
                lease = client.V1Lease(metadata=client.V1ObjectMeta(name=name, namespace=NODE_LEASE_NAMESPACE), spec=spec)
                self.coordination.create_namespaced_lease(NODE_LEASE_NAMESPACE, lease)
            self._post_node_status(name)
        self._last_heartbeat = time.monotonic()

    # --- pods --------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if time.monotonic() - self._last_heartbeat >= HEARTBEAT_S:
                    self._heartbeat()
                self._sync()
            except Exception as e:  # noqa: BLE001 - a test harness keeps going and reports
                log.exception("node agent sync failed")
                self.errors.append(repr(e))
            self._stop.wait(self.poll_s)

    def _bound_pods(self) -> list[client.V1Pod]:
        pods = []
        for name in self.nodes:
            pods += self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={name}").items
        return pods

    def _sync(self) -> None:
        seen = set()
        for pod in self._bound_pods():
            key = (pod.metadata.namespace, pod.metadata.name)
            seen.add(key)
            container = self._containers.get(key)
            if container is not None and container.uid != pod.metadata.uid:
                container = None  # a new pod with the old name (StatefulSet-like); the old one is gone
            if pod.metadata.deletion_timestamp is not None:
                self._terminate(pod, container)
            elif container is None:
                self._containers[key] = self._start(pod)
                self._report_running(pod, restarts=0)
            elif container.process is not None and container.process.poll() is not None:
                # restartPolicy Always: the kubelet restarts the container and counts it.
                restarted = self._start(pod)
                restarted.restarts = container.restarts + 1
                self._containers[key] = restarted
                self._report_running(pod, restarts=restarted.restarts)
        for key in set(self._containers) - seen:
            # Deleted by someone with grace 0 (force): the kubelet kills what is left.
            c = self._containers.pop(key)
            if c.process and c.process.poll() is None:
                self._kill_group(c.process)
                self.terminations.append(Termination(key[1], time.monotonic(), time.monotonic(), killed=True))

    def _start(self, pod: client.V1Pod) -> _Container:
        spec = self.runner(pod)
        if spec is None:
            return _Container(pod.metadata.uid, None, None, pod.spec.node_name, pod.spec.containers[0].name)
        log_path = self.log_dir / f"{pod.metadata.namespace}_{pod.metadata.name}.log"
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                spec.argv, env={**self.base_env, **spec.env}, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        return _Container(pod.metadata.uid, process, log_path, pod.spec.node_name, pod.spec.containers[0].name)

    def set_ready(self, namespace: str, name: str, ready: bool) -> None:
        """Report the pod's containers ready or not (Ready and ContainersReady conditions, each container's
        `ready`), keeping its process running. The report sticks across container restarts."""
        key = (namespace, name)
        (self._not_ready.discard if ready else self._not_ready.add)(key)
        pod = self.core.read_namespaced_pod(name, namespace)
        container = self._containers.get(key)
        self._report_running(pod, restarts=container.restarts if container else 0)

    def _report_running(self, pod: client.V1Pod, restarts: int) -> None:
        now = _now()
        ready = (pod.metadata.namespace, pod.metadata.name) not in self._not_ready
        conditions = [
            {"type": t, "status": "True" if ready or t in ("PodScheduled", "Initialized") else "False",
             "lastTransitionTime": now.isoformat()}
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        statuses = [
            {
                "name": c.name, "image": c.image or "", "imageID": "", "ready": ready, "started": True,
                "restartCount": restarts, "state": {"running": {"startedAt": now.isoformat()}},
            }
            for c in pod.spec.containers
        ]  # fmt: skip
        status = {
            "phase": "Running", "conditions": conditions, "containerStatuses": statuses,
            "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": (pod.status.start_time or now).isoformat() if pod.status else now.isoformat(),
        }  # fmt: skip
        self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": status})

    def _terminate(self, pod: client.V1Pod, container: _Container | None) -> None:
        name, namespace = pod.metadata.name, pod.metadata.namespace
        process = container.process if container else None
        if process is not None and process.poll() is None:
            now = time.monotonic()
            if container.sigterm_at is None:
                container.sigterm_at = now
                process.send_signal(signal.SIGTERM)  # the main process only: Celery's warm shutdown
                return
            grace = pod.spec.termination_grace_period_seconds
            grace = 30 if grace is None else grace
            if now - container.sigterm_at < grace:
                return
            self._kill_group(process)
            self.terminations.append(Termination(name, container.sigterm_at, time.monotonic(), killed=True))
        elif process is not None and container.sigterm_at is not None:
            self.terminations.append(Termination(name, container.sigterm_at, time.monotonic(), killed=False))
        elif process is not None:
            # Exited on its own just as the pod was deleted: nothing was running to stop.
            self.terminations.append(Termination(name, time.monotonic(), time.monotonic(), killed=False))
        if process is not None:
            self._kill_group(process)  # any child the main process left behind goes with the container
        self._containers.pop((namespace, name), None)
        try:
            self.core.delete_namespaced_pod(
                name, namespace,
                body=client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=pod.metadata.uid)),
            )  # fmt: skip
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    @staticmethod
    def _kill_group(process: subprocess.Popen) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.error("pid %s survived SIGKILL", process.pid)
