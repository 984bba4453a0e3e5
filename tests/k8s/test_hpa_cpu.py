"""The HPA on CPU on the real control plane (issue 12, item 2): the node agent serves a kubelet resource-metrics
endpoint with the real CPU of each pod's processes, the real metrics-server (from its Go module) scrapes it, and
the real HPA controller in kube-controller-manager scales a Deployment on it. See airflow_on_k8s.testing.hpa
(the seed's figures and how they are scaled to two cores) and airflow_on_k8s.testing.kubelet_metrics (where the
figures come from)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shlex
import sys
import threading
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("kubernetes")
from kubernetes import client  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

from airflow_on_k8s.testing import hpa  # noqa: E402
from airflow_on_k8s.testing.controlplane import ControlPlane, binary  # noqa: E402
from airflow_on_k8s.testing.keda import FrontProxy  # noqa: E402
from airflow_on_k8s.testing.kubelet_metrics import burner_argv  # noqa: E402
from airflow_on_k8s.testing.node_agent import ProcessSpec  # noqa: E402

from .test_keda import get_json, wait_for  # noqa: E402

NODES = {"hpa-node-0": {}, "hpa-node-1": {}}
IDLE = [sys.executable, "-c", "import time; time.sleep(10**6)"]


def runner(pod: client.V1Pod) -> ProcessSpec:
    """The pod's label `burn` (millicores) says what it burns; `via-child: "true"` burns in a child of a shell,
    so only counting the process tree gets it right. No label: an idle Python."""
    labels = pod.metadata.labels or {}
    if "burn" not in labels:
        return ProcessSpec(IDLE)
    argv = burner_argv(float(labels["burn"]))
    if labels.get("via-child") == "true":
        return ProcessSpec(["/bin/sh", "-c", f"{shlex.join(argv)} & wait"])
    return ProcessSpec(argv)


@pytest.fixture(scope="module")
def cpu_plane():
    binary("metrics-server", "metrics-server")  # built by `make test`; a missing one fails with the command to run
    with tempfile.TemporaryDirectory(prefix="front-proxy-") as tmp:
        front_proxy = FrontProxy(Path(tmp))
        with ControlPlane(extra_apiserver_args=front_proxy.apiserver_args()) as plane:
            with hpa.start_cpu_metrics(plane, NODES, runner, plane.work_dir / "pods") as metrics:
                api = plane.api_client()
                try:
                    yield plane, api, metrics
                finally:
                    api.close()


def namespace(api, name: str) -> str:
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    def default_sa():
        try:
            return core.read_namespaced_service_account("default", name)
        except ApiException:
            return None

    wait_for(default_sa, 30, what=f"ServiceAccount {name}/default")
    return name


def container(cpu_request: str | None = None) -> dict:
    resources = {"requests": {"cpu": cpu_request}} if cpu_request else {}
    return {"name": "worker", "image": "node-agent/process", "resources": resources}


def test_pod_metrics_are_the_real_cpu_of_the_pods_processes(cpu_plane):
    """`kubectl top pods` through the aggregator: a pod burning 500m in a child process reads ~500m, an idle one ~0."""
    plane, api, metrics = cpu_plane
    ns = namespace(api, "top")
    core = client.CoreV1Api(api)
    pods = {"burn-500m": {"burn": "500", "via-child": "true"}, "idle": {}}
    for name, labels in pods.items():
        core.create_namespaced_pod(ns, {"apiVersion": "v1", "kind": "Pod",
                                        "metadata": {"name": name, "labels": labels},
                                        "spec": {"containers": [container()], "automountServiceAccountToken": False}})
    try:
        _check_top(plane, api, metrics, ns, pods)
    finally:
        core.delete_collection_namespaced_pod(ns, grace_period_seconds=0)  # its burner would load the next test


class SchedstatProbe:
    """An independent measure of a pod's CPU, for comparison: the scheduler's own runtime of each process of the
    pod's session (``/proc/<pid>/schedstat``, nanoseconds; not the tick-based utime/stime the endpoint serves),
    sampled every 0.25 s with the wall time."""

    def __init__(self, session: int) -> None:
        self.session, self.samples = session, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            total = 0
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/stat", "rb") as f:
                        if int(f.read().rsplit(b")", 1)[1].split()[3]) != self.session:
                            continue
                    with open(f"/proc/{entry.name}/schedstat") as f:
                        total += int(f.read().split()[0])
                except (OSError, ValueError, IndexError):
                    continue
            self.samples.append((time.time(), total / 1e9))

    def rate(self, start: float, end: float) -> float:
        """Millicores between the samples nearest to ``start`` and ``end`` (unix seconds)."""
        a = min(self.samples, key=lambda s: abs(s[0] - start))
        b = min(self.samples, key=lambda s: abs(s[0] - end))
        return (b[1] - a[1]) / (b[0] - a[0]) * 1000

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _check_top(plane, api, metrics, ns, pods):
    began = time.monotonic()
    probe = None
    try:
        root = wait_for(lambda: [u.pid for u in metrics.agent.sample() if (u.namespace, u.pod) == (ns, "burn-500m")],
                        60, "the burner running", 0.25)[0]
        probe = SchedstatProbe(root)  # the agent starts each pod's process with setsid: its pid is the session
        # metrics-server turns the counter into a rate over its last two scrapes (15 s apart): within ~40 s.
        usage = wait_for(lambda: (u := hpa.pod_usage(api, ns)).keys() >= pods.keys() and u, 90, "metrics of both pods", 2)
        first = time.monotonic() - began
        time.sleep(16)  # one more scrape: a full window of a running burner
        usage = hpa.pod_usage(api, ns)
    finally:
        if probe:
            probe.stop()
    local = {u.pod: u for u in metrics.agent.sample()}
    nodes = get_json(plane, "/apis/metrics.k8s.io/v1beta1/nodes")["items"]
    for name, metric in usage.items():
        print(f"pod {name}: {metric.millicores:.0f}m over {metric.window_s:.1f} s, "
              f"{metric.memory_bytes / 2**20:.1f} MiB"
              f" ({local[name].processes} processes, {local[name].cpu_seconds:.2f} CPU s so far)")
    for node in nodes:
        print(f"node {node['metadata']['name']}: {node['usage']['cpu']}, {node['usage']['memory']}")
    print(f"first pod metrics {first:.1f} s after the pods were created; scrapes per node: {metrics.agent.scrapes}")
    burn, idle = usage["burn-500m"], usage["idle"]
    # The metrics API's timestamp has a precision of one second: compare over its window, to within that.
    end = dt.datetime.fromisoformat(burn.timestamp.replace("Z", "+00:00")).timestamp()
    independent = probe.rate(end - burn.window_s, end)
    print(f"burn-500m: metrics API {burn.millicores:.0f}m, schedstat {independent:.0f}m over the same window, "
          f"nominal 500m")
    assert local["burn-500m"].processes == 2  # the shell and its burning child
    assert abs(burn.millicores - independent) <= 0.12 * independent + 10, (burn.millicores, independent)
    # ... and what it was meant to burn, allowing for a machine shared with other work.
    assert 300 <= burn.millicores <= 600, f"a 500m burner measured {burn.millicores:.0f}m"
    assert idle.millicores < 10, f"an idle pod measured {idle.millicores:.0f}m"
    assert 1 * 2**20 < idle.memory_bytes < 200 * 2**20 and 1 * 2**20 < burn.memory_bytes < 200 * 2**20
    # metrics-server decoded every scrape: no failed scrape, no counter that went backwards.
    log = metrics.server.process.log_path.read_text()
    for error in ("Failed to scrape node", "unexpected decrease", "Failed getting complete"):
        assert error not in log, [line for line in log.splitlines() if error in line][:3]
    # The node's figures are the sum over its pods (a node with no pod has none).
    node_cpu = sum(hpa.parse_cpu(n["usage"]["cpu"]) for n in nodes)
    assert 400 <= node_cpu <= 620, f"nodes measured {node_cpu:.0f}m in all"


def deployment(name: str, labels: dict[str, str], cpu_request: str) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name, **labels}},
                              "spec": {"containers": [container(cpu_request)], "automountServiceAccountToken": False,
                                       "terminationGracePeriodSeconds": 1}}},
    }  # fmt: skip


def test_real_hpa_scales_a_deployment_on_measured_cpu(cpu_plane):
    """The seed's HPA (60 % of the request, min 1, max 10), requests and usage scaled by 1/5 (100m requested, 80m
    burnt): the Deployment whose pods burn 80 % scales up, the idle one stays at 1 with its (measured) ~0 %."""
    plane, api, metrics = cpu_plane
    load = hpa.SEED_SCALED
    ns = namespace(api, "hpa")
    apps, autoscaling, core = client.AppsV1Api(api), client.AutoscalingV2Api(api), client.CoreV1Api(api)
    request = f"{load.request_millicores}m"
    apps.create_namespaced_deployment(ns, deployment("busy", {"burn": str(load.task_millicores)}, request))
    apps.create_namespaced_deployment(ns, deployment("idle", {}, request))
    for name in ("busy", "idle"):
        autoscaling.create_namespaced_horizontal_pod_autoscaler(ns, hpa.cpu_hpa(name, ns, load))
    began = time.monotonic()
    timeline = []

    def observe():
        busy, idle = hpa.hpa_state(api, ns, "busy"), hpa.hpa_state(api, ns, "idle")
        row = (round(time.monotonic() - began), busy.current_replicas, busy.desired_replicas, busy.utilization,
               idle.current_replicas, idle.utilization)
        if not timeline or timeline[-1][1:] != row[1:]:
            timeline.append(row)
            print("t=%3ds busy: replicas %d desired %d utilization %s%% | idle: replicas %d utilization %s%%" % row)
        return busy, idle

    # Scaling up needs: the pod running, two scrapes (15 s apart), an HPA sync (every 15 s); then the new pod's
    # own metrics before the next step (a pod without metrics counts as 0 % when scaling up).
    busy, idle = wait_for(lambda: (s := observe())[0].desired_replicas >= 2 and s[1].utilization is not None and s,
                          110, "the busy Deployment scaled up, the idle one measured", 1)
    scaled_at = time.monotonic() - began
    wait_for(lambda: len([u for u in metrics.agent.sample() if u.namespace == ns and u.pod.startswith("busy-")]) >= 2
             and observe(), 30, "the new busy pod running", 1)
    # The next step, as in the seed's `kubectl get hpa -w` (1, 2, 3, 4, 6, 8): watched, not asserted (time).
    with contextlib.suppress(AssertionError):
        wait_for(lambda: observe()[0].desired_replicas >= 3, 45, "a second step", 1)
    events = [e for e in core.list_namespaced_event(ns).items if e.reason == "SuccessfulRescale"]
    for e in events:
        print(f"event {e.involved_object.name}: {e.message}")
    print(f"busy scaled to {busy.desired_replicas} {scaled_at:.0f} s after the HPA was created; "
          f"utilization {busy.utilization}% (target {load.target_utilization}%), idle at {idle.utilization}%")
    # Scaled because of the CPU it measured: ~80 % of the request (80m of 100m), above the 60 % target.
    assert 65 <= busy.utilization <= 100, busy
    assert any(e.involved_object.name == "busy" and "cpu resource utilization (percentage of request) above target"
               in e.message for e in events), [e.message for e in events]
    # The idle Deployment's CPU was measured too (so staying at 1 is the measurement, not a missing metric).
    assert idle.utilization < 15 and idle.current_replicas == 1 and idle.desired_replicas == 1, idle
    assert idle.conditions["ScalingActive"][0] == "True", idle.conditions
    assert not [e for e in events if e.involved_object.name == "idle"]


BURNER = """
import sys, time
{burn_cpu}
def burn(millicores, seconds):  # and write down the CPU it really used (the machine is shared)
    used = burn_cpu(millicores, seconds)
    with open(sys.argv[1], "a") as f:
        f.write(f"{{used}}\\n")
