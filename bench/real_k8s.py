"""`python -m bench.scaling --real-k8s`: the autoscalers on a real control plane, with real Celery workers.

One control plane for every run (airflow_on_k8s.testing.controlplane: etcd, kube-apiserver, kube-controller-manager
with the real Deployment, ReplicaSet and HPA controllers, kube-scheduler, all from their Go modules), real KEDA
(operator + external-metrics adapter from github.com/kedacore/keda/v2, airflow_on_k8s.testing.keda) behind the
aggregated API, PostgreSQL, Redis and, per run, a real Airflow 3 (api-server + scheduler, CeleryExecutor,
tests/autoscaler/airflow_stack.py, as `--real` uses it). The worker Deployment carries the chart's labels; its
pods are bound by the real scheduler to the node agent's nodes (airflow_on_k8s.testing.node_agent), which runs
one real `airflow celery worker` named celery@<pod> per pod and plays the kubelet on deletion: SIGTERM (Celery's
warm shutdown), then SIGKILL of the whole container at the end of terminationGracePeriodSeconds. A task killed
that way is an evicted attempt; Airflow retries it (retries=2) once its heartbeat times out.

Modes (each an AutoscalerMode: setup(plane, namespace, deployment, ctx) / teardown()):

* `keda`: the ScaledObject `scaling.mode: keda` deploys (airflow_on_k8s.testing.keda.airflow_worker_scaled_object
  on airflow.component.scaling_values; fields and their sources are written into the results), served by real
  KEDA; the real HPA controller in kube-controller-manager acts on it; the ReplicaSet controller picks the pods.
* `task-aware`: `python -m airflow_on_k8s.autoscaler --actuator kubernetes` with the program's flags
  (config.ScalingConfig.autoscaler_args) and a token of the program's ServiceAccount bound by its Role.
* `hpa`: the HPA `scaling.mode: hpa` deploys (CPU Utilization 70 %), acted on by the real HPA controller on the
  CPU real metrics-server (from sigs.k8s.io/metrics-server) scrapes from the node agent's kubelet /metrics/resource
  (airflow_on_k8s.testing.kubelet_metrics: the real CPU of each worker pod's processes). The tasks burn CPU in
  every mode (the seed's figures divided by 5, see TASK_MILLICORES).

Every clock is scaled down (TIMES) so a run takes minutes; the rules themselves are unchanged.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench import real
from bench.report import percentile

REPO_ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = 2
# The deployed value -> the value in these runs (seconds). The first block is `--real`'s (bench.real.REAL_TIMES).
TIMES: dict[str, float] = {
    **real.REAL_TIMES,
    "KEDA pollingInterval (5)": 2,
    "KEDA cooldownPeriod (120; only acts on scale to zero, min is 1 here)": 30,
    "HPA scale-down stabilization, hpa mode (300)": 75,
    "metrics-server --metric-resolution (15; 10 is its minimum)": 10,
}
GRACE_S = int(TIMES["terminationGracePeriodSeconds (600)"])
SYNC_S = int(TIMES["controller poll / HPA sync (10 / 15)"])
DOWN_WINDOW_S = int(TIMES["scale-down stabilization (120, both modes)"])
DOWN_PERIOD_S = int(TIMES["scale-down rate: 1 worker per (60, both modes)"])
# CPU, scaled to fit two cores: the seed's 500m worker requests and ~400m per running task, both divided by 5
# (airflow_on_k8s.testing.hpa.SEED_SCALED: 100m and 80m, the utilization the HPA computes unchanged).
SEED_CPU_SCALE = 0.2
TASK_MILLICORES = 80
WORKER_CPU_REQUEST = "100m"
TAIL_CAP_S = 180  # sampling stops this long after the last task at the latest (worker pod-seconds stop there)
MODES = ("hpa", "keda", "task-aware")


# --------------------------------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class RealScenario:
    name: str
    description: str
    tasks: tuple[tuple[str, int, int], ...]  # (task_id, seconds, priority_weight)
    min_workers: int
    max_workers: int
    horizon_s: int
    simulated: str  # bench.scenarios name of the full-size version
    scaled: str  # how it is scaled down from the simulated one

    def dag_source(self, dag_id: str) -> str:
        lines = "\n".join(
            f'    work.override(task_id="{tid}", priority_weight={prio})({secs}, {TASK_MILLICORES})'
            for tid, secs, prio in self.tasks
        )
        return f'''
import time
from airflow.sdk import DAG, task

with DAG("{dag_id}", schedule=None, default_args={{"retries": 2, "retry_delay": {TIMES["retry_delay (300)"]}}}):
    @task
    def work(seconds, millicores):
        # Wall-clock duration, burning `millicores` of CPU time like the seed's CPU-bound tasks (the HPA sees it).
        from airflow_on_k8s.testing.kubelet_metrics import burn_cpu

        burn_cpu(millicores, seconds)

{lines}
'''

    @property
    def limit(self) -> dict[str, float]:
        """The bound no autoscaler beats, before the measured pod start is added: the longest chain of task
        durations (the tasks are independent: the longest task) and the slot-seconds of perfect packing."""
        return {"longest_chain_s": max(s for _, s, _ in self.tasks),
                "perfect_packing_pod_s": sum(s for _, s, _ in self.tasks) / CONCURRENCY}


def seed_000(quick: bool = False) -> RealScenario:
    secs = 30 if quick else 60
    return RealScenario(
        "seed-000", f"the seed's experiment: 8 tasks x {secs} s at once, concurrency 2, 1-10 workers",
        tuple((f"t{i}", secs, 1) for i in range(8)), 1, 10, 600, "seed-000",
        f"task duration 300 s -> {secs} s; CPU per task ~400m -> {TASK_MILLICORES}m, worker requests 500m -> "
        f"{WORKER_CPU_REQUEST}",
    )


def long_and_short(quick: bool = False) -> RealScenario:
    tasks = tuple((f"short_{i:02d}", real.SHORT_S, 10) for i in range(real.SHORT_TASKS))
    tasks += tuple((f"long_{i}", real.LONG_S, 1) for i in range(real.LONG_TASKS))
    return RealScenario(
        "long-and-short",
        f"{real.SHORT_TASKS} short ({real.SHORT_S} s) + {real.LONG_TASKS} long ({real.LONG_S} s) tasks at once, the "
        "long ones queued last; concurrency 2, 1-4 workers",
        tasks, 1, 4, 900, "long-and-short",
        "30 short (2-4 min) + 6 long (40-60 min), 1-10 workers -> the `--real` DAG (bench.real): 10 x 15 s + 3 x 90 s,"
        " 1-4 workers",
    )


def scenarios(quick: bool) -> list[RealScenario]:
    return [seed_000(quick), long_and_short(quick)]


# ------------------------------------------------------------------------------------------------------ modes


class ModeUnavailable(RuntimeError):
    """This machine cannot run the mode faithfully; the message says why."""


@dataclass
class ModeContext:
    """What a mode may use: the run's Airflow (env, DB), the worker pool, the scenario's bounds, a work dir."""

    stack: Any  # tests.autoscaler.airflow_stack.AirflowStack
    pool: Any  # airflow_on_k8s.testing.worker_pool.WorkerPool
    scenario: RealScenario
    work: Path
    identity: str


class AutoscalerMode:
    """One autoscaler under test: set up against the run's control plane and worker Deployment, torn down after.
    Defaults: available on any machine that runs the control plane, worker pods on the plain node agent."""

    name: str

    @staticmethod
    def unavailable() -> str | None:
        """Why this machine cannot run the mode (checked before a run starts), or None."""
        return None

    @staticmethod
    def agent_factory():
        """The node agent class its worker pods need (NodeAgent, or one that serves kubelet metrics)."""
        from airflow_on_k8s.testing.node_agent import NodeAgent

        return NodeAgent

    def setup(self, plane, namespace: str, deployment: str, ctx: ModeContext) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """What the mode runs with, and where each value comes from."""
        ...

    def observe(self) -> dict[str, Any] | None:
        """What the controller read at this moment, recorded with every sample of the curves (None: nothing)."""
        return None


def hpa_view(api, namespace: str, name: str) -> dict[str, Any] | None:
    """An HPA's view at this moment, from its status: the metric it last read (CPU utilization % of request, or
    the external metric's average value) and the replicas it wants. None until the HPA controller wrote one."""
    from kubernetes.client.rest import ApiException

    try:
        status = api.read_namespaced_horizontal_pod_autoscaler(name, namespace).status
    except ApiException:
        return None
    if status is None:
        return None
    view: dict[str, Any] = {"desired": status.desired_replicas}
    for metric in status.current_metrics or []:
        if metric.type == "Resource" and metric.resource is not None:
            view["cpu_utilization_pct"] = metric.resource.current.average_utilization
        elif metric.type == "External" and metric.external is not None:
            view["external_average"] = metric.external.current.average_value
    return view


