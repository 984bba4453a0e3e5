"""Every parameter of the simulated system, with where its value comes from.

Values marked *calibrated* are published nowhere: they were fitted so the seed's experiment
(/work/shared/seeds/000, HPA vs KEDA on EKS) comes out as it did there; `python -m bench.calibrate`
repeats the fit. Values marked *assumption* are typical figures we could not pin to one source.
Everything else is an upstream default (with the file or page it comes from) or read from this
project's own code, so the benchmark follows the project when it changes:

* airflow_on_k8s/airflow/component.py `scaling_values()` -> the HPA target and behavior, KEDA's pollingInterval,
  cooldownPeriod and HPA behavior; `worker_resources()` -> the worker pod's CPU request (no CPU limit);
* airflow_on_k8s/config.py -> min/max workers, worker_concurrency, both pools' sizes, the Cluster
  Autoscaler timers, and the task-aware autoscaler's policy and poll interval (through its own
  command line: ScalingConfig.autoscaler_args -> airflow_on_k8s.autoscaler.settings).

Where things run (airflow_on_k8s/airflow/component.py): Celery workers on the system pool (no taint), the
KubernetesPodOperator (KPO) pods of tasks on the tainted task pool, which scales from zero.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from airflow_on_k8s.airflow.component import AirflowArgs, scaling_values, worker_resources
from airflow_on_k8s.config import ClusterAutoscalerConfig, ScalingConfig, _duration_seconds, parse_stack_config
from airflow_on_k8s.autoscaler.policy import PolicyConfig
from airflow_on_k8s.autoscaler.settings import settings_from_args

from bench.hpa import DEFAULT_BEHAVIOR, Behavior, HpaControllerFlags, ScalingPolicy, ScalingRules
from bench.keda import KedaParams

Mode = Literal["hpa", "keda", "task-aware"]
MODES: tuple[Mode, ...] = ("hpa", "keda", "task-aware")


@dataclass(frozen=True)
class WorkerPod:
    """One Celery worker pod of the Airflow chart's worker Deployment."""

    request_m: float
    limit_m: float | None  # None: no CPU limit (the project's choice)
    # assumption: an idle `airflow celery worker` (heartbeats, gossip) is a few millicores.
    idle_cpu_m: float = 5.0
    # calibrated: bound to a node -> container running (the chart's wait-for-airflow-migrations init
    # container runs the Airflow CLI, then the container is created; image already on the node).
    startup_s: float = 30.0
    # assumption: pulling apache/airflow (~500 MB compressed) onto a node that does not have it yet.
    image_pull_s: float = 40.0
    # calibrated: container start -> Celery consuming (imports, config, broker connection), spent at
    # `boot_cpu_m` above idle. The chart's worker has no readinessProbe: the pod is Ready (and its CPU
    # counted by the HPA) from container start.
    boot_s: float = 30.0
    boot_cpu_m: float = 300.0
    # None: every pod boots in boot_s (its own node's CPU). A number: the boots share that many cores, as on the
    # two-core machine of the scaled-down real runs (bench/sim_vs_real.py fits it): a pod whose container starts
    # while k pods (itself included) are starting or booting boots in boot_s * max(1, k / boot_cores).
    boot_cores: float | None = None
    # Chart values.yaml workers.terminationGracePeriodSeconds (the project keeps it): SIGTERM starts
    # Celery's warm shutdown (no new tasks, running ones go on); at the end SIGKILL kills what still runs.
    termination_grace_s: float = 600.0
    # assumption: a warm shutdown with nothing running exits in about a second.
    idle_shutdown_s: float = 1.0


@dataclass(frozen=True)
class Celery:
    concurrency: int
    # Airflow [celery] worker_prefetch_multiplier default 1 and task_acks_late default True
    # (providers/celery default_celery.py): a worker holds at most concurrency * multiplier messages
    # and, acking late, counts the running ones, so with 1 it reserves nothing beyond its free slots.
    prefetch_multiplier: int = 1
    # Message taken -> task instance "running" (the worker forks the task process, the task SDK's supervisor
    # starts and reports to the API server). 0 in the full-size scenarios (seconds against minutes); the
    # scaled-down real runs measure it (bench/sim_vs_real.py), where it is a visible share of a 15 s task.
    task_start_s: float = 0.0
    # CPU the worker pod burns during a task's start (the forked task process and its supervisor importing Airflow
    # and parsing the DAG file), instead of the task's own CPU. 0 by default (a share of a core for a second or
    # two against tasks of minutes); the real runs' HPA sees it at this scale (bench/sim_vs_real.py fits it).
    task_start_cpu_m: float = 0.0