"""
TREE = """
import os, subprocess, sys, time
sys.path.insert(0, os.path.dirname(sys.argv[1]))
from burner import burn
# a child that burns 0.3 s and exits, waited for by this process: in its cutime
subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[2]); from burner import burn; "
                "burn(300, 1.0)", sys.argv[1], os.path.dirname(sys.argv[1])], check=True)
# an orphan: the intermediate exits at once, the grandchild (re-parented to init, same session) burns 0.45 s, and
# init reaps it: only the agent's last sight of it keeps its time
if os.fork() == 0:
    if os.fork() == 0:
        burn(300, 1.5)
        os._exit(0)
    os._exit(0)
os.wait()
time.sleep(2)
burn(300, 1.0)  # and 0.3 s of its own, after the orphan is gone
time.sleep(0.5)
"""


def test_process_tree_cpu_counts_children_and_orphans(tmp_path):
    """The endpoint's CPU counter for one container: a reaped child's CPU (cutime), an orphan's (its session, and
    its last-seen time once init reaped it) and the main process's own all count, and it never decreases."""
    import inspect
    import subprocess

    from airflow_on_k8s.testing.kubelet_metrics import ProcessTreeCPU, all_stats, burn_cpu

    (tmp_path / "burner.py").write_text(BURNER.format(burn_cpu=inspect.getsource(burn_cpu)))
    burnt = tmp_path / "burnt"
    process = subprocess.Popen([sys.executable, "-c", TREE, str(burnt)], start_new_session=True)
    counter, seen, most = ProcessTreeCPU(process.pid), [], 0
    while process.poll() is None:
        cpu, tree = counter.sample(all_stats())
        seen.append(cpu)
        most = max(most, len(tree))
        time.sleep(0.1)
    assert process.returncode == 0
    used = [float(line) for line in burnt.read_text().split()]
    print(f"process tree: {seen[-1]:.2f} CPU s counted; the three burners used {sum(used):.2f} s "
          f"({', '.join(f'{u:.2f}' for u in used)}), plus Python startups; up to {most} processes at once")
    assert len(used) == 3 and seen == sorted(seen) and most >= 2
    # All of the burners' time, and the startups (~0.03 s each), less what the orphan burnt after its last
    # sight (< 0.1 s x 300m). (When init reaps the orphan's zombie only after the end, its time is in the tree
    # anyway: which path counted it depends on init's timing.)
    assert sum(used) <= seen[-1] <= sum(used) + 0.3, (seen[-1], used)
