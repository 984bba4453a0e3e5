"""The HPA on CPU as the seed measured it, on the real control plane: real metrics-server scraping the node agent's
kubelet resource-metrics endpoint (real CPU of each pod's processes), the real HPA controller in
kube-controller-manager::

    from airflow_on_k8s.testing.controlplane import ControlPlane
    from airflow_on_k8s.testing.keda import FrontProxy
    from airflow_on_k8s.testing import hpa

    front_proxy = FrontProxy(work_dir)        # the aggregator's flags (metrics.k8s.io is an aggregated API)
    with ControlPlane(extra_apiserver_args=front_proxy.apiserver_args()) as cp:
        with hpa.start_cpu_metrics(cp, nodes, runner, log_dir) as metrics:   # MetricsNodeAgent + metrics-server
            metrics.agent                     # the node agent (kubelet_metrics.MetricsNodeAgent): runs the pods
            metrics.server                    # metrics_server.MetricsServer
            apply(hpa.cpu_hpa("airflow-worker", ns))              # autoscaling/v2, the seed's target by default
            hpa.pod_usage(api, ns)            # `kubectl top pods`: pod -> PodMetric(millicores, memory_bytes)
            hpa.hpa_state(api, ns, "airflow-worker")              # `kubectl get hpa`: replicas, utilization

``runner`` is the node agent's (pod -> ProcessSpec): for a worker whose tasks burn CPU, run the real Celery worker
and have each task call :func:`airflow_on_k8s.testing.kubelet_metrics.burn_cpu` (``SEED_SCALED.task_millicores``
for the task's duration); for a bare CPU load, :func:`~airflow_on_k8s.testing.kubelet_metrics.burner_argv`.

The seed (EKS + Airflow, HPA vs KEDA): worker requests ``cpu: 500m`` (= limits), each running task uses about
``400m`` (``kubectl top``: 404m, i.e. 80 % of the request), ``kubectl autoscale --cpu-percent=60 --min=1 --max=10``.
Scaled to fit this two-core machine, requests and usage both divided by 5 (:data:`SEED_SCALED`): requests
``100m``, a task ``80m`` (still 80 % of the request, so the HPA sees the seed's utilization and computes the seed's
replica counts), the target stays 60 %, min 1, max 10 (10 workers busy: 0.8 cores).

The HPA controller runs with kube-controller-manager's defaults, as on EKS: ``--horizontal-pod-autoscaler-sync-
period=15s``, tolerance 0.1, CPU initialization period 5 min, initial readiness delay 30 s, downscale
stabilization 5 min; metrics-server with upstream's ``--metric-resolution=15s``. No timing is scaled down
(``ControlPlane(extra_controller_manager_args=[...])`` can; metrics-server refuses a resolution under 10 s).

Measured here (tests/k8s/test_hpa_cpu.py, 2 cores): a pod's first metrics 15-30 s after it starts (two scrapes);
the HPA on a Deployment of 80m-burning pods went 1 -> 2 about 30 s after it was created and 2 -> 3 at about 60 s
(each step waits for the new pod's own metrics: until then it counts as 0 % when scaling up), reporting 80-81 %.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from airflow_on_k8s.testing.controlplane import ControlPlane
from airflow_on_k8s.testing.kubelet_metrics import MetricsNodeAgent
from airflow_on_k8s.testing.metrics_server import MetricsServer, start_metrics_server
from airflow_on_k8s.testing.node_agent import PodRunner


@dataclass(frozen=True)
class CpuLoad:
    """A worker's CPU request, what one running task burns, and the HPA the seed set on it."""

    request_millicores: int
    task_millicores: int
    target_utilization: int
    min_replicas: int
    max_replicas: int

    def scaled(self, factor: float) -> CpuLoad:
        """Requests and usage scaled together (the utilization, and so the HPA's arithmetic, unchanged)."""
        return CpuLoad(round(self.request_millicores * factor), round(self.task_millicores * factor),
                       self.target_utilization, self.min_replicas, self.max_replicas)