@dataclass(frozen=True)
class Airflow:
    # [core] parallelism default 32: at most this many task instances queued or running per scheduler.
    parallelism: int = 32
    # [scheduler] task_instance_heartbeat_timeout default 300 s: a killed task stays "running" in the DB
    # until the scheduler notices its heartbeat stopped; then it fails and, with retries left, is retried.
    heartbeat_timeout_s: float = 300.0
    # [core] default_task_retry_delay 300 s. Airflow's default_task_retries is 0 (a killed task simply
    # fails); the scenarios give tasks 2 retries, as production DAGs do, so an evicted task runs again.
    retry_delay_s: float = 300.0
    retries: int = 2


@dataclass(frozen=True)
class Kpo:
    """A KubernetesPodOperator task: the worker slot waits while a pod on the task pool does the work."""

    # assumption: a task pod requesting 1 CPU.
    pod_request_m: float = 1000.0
    # assumption: the worker's task process streaming the pod's logs and polling its phase.
    wait_cpu_m: float = 20.0
    # assumption: the task image's pull on a node without it, then container start.
    image_pull_s: float = 20.0
    start_s: float = 3.0
    # If the worker is killed, the pod runs on; the retry reattaches to it while it still runs, and
    # starts a new pod once it has finished (operators/pod.py get_or_create_pod, reattach_on_restart /
    # durable defaulting to True).
    reattach: bool = True


@dataclass(frozen=True)
class NodePool:
    """A node pool and the Cluster Autoscaler (CA) that sizes it."""

    pods_per_node: int
    min_nodes: int = 0
    max_nodes: int = 10
    # A fixed pool of this many ready nodes (no CA), like the seed's cluster; None = CA-managed.
    static_nodes: int | None = None
    # Slots held by other pods (Airflow's scheduler, API server... on the system pool), on the first nodes.
    reserved_slots: int = 0
    # assumption: ASG / MIG scale-up to node Ready (EKS and GKE typically 60-120 s).
    provision_s: float = 90.0
    scan_interval_s: float = 10.0  # CA --scan-interval default
    # CA --scale-down-unneeded-time / --scale-down-delay-after-add: the project's defaults
    # (airflow_on_k8s/config.py ClusterAutoscalerConfig); stock CA uses 10m for both (STOCK_CA below).
    scale_down_unneeded_s: float = float(_duration_seconds(ClusterAutoscalerConfig().scale_down_unneeded_time))
    scale_down_delay_after_add_s: float = float(_duration_seconds(ClusterAutoscalerConfig().scale_down_delay_after_add))


STOCK_CA = {"scale_down_unneeded_s": 600.0, "scale_down_delay_after_add_s": 600.0}


@dataclass(frozen=True)
class HpaMode:
    target_cpu_pct: int
    behavior: Behavior | None  # None: spec.behavior unset (the legacy normalization)


@dataclass(frozen=True)
class KedaMode:
    params: KedaParams
    behavior: Behavior | None  # the ScaledObject's advanced.horizontalPodAutoscalerConfig.behavior


@dataclass(frozen=True)
class TaskAwareMode:
    """The task-aware controller as the project deploys it (see `task_aware_from_config`)."""

    policy: PolicyConfig
    poll_interval_s: float


def task_aware_from_config(scaling: ScalingConfig, worker_concurrency: int) -> TaskAwareMode:
    """The policy and loop interval the deployed autoscaler gets: the stack's `scaling` keys turned into
    its command line (ScalingConfig.autoscaler_args) and parsed by the autoscaler's own settings code."""
    # The connection flags are required but unused here (nothing connects).
    argv = scaling.autoscaler_args(worker_concurrency) + ["--db-url=postgresql://unused", "--broker-url=redis://unused"]
    settings, _ = settings_from_args(argv, environ={})
    return TaskAwareMode(policy=settings.policy_config(), poll_interval_s=settings.poll_interval_s)


@dataclass(frozen=True)
class Setup:
    """Everything one simulated run needs besides the tasks."""

    worker: WorkerPod
    celery: Celery
    worker_pool: NodePool
    task_pool: NodePool
    min_workers: int
    max_workers: int
    target_load_factor: float
    hpa: HpaMode
    keda: KedaMode
    task_aware: TaskAwareMode
    airflow: Airflow = Airflow()
    kpo: Kpo = Kpo()
    hpa_flags: HpaControllerFlags = HpaControllerFlags()
    # metrics-server --metric-resolution (15s in its chart and components.yaml): one CPU sample per pod
    # per 15 s, averaged over that window.
    metrics_resolution_s: float = 15.0
    # Simulated time before the first task, so every controller has a history (pods already running).
    warmup_s: float = 900.0

    def with_stock_ca(self) -> Setup:
        return replace(
            self,
            worker_pool=replace(self.worker_pool, **STOCK_CA),
            task_pool=replace(self.task_pool, **STOCK_CA),
        )