def scaled_keda_values(min_workers: int, max_workers: int) -> dict[str, Any]:
    from airflow_on_k8s.airflow.component import scaling_values

    values = copy.deepcopy(scaling_values(SimpleNamespace(scaling_mode="keda", min_workers=min_workers,
                                                          max_workers=max_workers))["keda"])
    values["pollingInterval"] = int(TIMES["KEDA pollingInterval (5)"])
    values["cooldownPeriod"] = int(TIMES["KEDA cooldownPeriod (120; only acts on scale to zero, min is 1 here)"])
    down = values["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    down["stabilizationWindowSeconds"] = DOWN_WINDOW_S
    for policy in down["policies"]:
        policy["periodSeconds"] = DOWN_PERIOD_S
    return values


class KedaMode(AutoscalerMode):
    name = "keda"

    def __init__(self):
        self._custom = None
        self._autoscaling = None
        self._namespace = None
        self.scaled_object: dict | None = None

    def setup(self, plane, namespace, deployment, ctx):
        from kubernetes import client

        from airflow_on_k8s.testing.keda import airflow_worker_scaled_object
        from airflow_on_k8s.testing.worker_pool import wait_for

        values = scaled_keda_values(ctx.scenario.min_workers, ctx.scenario.max_workers)
        self.scaled_object = airflow_worker_scaled_object(deployment, namespace, deployment, values, CONCURRENCY)
        self._custom = client.CustomObjectsApi(ctx.pool.api)
        self._namespace = namespace
        self._custom.create_namespaced_custom_object("keda.sh", "v1alpha1", namespace, "scaledobjects",
                                                     self.scaled_object)
        self._autoscaling = client.AutoscalingV2Api(ctx.pool.api)
        wait_for(lambda: self._autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace).items, 90,
                 "the HPA KEDA creates")

    def observe(self):
        # KEDA names its HPA keda-hpa-<ScaledObject name> unless the ScaledObject names one (keda v2.20.2
        # controllers/keda/hpa.go getHPAName; ours names none).
        return hpa_view(self._autoscaling, self._namespace, f"keda-hpa-{self.scaled_object['metadata']['name']}")

    def teardown(self):
        if self._custom is not None:
            try:
                self._custom.delete_namespaced_custom_object("keda.sh", "v1alpha1", self._namespace, "scaledobjects",
                                                             self.scaled_object["metadata"]["name"])
            except Exception:  # noqa: BLE001 - the namespace goes next anyway
                pass

    def settings(self):
        return {
            "scaled_object": self.scaled_object,
            "sources": {
                "pollingInterval, cooldownPeriod, minReplicaCount, maxReplicaCount, advanced.horizontalPodAutoscaler"
                "Config": "the program: airflow_on_k8s.airflow.component.scaling_values (scaling.mode: keda), time "
                          "fields scaled down as in `times`",
                "scaleTargetRef": "the worker Deployment (the chart's template: Deployment unless worker persistence)",
                "triggers[0] (postgresql, targetQueryValue 1, connectionFromEnv AIRFLOW_CONN_AIRFLOW_DB, query)":
                    "the Airflow chart's templates/workers/worker-kedaautoscaler.yaml and its default CeleryExecutor "
                    "query ceil(COUNT(*)/worker_concurrency) over queued+running task_instance rows",
                "rendering": "airflow_on_k8s.testing.keda.airflow_worker_scaled_object",
                "HPA controller sync period": f"kube-controller-manager --horizontal-pod-autoscaler-sync-period={SYNC_S}s"
                                              " (15 s by default)",
            },
        }