SEED = CpuLoad(request_millicores=500, task_millicores=400, target_utilization=60, min_replicas=1, max_replicas=10)
SEED_SCALE = 0.2
SEED_SCALED = SEED.scaled(SEED_SCALE)  # 100m requests, 80m per task: fits two cores with 10 workers busy


@dataclass
class CpuMetrics:
    agent: MetricsNodeAgent
    server: MetricsServer


@contextlib.contextmanager
def start_cpu_metrics(control_plane: ControlPlane, nodes: dict[str, dict[str, str]], runner: PodRunner,
                      log_dir: Path, *, metric_resolution: str = "15s", **agent_kwargs) -> Iterator[CpuMetrics]:
    """A :class:`MetricsNodeAgent` for ``nodes`` (node name -> labels) running ``runner``'s processes, then
    metrics-server scraping it. ``control_plane`` must have the front-proxy flags (module docstring).
    ``agent_kwargs`` go to the NodeAgent (``capacity``, ``base_env``, ``poll_s``)."""
    api = control_plane.api_client()
    agent = MetricsNodeAgent(api, nodes, runner, log_dir, **agent_kwargs)
    agent.start()
    try:
        with start_metrics_server(control_plane, metric_resolution=metric_resolution) as server:
            yield CpuMetrics(agent, server)
    finally:
        agent.stop()
        api.close()


def cpu_hpa(deployment: str, namespace: str, load: CpuLoad = SEED_SCALED, name: str | None = None) -> dict:
    """``kubectl autoscale deployment <deployment> --cpu-percent=<target> --min=<min> --max=<max>``, as the
    autoscaling/v2 object it creates (no behavior: the controller's default policies)."""
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name or deployment, "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
            "minReplicas": load.min_replicas, "maxReplicas": load.max_replicas,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": load.target_utilization}}}],
        },
    }  # fmt: skip


def parse_cpu(quantity: str) -> float:
    """A CPU quantity ("250m", "123456789n", "1") in millicores."""
    from kubernetes.utils import parse_quantity

    return float(parse_quantity(quantity) * 1000)


@dataclass(frozen=True)
class PodMetric:
    millicores: float
    memory_bytes: int
    window_s: float
    timestamp: str


def pod_usage(api, namespace: str) -> dict[str, PodMetric]:
    """``kubectl top pods -n <namespace>``: GET /apis/metrics.k8s.io/v1beta1/namespaces/<ns>/pods, summed over
    each pod's containers."""
    from kubernetes import client
    from kubernetes.utils import parse_quantity

    found = client.CustomObjectsApi(api).list_namespaced_custom_object("metrics.k8s.io", "v1beta1", namespace, "pods")
    usage = {}
    for item in found["items"]:
        cpu = sum(parse_quantity(c["usage"]["cpu"]) for c in item["containers"])
        memory = sum(parse_quantity(c["usage"]["memory"]) for c in item["containers"])
        usage[item["metadata"]["name"]] = PodMetric(float(cpu * 1000), int(memory),
                                                    float(item["window"].rstrip("s")), item["timestamp"])
    return usage


@dataclass(frozen=True)
class HpaState:
    current_replicas: int
    desired_replicas: int
    utilization: int | None  # average CPU utilization (% of request) the controller last computed
    conditions: dict[str, tuple[str, str, str]]  # type -> (status, reason, message)


def hpa_state(api, namespace: str, name: str) -> HpaState:
    """``kubectl get hpa``: what the HPA controller last wrote in the object's status."""
    from kubernetes import client

    hpa = client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler(name, namespace)
    status = hpa.status
    utilization = None
    for metric in status.current_metrics or []:
        if metric.type == "Resource" and metric.resource and metric.resource.name == "cpu":
            utilization = metric.resource.current.average_utilization
    conditions = {c.type: (c.status, c.reason, c.message) for c in status.conditions or []}
    return HpaState(status.current_replicas or 0, status.desired_replicas or 0, utilization, conditions)