def behavior_from_k8s(spec: dict | None) -> Behavior | None:
    """A `spec.behavior` dict as the API server completes it (apis/autoscaling/v2/defaults.go)."""
    if spec is None:
        return None

    def rules(raw: dict | None, default: ScalingRules) -> ScalingRules:
        if raw is None:
            return default
        policies = default.policies
        if raw.get("policies") is not None:
            policies = tuple(ScalingPolicy(p["type"], int(p["value"]), float(p["periodSeconds"])) for p in raw["policies"])
        window = raw.get("stabilizationWindowSeconds", default.stabilization_s)
        return ScalingRules(policies, window, raw.get("selectPolicy", default.select))

    return Behavior(
        rules(spec.get("scaleUp"), DEFAULT_BEHAVIOR.scale_up), rules(spec.get("scaleDown"), DEFAULT_BEHAVIOR.scale_down)
    )


def _millicores(quantity: str) -> float:
    return float(quantity[:-1]) if quantity.endswith("m") else float(quantity) * 1000


def project_setup() -> Setup:
    """The project as it deploys by default (airflow_on_k8s/config.py defaults, airflow_on_k8s/airflow/component.py values)."""
    config = parse_stack_config({"cloud": "local"})
    values = {
        mode: scaling_values(AirflowArgs.from_stack(parse_stack_config({"cloud": "local", "scaling": {"mode": mode}})))
        for mode in MODES
    }
    hpa, keda = values["hpa"]["hpa"], values["keda"]["keda"]
    (cpu_metric,) = [m for m in hpa["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    concurrency = config.airflow.worker_concurrency
    resources = worker_resources(concurrency)
    request_m = _millicores(resources["requests"]["cpu"])
    limit = resources.get("limits", {}).get("cpu")
    return Setup(
        worker=WorkerPod(request_m=request_m, limit_m=_millicores(limit) if limit else None),
        celery=Celery(concurrency=concurrency),
        # System pool (m6i.large, 2 vCPU: ~1.7 CPU for pods after kubelet reserve and DaemonSets, so 5
        # workers of 300m); assumption: Airflow's own pods and the add-ons take 6 of the 2 minimum nodes' slots.
        worker_pool=NodePool(
            pods_per_node=5, min_nodes=config.system_pool.min_size, max_nodes=config.system_pool.max_size, reserved_slots=6
        ),
        # Task pool (m6i.xlarge, 4 vCPU: ~3.7 CPU for pods), 1-CPU task pods: 3 per node, from zero.
        task_pool=NodePool(pods_per_node=3, min_nodes=config.task_pool.min_size, max_nodes=config.task_pool.max_size),
        min_workers=config.scaling.min_workers,
        max_workers=config.scaling.max_workers,
        target_load_factor=config.scaling.target_load_factor,
        hpa=HpaMode(cpu_metric["resource"]["target"]["averageUtilization"], behavior_from_k8s(hpa.get("behavior"))),
        keda=KedaMode(
            KedaParams(polling_interval_s=float(keda["pollingInterval"]), cooldown_period_s=float(keda["cooldownPeriod"])),
            behavior_from_k8s(keda.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")),
        ),
        task_aware=task_aware_from_config(config.scaling, concurrency),
    )


def seed_setup() -> Setup:
    """The seed's cluster: 500m/500m workers, concurrency 2, nodes already there, `kubectl autoscale
    --cpu-percent=60 --min=1 --max=10` (no behavior), the chart's KEDA values with minReplicaCount 1."""
    return Setup(
        worker=WorkerPod(request_m=500.0, limit_m=500.0),
        celery=Celery(concurrency=2),
        worker_pool=NodePool(pods_per_node=7, static_nodes=3),
        task_pool=NodePool(pods_per_node=3),
        min_workers=1,
        max_workers=10,
        target_load_factor=1.0,
        hpa=HpaMode(target_cpu_pct=60, behavior=None),
        keda=KedaMode(KedaParams(), behavior=None),
        # The project's task-aware defaults (min 1, max 10 like the seed's HPA) with the seed's concurrency.
        task_aware=task_aware_from_config(ScalingConfig(), worker_concurrency=2),
    )