class TaskAwareMode(AutoscalerMode):
    name = "task-aware"

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.args: list[str] = []
        self.log_path: Path | None = None

    def setup(self, plane, namespace, deployment, ctx):
        from airflow_on_k8s.airflow.worker_autoscaler import LEASE, worker_label_selector
        from airflow_on_k8s.config import ScalingConfig
        from airflow_on_k8s.testing.local_services import free_port
        from airflow_on_k8s.testing.worker_pool import wait_for

        program = ScalingConfig(
            mode="task-aware", min_workers=ctx.scenario.min_workers, max_workers=ctx.scenario.max_workers,
            poll_interval_seconds=SYNC_S, scale_down_stabilization_seconds=DOWN_WINDOW_S,
            scale_down_cooldown_seconds=DOWN_PERIOD_S,
            drain_timeout_seconds=int(TIMES["task-aware drain timeout (300)"]),
        )
        kubeconfig = ctx.pool.token_kubeconfig(ctx.work / "autoscaler.kubeconfig")
        port = free_port()
        self.port = port
        self.args = [
            *program.autoscaler_args(CONCURRENCY),
            "--actuator", "kubernetes", "--namespace", namespace, "--deployment", deployment,
            "--label-selector", worker_label_selector(), "--lease-name", LEASE, "--identity", ctx.identity,
            "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
        ]  # fmt: skip
        self.log_path = ctx.work / "autoscaler.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "airflow_on_k8s.autoscaler", *self.args],
                                         env={**ctx.stack.env, "KUBECONFIG": str(kubeconfig)}, cwd=REPO_ROOT,
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._leader() or self.proc.poll() is not None, 90, "the autoscaler leading")
        if self.proc.poll() is not None:
            raise RuntimeError(f"the autoscaler exited:\n{self.log_path.read_text()[-3000:]}")

    def _leader(self) -> bool:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read().decode()
        except OSError:
            return False
        return "airflow_worker_autoscaler_leader 1.0" in text

    def teardown(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def settings(self):
        return {
            "argv": ["python", "-m", "airflow_on_k8s.autoscaler", *self.args],
            "sources": {
                "policy and loop flags": "the program: airflow_on_k8s.config.ScalingConfig.autoscaler_args (scaling."
                                         "mode: task-aware), poll/stabilization/cooldown/drain timeout scaled down as "
                                         "in `times`",
                "credentials": "a token of the program's worker-autoscaler ServiceAccount, bound by the program's Role "
                               "(the `local` stack under the mock runtime)",
            },
        }


class HpaMode(AutoscalerMode):
    """The HPA `scaling.mode: hpa` deploys (airflow.component.scaling_values: CPU Utilization 70 %, scale-down
    stabilization 300 s, scaled), rendered as the chart's worker HPA template does, acted on by the real HPA
    controller on CPU that real metrics-server scrapes from the node agent's kubelet /metrics/resource endpoint
    (airflow_on_k8s.testing.kubelet_metrics.MetricsNodeAgent: the real CPU of each worker pod's processes)."""

    name = "hpa"

    def __init__(self):
        self.hpa: dict | None = None
        self._api = None
        self._namespace = None

    @staticmethod
    def agent_factory():
        from airflow_on_k8s.testing.kubelet_metrics import MetricsNodeAgent

        return MetricsNodeAgent

    def setup(self, plane, namespace, deployment, ctx):
        from kubernetes import client

        from airflow_on_k8s.airflow.component import scaling_values

        values = copy.deepcopy(scaling_values(SimpleNamespace(
            scaling_mode="hpa", min_workers=ctx.scenario.min_workers, max_workers=ctx.scenario.max_workers))["hpa"])
        values["behavior"]["scaleDown"]["stabilizationWindowSeconds"] = int(
            TIMES["HPA scale-down stabilization, hpa mode (300)"])
        self.hpa = {
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": deployment, "namespace": namespace},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
                "minReplicas": values["minReplicaCount"], "maxReplicas": values["maxReplicaCount"],
                "metrics": values["metrics"], "behavior": values["behavior"],
            },
        }  # fmt: skip
        self._api, self._namespace = client.AutoscalingV2Api(ctx.pool.api), namespace
        self._api.create_namespaced_horizontal_pod_autoscaler(namespace, self.hpa)

    def observe(self):
        return hpa_view(self._api, self._namespace, self.hpa["metadata"]["name"])

    def teardown(self):
        if self._api is not None:
            try:
                self._api.delete_namespaced_horizontal_pod_autoscaler(self.hpa["metadata"]["name"], self._namespace)
            except Exception:  # noqa: BLE001 - the namespace goes next anyway
                pass

    def settings(self):
        return {
            "hpa": self.hpa,
            "sources": {
                "minReplicas, maxReplicas, metrics (cpu Utilization 70), behavior": "the program: airflow_on_k8s."
                    "airflow.component.scaling_values (scaling.mode: hpa), rendered as the chart's worker HPA; "
                    "scale-down window scaled as in `times`",
                "CPU": f"worker requests {WORKER_CPU_REQUEST}, each task burns {TASK_MILLICORES}m "
                       "(testing.kubelet_metrics.burn_cpu): the seed's 500m / ~400m divided by 5 (testing.hpa."
                       "SEED_SCALED)",
                "metrics": "metrics-server from its Go module scraping the node agent's /metrics/resource every "
                           f"{int(TIMES['metrics-server --metric-resolution (15; 10 is its minimum)'])} s",
                "HPA controller": f"kube-controller-manager, --horizontal-pod-autoscaler-sync-period={SYNC_S}s; CPU "
                                  "initialization period (5 min), initial readiness delay (30 s) and tolerance (0.1) "
                                  "at their defaults",
            },
        }


MODE_CLASSES = {"hpa": HpaMode, "keda": KedaMode, "task-aware": TaskAwareMode}


# ------------------------------------------------------------------------------------------------------ runs


@dataclass
class RealK8sRun:
    scenario: str
    mode: str
    status: str  # "ok", "unavailable: ...", "error: ..."
    makespan_s: float | None = None
    p50_queue_wait_s: float | None = None
    p95_queue_wait_s: float | None = None
    max_replicas: int = 0
    max_worker_pods: int = 0
    worker_pod_seconds: float = 0.0
    evicted_task_attempts: int = 0
    failed_tasks: int = 0
    succeeded_tasks: int = 0
    tasks: int = 0
    pods_sigkilled: int = 0
    pods_terminated: int = 0
    pod_start_s: float | None = None
    wall_s: float = 0.0
    settings: dict = field(default_factory=dict)
    timeline: list = field(default_factory=list)  # (t, spec.replicas, worker pods, running tasks, queued tasks)
    # (t, what the controller read): an HPA's last metric and desired replicas (hpa, keda); empty for task-aware.
    controller_view: list = field(default_factory=list)


def _attempts(stack, dag_id: str, run_id: str) -> list[tuple[str, str | None, Any, Any, Any]]:
    """(task_id, state, queued_dttm, start_date, end_date) of every attempt: the current ones and the history."""
    import psycopg2

    conn = psycopg2.connect(stack.pg.dsn(stack.database))
    try:
        with conn, conn.cursor() as cur:
            rows = []
            for table in ("task_instance", "task_instance_history"):
                cur.execute(f"SELECT task_id, state, EXTRACT(EPOCH FROM queued_dttm), EXTRACT(EPOCH FROM start_date), "
                            f"EXTRACT(EPOCH FROM end_date) FROM {table} WHERE dag_id = %s AND run_id = %s",
                            (dag_id, run_id))
                rows += cur.fetchall()
            return [(t, s, *(float(v) if v is not None else None for v in rest)) for t, s, *rest in rows]
    finally:
        conn.close()


def run_one(plane, pg, redis, redis_db: int, scenario: RealScenario, mode_name: str, work: Path, rbac) -> RealK8sRun:
    from airflow_on_k8s.autoscaler.actuators.local_processes import airflow_worker_command
    from airflow_on_k8s.autoscaler.signals.celery_inspect import CeleryWorkers
    from airflow_on_k8s.testing.worker_pool import AGENT_NODE_LABELS, WORKER_DEPLOYMENT, WorkerPool, wait_for
    from tests.autoscaler.airflow_stack import AirflowStack

    began = time.monotonic()
    mode = MODE_CLASSES[mode_name]()
    if why := mode.unavailable():
        return RealK8sRun(scenario.name, mode_name, f"unavailable: {why}", tasks=len(scenario.tasks))
    key = f"{scenario.name}-{mode_name}".replace("-", "_")
    run_dir = work / key
    run_dir.mkdir(parents=True)
    pg.create_database(key, template="airflow")
    stack = AirflowStack(pg, key, redis, redis_db, run_dir, CONCURRENCY)
    stack.env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] = str(
        int(TIMES["[scheduler] task_instance_heartbeat_timeout (300)"]))
    pool = None
    celery = CeleryWorkers(stack.broker_url, timeout_s=2.0)
    result = RealK8sRun(scenario.name, mode_name, "ok", tasks=len(scenario.tasks))
    try:
        stack.start()
        api = plane.api_client()
        namespace = key.replace("_", "-")
        pool = WorkerPool(
            api, plane, namespace, GRACE_S, env=stack.env, command=airflow_worker_command(CONCURRENCY),
            log_dir=run_dir / "pods", rbac=rbac,
            # Nodes of this run only: pods a previous run left terminating never land on this run's agent.
            nodes={f"{namespace}-node-{i}": dict(AGENT_NODE_LABELS) for i in (1, 2)},
            # The chart's worker env var KEDA's trigger names (connectionFromEnv), read from the pod template.
            deployment_env=[{"name": "AIRFLOW_CONN_AIRFLOW_DB", "value": pg.url(key, driver="postgresql")}],
            resources={"requests": {"cpu": WORKER_CPU_REQUEST}}, agent_factory=mode.agent_factory(),
        )
        # Every mode starts from its minimum of idle, consuming workers; the time to the first Celery reply is the
        # pod start (pod created -> scheduled -> worker process -> Celery consuming) the limit adds.
        t0 = time.monotonic()
        pool.scale_to(scenario.min_workers)
        wait_for(lambda: len(celery.ping()) >= scenario.min_workers, 180, "the first workers answering Celery")
        result.pod_start_s = round(time.monotonic() - t0, 1)
        try:
            mode.setup(plane, namespace, WORKER_DEPLOYMENT, ModeContext(stack, pool, scenario, run_dir, key))
        except ModeUnavailable as exc:
            result.status = f"unavailable: {exc}"
            return result
        result.settings = mode.settings()
        dag_id, run_id = "bench_real_k8s", f"{key}-1"
        stack.add_dag(dag_id, scenario.dag_source(dag_id))
        started = time.monotonic()
        stack.trigger(dag_id, run_id)
        done_at = None
        pod_seconds, last = 0.0, started
        while True:
            now = time.monotonic()
            pods = pool.running_workers()
            pod_seconds += pods * (now - last)
            last = now
            tis = stack.task_instances(dag_id, run_id)
            replicas = pool.replicas()
            result.timeline.append((round(now - started, 1), replicas, pods,
                                    sum(t[1] == "running" for t in tis), sum(t[1] == "queued" for t in tis)))
            view = mode.observe()
            if view is not None:
                result.controller_view.append((round(now - started, 1), view))
            finished = len(tis) == len(scenario.tasks) and all(t[1] in ("success", "failed") for t in tis)
            if finished and done_at is None:
                done_at = now
            if finished and pods <= scenario.min_workers and replicas <= scenario.min_workers:
                break
            if done_at is not None and now - done_at > TAIL_CAP_S:
                break
            if now - started > scenario.horizon_s:
                result.status = f"error: not finished after {scenario.horizon_s} s"
                break
            time.sleep(1.0)
        attempts = _attempts(stack, dag_id, run_id)
        tis = stack.task_instances(dag_id, run_id)
        ends = [a[4] for a in attempts if a[4] is not None]
        queued = [a[2] for a in attempts if a[2] is not None]
        result.failed_tasks = sum(t[1] == "failed" for t in tis)
        result.succeeded_tasks = sum(t[1] == "success" for t in tis)
        all_ok = result.succeeded_tasks == len(scenario.tasks)
        result.makespan_s = round(max(ends) - min(queued), 1) if all_ok and ends and queued else None
        waits = [a[3] - a[2] for a in attempts if a[2] is not None and a[3] is not None]
        result.p50_queue_wait_s = _round(percentile(waits, 50))
        result.p95_queue_wait_s = _round(percentile(waits, 95))
        result.evicted_task_attempts = sum(t[2] - 1 for t in tis) + result.failed_tasks
        result.max_replicas = max((r[1] for r in result.timeline), default=0)
        result.max_worker_pods = max((r[2] for r in result.timeline), default=0)
        result.worker_pod_seconds = round(pod_seconds, 1)
        result.pods_terminated = len(pool.agent.terminations)
        result.pods_sigkilled = sum(t.killed for t in pool.agent.terminations)
        return result
    except Exception as exc:  # noqa: BLE001 - one broken run must not lose the others; the status says what
        result.status = f"error: {exc!r}"[:2000]
        if pool is not None:
            print(pool.diagnostics(), file=sys.stderr)
        return result
    finally:
        mode.teardown()
        celery.close()
        if pool is not None:
            pool.close()  # processes stopped, nodes deregistered, namespace deleted (its pods: pod GC, orphaned)
        stack.stop()
        result.wall_s = round(time.monotonic() - began, 1)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# --------------------------------------------------------------------------------------------------- results


def limits(runs: list[RealK8sRun], scen: dict[str, RealScenario]) -> dict[str, dict[str, float | None]]:
    """Per scenario: the limit (longest chain + one measured pod start; pod-seconds of perfect packing)."""
    out = {}
    for name, scenario in scen.items():
        starts = [r.pod_start_s for r in runs if r.scenario == name and r.pod_start_s is not None]
        pod_start = round(statistics.median(starts), 1) if starts else None
        base = scenario.limit
        out[name] = {
            "longest_chain_s": base["longest_chain_s"],
            "pod_start_s (median measured)": pod_start,
            "makespan_limit_s": None if pod_start is None else round(base["longest_chain_s"] + pod_start, 1),
            "pod_seconds_limit": round(base["perfect_packing_pod_s"], 1),
        }
    return out


def ratios(run: RealK8sRun, limit: dict[str, float | None]) -> dict[str, float | None]:
    m, p = limit["makespan_limit_s"], limit["pod_seconds_limit"]
    return {
        "makespan_x_limit": None if run.makespan_s is None or not m else round(run.makespan_s / m, 2),
        "pod_seconds_x_limit": None if run.status != "ok" or not p else round(run.worker_pod_seconds / p, 2),
    }


def write_results(runs: list[RealK8sRun], scen: dict[str, RealScenario], out: Path, meta: dict[str, Any],
                  stem: str = "real-k8s") -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    lim = limits(runs, scen)
    doc = {
        "command": meta["command"],
        "machine": meta["machine"],
        "total_wall_s": meta["total_wall_s"],
        "control_plane": meta["control_plane"],
        "times_scaled": TIMES,
        "cpu": {"task_millicores": TASK_MILLICORES, "worker_cpu_request": WORKER_CPU_REQUEST,
                "note": "the seed's ~400m per task and 500m worker requests, divided by 5 to fit two cores"},
        "scenarios": {n: {**asdict(s), "limit": lim[n]} for n, s in scen.items()},
        "runs": [{**asdict(r), **ratios(r, lim[r.scenario])} for r in runs],
    }
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    lines = [
        "# Real control plane: KEDA and the HPA against the task-aware autoscaler",
        "",
        f"`{meta['command']}` — {meta['control_plane']}; real KEDA (operator + metrics adapter) and the real HPA "
        "controller; real Airflow 3 (api-server, scheduler, CeleryExecutor), PostgreSQL, Redis; one real "
        "`airflow celery worker` per pod (node agent: SIGTERM on deletion, SIGKILL at the end of the grace period). "
        f"Machine: {meta['machine']}. Total wall time {meta['total_wall_s']} s (control plane, KEDA, metrics-server "
        "and every run).",
        "",
        "| scenario | mode | makespan (s) | p50 / p95 queue wait (s) | max replicas | worker pod-s | evicted task attempts "
        "| failed tasks | pods SIGKILLed | makespan / limit | pod-s / limit | run wall time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        rt = ratios(r, lim[r.scenario])
        if r.status != "ok":
            lines.append(f"| {r.scenario} | {r.mode} | {r.status} |  |  |  |  |  |  |  |  | {r.wall_s} |")
            continue
        lines.append(
            f"| {r.scenario} | {r.mode} | {_s(r.makespan_s)} | {_s(r.p50_queue_wait_s)} / {_s(r.p95_queue_wait_s)} "
            f"| {r.max_replicas} | {r.worker_pod_seconds:.0f} | {r.evicted_task_attempts} | {r.failed_tasks} "
            f"| {r.pods_sigkilled} | {_s(rt['makespan_x_limit'])} | {_s(rt['pod_seconds_x_limit'])} | {r.wall_s} |"
        )
    lines += ["", "## Scenarios and their limits", ""]
    for n, s in scen.items():
        li = lim[n]
        lines.append(
            f"- **{n}**: {s.description}. Scaled down from the simulated `{s.simulated}`: {s.scaled}. Limit: makespan "
            f"{li['longest_chain_s']} s (longest task) + {_s(li['pod_start_s (median measured)'])} s (one pod start, "
            f"median measured) = {_s(li['makespan_limit_s'])} s; worker pod-seconds {li['pod_seconds_limit']} "
            f"(task-seconds / concurrency {CONCURRENCY}, perfect packing)."
        )
    lines += [
        "",
        "Evicted task attempts: attempts that did not finish (try_number - 1 summed, plus failed tasks); pods "
        "SIGKILLed: worker pods whose warm shutdown outlasted the grace period (their tasks died). Worker pod-seconds: "
        f"worker processes alive, integrated from the trigger until the pool is back at its minimum (at most "
        f"{TAIL_CAP_S} s after the last task). Queue wait: queued -> started, per attempt.",
        "",
        f"CPU: each task burns {TASK_MILLICORES}m (CPU time, testing.kubelet_metrics.burn_cpu) and workers request "
        f"{WORKER_CPU_REQUEST}: the seed's ~400m and 500m divided by 5 together to fit two cores (the utilization "
        "the HPA computes is unchanged).",
        "",
        "Durations scaled down for these runs (deployed value -> here, seconds):",
        "",
        *[f"- {k} -> {v}" for k, v in TIMES.items()],
        "",
        "Where the HPA's and the KEDA ScaledObject's fields and the task-aware flags come from: `settings` of each run "
        f"in {stem}.json.",
        "",
        f"![replicas and tasks over time]({stem}.png)",
    ]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    plot(runs, out / f"{stem}.png")
    return doc


def _s(v) -> str:
    return "n/a" if v is None else f"{v}"


def plot(runs: list[RealK8sRun], path: Path) -> None:
    """Replicas (spec), worker pods, running and queued tasks over time: a row per scenario, a column per mode,
    like the seed's Grafana panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.scenario for r in runs))
    modes = list(dict.fromkeys(r.mode for r in runs))
    fig, axes = plt.subplots(len(names), len(modes), figsize=(5.5 * len(modes), 3.3 * len(names)), squeeze=False)
    legend = False
    for i, name in enumerate(names):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            run = next((r for r in runs if r.scenario == name and r.mode == mode), None)
            if run is None or not run.timeline:
                ax.set_title(f"{name} / {mode}: {run.status if run else 'not run'}"[:70], fontsize=9)
                ax.axis("off")
                continue
            t = [row[0] for row in run.timeline]
            ax.step(t, [row[1] for row in run.timeline], where="post", label="replicas (spec)", color="tab:blue")
            ax.step(t, [row[2] for row in run.timeline], where="post", label="worker pods", color="tab:cyan",
                    linestyle="--")
            ax.step(t, [row[3] for row in run.timeline], where="post", label="running tasks", color="tab:orange")
            ax.step(t, [row[4] for row in run.timeline], where="post", label="queued tasks", color="tab:gray",
                    alpha=0.6)
            ax.set_title(f"{name} / {mode}: makespan {_s(run.makespan_s)} s, {run.evicted_task_attempts} evicted",
                         fontsize=9)
            ax.set_xlabel("s since trigger", fontsize=8)
            ax.grid(alpha=0.3)
            if not legend:
                ax.legend(fontsize=7)
                legend = True
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ main


def main(out: Path, *, quick: bool = False, only_scenarios: list[str] | None = None,
         only_modes: list[str] | None = None, stem: str = "real-k8s") -> int:
    import os

    from airflow_on_k8s.testing.controlplane import ControlPlane
    from airflow_on_k8s.testing.keda import FrontProxy, start_keda
    from airflow_on_k8s.testing.local_services import migrate_airflow_db, postgres_server, redis_server
    from airflow_on_k8s.testing.worker_pool import program_autoscaler_rbac

    os.chdir(REPO_ROOT)  # the program (for its RBAC) reads Pulumi.yaml and stacks/ from here
    argv = ["python -m bench.scaling --real-k8s"] + (["--quick"] if quick else []) + \
        [f"--scenario {s}" for s in only_scenarios or []] + [f"--mode {m}" for m in only_modes or []]
    if quick and not only_scenarios:
        only_scenarios = ["seed-000"]  # the smoke run
    scen = {s.name: s for s in scenarios(quick) if not only_scenarios or s.name in only_scenarios}
    modes = [m for m in MODES if not only_modes or m in only_modes]
    if not scen or not modes:
        print(f"nothing to run: scenarios {only_scenarios}, modes {only_modes}", file=sys.stderr)
        return 2
    rbac = program_autoscaler_rbac()
    runs: list[RealK8sRun] = []
    began = time.monotonic()
    # Measured, not claimed: what else the machine was doing shows in the load before the benchmark started.
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-real-k8s-") as tmp, \
            postgres_server("airflow") as pg, redis_server() as redis:
        work = Path(tmp)
        front_proxy = FrontProxy(work / "front-proxy")
        plane = ControlPlane(extra_apiserver_args=front_proxy.apiserver_args(),
                             extra_controller_manager_args=[f"--horizontal-pod-autoscaler-sync-period={SYNC_S}s"])
        # (metrics-server and KEDA's adapter are aggregated APIs: the front-proxy flags serve both)
        print("starting the control plane and migrating the Airflow schema...", file=sys.stderr)
        plane.start()
        try:
            migrate_airflow_db(pg.url("airflow"), work / "migrate-home")
            keda_ctx = start_keda(plane) if "keda" in modes else None
            keda = keda_ctx.__enter__() if keda_ctx else None
            metrics_ctx = None
            if "hpa" in modes and not HpaMode.unavailable():
                from airflow_on_k8s.testing.metrics_server import start_metrics_server

                resolution = int(TIMES["metrics-server --metric-resolution (15; 10 is its minimum)"])
                metrics_ctx = start_metrics_server(plane, metric_resolution=f"{resolution}s",
                                                   extra_args=("--kubelet-request-timeout=5s",))
                metrics_ctx.__enter__()
            try:
                redis_db = 0
                for scenario in scen.values():
                    for mode in modes:
                        print(f"running {scenario.name} / {mode}...", file=sys.stderr)
                        run = run_one(plane, pg, redis, redis_db, scenario, mode, work, rbac)
                        redis_db += 1
                        print(f"  {run.status}: makespan {run.makespan_s} s, evicted {run.evicted_task_attempts}, "
                              f"max replicas {run.max_replicas}, pod-s {run.worker_pod_seconds}, wall {run.wall_s} s",
                              file=sys.stderr)
                        runs.append(run)
            finally:
                if metrics_ctx:
                    metrics_ctx.__exit__(None, None, None)
                if keda_ctx:
                    keda_ctx.__exit__(None, None, None)
            meta = {
                "command": " ".join(argv),
                "machine": f"{os.cpu_count()} cores, 1-minute load average {load_before:.2f} when the benchmark began",
                "control_plane": f"Kubernetes {plane.version} from its Go modules"
                                 + (f", KEDA {keda.version}" if keda else ""),
                "total_wall_s": round(time.monotonic() - began, 1),
            }
        finally:
            plane.stop()
    write_results(runs, scen, out, meta, stem)
    print((out / f"{stem}.md").read_text())
    print(f"total wall time {meta['total_wall_s']} s", file=sys.stderr)
    return 0 if all(r.status == "ok" or r.status.startswith("unavailable") for r in runs) else 1
