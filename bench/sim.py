"""Discrete-event simulation of Airflow's Celery workers under one autoscaling mode.

What is simulated (parameters and their sources in bench/model.py):

* Airflow: task instances arrive, the scheduler queues them (at most `parallelism` queued + running);
  a killed task stays "running" in the DB until the heartbeat timeout, then fails and is retried after
  the retry delay (while it has retries).
* Celery over Redis: each worker runs `concurrency` tasks and holds at most concurrency * prefetch
  messages (late acks); idle workers take messages in the order they started waiting (BRPOP) and
  cycle over their queues round-robin. A warm shutdown requeues reserved messages and lets running
  tasks go on until the grace period ends; then they are killed (evicted).
* Tasks either run in the worker (`celery`: CPU on the worker, like the seed's) or are
  KubernetesPodOperator tasks (`kpo`: the worker slot waits while a pod on the task pool runs; a killed
  worker leaves the pod running, and the retry reattaches to it if it still runs).
* Kubernetes: the Deployment's ReplicaSet creates pods and deletes those `bench.replicaset` ranks
  first; kube-scheduler spreads pods over nodes with room; a worker starts after image pull + start-up,
  is Ready at container start, boots, then consumes. metrics-server samples each pod's CPU (idle + boot +
  running tasks, capped at the limit if any) once per resolution interval.
* Two node pools, each static or under the Cluster Autoscaler: workers on the worker pool (the system
  pool in this project), task pods on the task pool (from zero). The CA adds nodes for pending pods
  (ready after the provisioning delay) and removes nodes empty for the unneeded time, not within
  delay-after-add of a scale-up; nodes are billed from launch to removal.
* The autoscaler: the HPA on CPU (`bench.hpa`), KEDA feeding an HPA (`bench.keda`), or the task-aware
  controller deciding with the project's real `airflow_on_k8s.autoscaler.policy`.

Not modelled: CA consolidation of under-used nodes (it would also evict busy workers), API latencies,
the Airflow scheduler's loop time, broker or database outages.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from airflow_on_k8s.autoscaler.policy import (
    INT32_MAX,
    Observation,
    QueueLoad,
    ScalingPolicy,
    WorkerLoad,
    choose_workers_to_remove,
    deletion_cost,
)

from bench.hpa import CpuSample, HorizontalController, PodView, cpu_replicas, external_average_value_replicas
from bench.keda import KedaOperator, airflow_chart_query
from bench.model import Mode, NodePool, Setup
from bench.replicaset import RsPod, pods_to_delete

PoolName = Literal["worker", "task"]


@dataclass(frozen=True)
class TaskSpec:
    """One task instance of the workload."""

    arrival_s: float
    duration_s: float
    queue: str = "default"
    kind: Literal["celery", "kpo"] = "celery"
    # celery tasks: CPU on the worker. The seed: a busy worker (2 tasks) used ~404m, so ~200m per task.
    cpu_m: float = 200.0


@dataclass(eq=False)
class Node:
    name: str
    pool: PoolName
    capacity: int
    requested_at: float
    ready_at: float
    removed_at: float | None = None
    pods: set = field(default_factory=set)
    image_ready_at: float | None = None
    empty_since: float | None = None


@dataclass(eq=False)
class TaskPod:
    """A KubernetesPodOperator pod on the task pool."""

    task: Task
    created_at: float
    node: Node | None = None
    started_at: float | None = None
    ends_at: float | None = None
    gone_at: float | None = None


@dataclass(eq=False)
class Task:
    id: int
    spec: TaskSpec
    retries_left: int
    state: str = "pending"  # pending scheduled queued reserved running zombie retry_wait done failed
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    pod: Pod | None = None
    task_pod: TaskPod | None = None  # kpo: the pod this attempt follows (or the orphan of a killed one)
    attempts: int = 0
    waits: list[float] = field(default_factory=list)


@dataclass(eq=False)
class Pod:
    """A Celery worker pod."""

    name: str
    uid: str
    created_at: float
    node: Node | None = None
    assigned_at: float | None = None
    started_at: float | None = None  # container running, Ready (no readinessProbe)
    consuming_at: float | None = None  # boot over, Celery consuming
    deleting_at: float | None = None
    gone_at: float | None = None
    deletion_cost: int = 0
    consumer_cancelled: bool = False
    running: list = field(default_factory=list)
    reserved: deque = field(default_factory=deque)
    waiting_since: float = 0.0
    queue_turn: int = 0
    cpu: list = field(default_factory=list)  # (time, millicores) at each change
    sample: CpuSample | None = None

    @property
    def active(self) -> bool:
        return self.deleting_at is None and self.gone_at is None

    def started(self, now: float) -> bool:
        return self.started_at is not None and self.started_at <= now

    def consuming(self, now: float) -> bool:
        return self.active and self.consuming_at is not None and self.consuming_at <= now and not self.consumer_cancelled

    def mean_cpu(self, start: float, end: float) -> float:
        """Mean millicores over [start, end] from the piecewise-constant history."""
        total, level, t = 0.0, 0.0, start
        for when, value in self.cpu:
            if when <= start:
                level = value
                continue
            if when >= end:
                break
            total += level * (when - t)
            t, level = when, value
        total += level * (end - t)
        return total / (end - start)


@dataclass
class Sample:
    """The system's state after an event, for plots."""

    t: float
    replicas: int  # the Deployment's spec.replicas
    pods: int  # worker pods that exist (starting, running or terminating)
    ready_workers: int  # consuming, not terminating
    running_tasks: int
    worker_nodes: int
    task_nodes: int


@dataclass
class RunResult:
    mode: Mode
    horizon_s: float
    tasks: list[Task]
    pods: list[Pod]
    nodes: list[Node]
    timeline: list[Sample]
    scale_events: list[tuple[float, int, int]]  # (t, from, to) of spec.replicas
    evicted_tasks: int

    @property
    def all_done(self) -> bool:
        return all(t.state == "done" for t in self.tasks)

    @property
    def failed_tasks(self) -> int:
        return sum(1 for t in self.tasks if t.state == "failed")

    @property
    def unfinished_tasks(self) -> int:
        return sum(1 for t in self.tasks if t.state not in ("done", "failed"))

    @property
    def makespan_s(self) -> float | None:
        """First arrival to last completion; None unless every task succeeded within the horizon."""
        if not self.all_done:
            return None
        return max(t.finished_at for t in self.tasks) - min(t.spec.arrival_s for t in self.tasks)

    def queue_waits(self) -> list[float]:
        """Seconds each attempt waited in the Celery queue (queued -> started on a worker)."""
        return [w for t in self.tasks for w in t.waits]

    def max_replicas(self) -> int:
        return max(s.replicas for s in self.timeline if s.t >= 0)

    def pod_minutes(self) -> float:
        """Worker pods that existed (starting, running or terminating) between t=0 and the horizon."""
        return sum(_overlap(p.created_at, p.gone_at, self.horizon_s) for p in self.pods) / 60.0

    def node_minutes(self, pool: PoolName) -> float:
        return sum(_overlap(n.requested_at, n.removed_at, self.horizon_s) for n in self.nodes if n.pool == pool) / 60.0

    def replica_sequence(self) -> list[int]:
        """Distinct spec.replicas values from t=0 up to the makespan (the scale-up path)."""
        end = self.makespan_s if self.makespan_s is not None else self.horizon_s
        seq = [self.replicas_at(0.0)]
        for t, _, new in self.scale_events:
            if 0 <= t <= end and new != seq[-1]:
                seq.append(new)
        return seq

    def replicas_at(self, t: float) -> int:
        value = self.timeline[0].replicas
        for s in self.timeline:
            if s.t > t:
                break
            value = s.replicas
        return value


def _overlap(start: float, end: float | None, horizon: float) -> float:
    lo, hi = max(start, 0.0), min(end if end is not None else horizon, horizon)
    return max(0.0, hi - lo)


class Simulation:
    """One run of one workload under one mode; deterministic for a given seed."""

    def __init__(self, setup: Setup, tasks: list[TaskSpec], mode: Mode, seed: int = 0):
        self.setup = setup
        self.mode = mode
        self.rng = random.Random(f"{seed}-{mode}")
        self.phase_rng = random.Random(seed)  # controller phases: the same draws for every mode
        self.now = -setup.warmup_s
        self._events: list = []
        self._seq = itertools.count()
        self._pod_numbers = itertools.count(1)
        ordered = sorted(tasks, key=lambda s: s.arrival_s)
        self.tasks = [Task(i, spec, setup.airflow.retries) for i, spec in enumerate(ordered)]
        self.queues: dict[str, deque] = {name: deque() for name in sorted({t.spec.queue for t in self.tasks})}
        self.queue_names = list(self.queues)
        self.scheduled: deque = deque()
        self.pods: list[Pod] = []
        self.task_pods: list[TaskPod] = []
        self.nodes: list[Node] = []
        self.pools: dict[PoolName, NodePool] = {"worker": setup.worker_pool, "task": setup.task_pool}
        self.last_scale_up: dict[PoolName, float] = {"worker": -math.inf, "task": -math.inf}
        self.replicas = setup.min_workers
        self.timeline: list[Sample] = []
        self.scale_events: list[tuple[float, int, int]] = []
        self.evicted = 0
        self._mode_init()
        self._bootstrap()

    # --- event engine ------------------------------------------------------------------------------
    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._events, (t, next(self._seq), fn))

    def every(self, period: float, fn: Callable[[], None]) -> None:
        """Run fn every `period` seconds from a random phase (each controller has its own clock)."""

        def tick() -> None:
            fn()
            self.at(self.now + period, tick)

        self.at(self.now + self.phase_rng.uniform(0, period), tick)

    def run(self, horizon_s: float) -> RunResult:
        while self._events and self._events[0][0] <= horizon_s:
            t, _, fn = heapq.heappop(self._events)
            self.now = t
            fn()
            self._settle()
        self.now = horizon_s
        return RunResult(self.mode, horizon_s, self.tasks, self.pods, self.nodes, self.timeline, self.scale_events, self.evicted)

    # --- set-up ------------------------------------------------------------------------------------
    def _bootstrap(self) -> None:
        s = self.setup
        for pool_name, pool in self.pools.items():
            count = pool.static_nodes if pool.static_nodes is not None else pool.min_nodes
            reserved = pool.reserved_slots
            for i in range(count):
                take = reserved // count + (1 if i < reserved % count else 0)
                node = self._new_node(pool_name, ready_at=self.now, capacity=pool.pods_per_node - take)
                node.image_ready_at = self.now
            if pool.static_nodes is None:
                self.every(pool.scan_interval_s, lambda pool_name=pool_name: self._cluster_autoscaler(pool_name))
        for _ in range(self.replicas):
            pod = self._new_pod()
            # Running for a while already when the benchmark starts.
            pod.started_at = pod.consuming_at = self.now - 600
            pod.cpu.append((pod.started_at, s.worker.idle_cpu_m))
            node = self._pick_node("worker")
            if node is None:
                node = self._new_node("worker", ready_at=self.now, capacity=self.pools["worker"].pods_per_node)
                node.image_ready_at = self.now
            self._place(pod, node)
        for task in self.tasks:
            self.at(task.spec.arrival_s, lambda task=task: self._arrive(task))
        self.every(s.metrics_resolution_s, self._scrape_metrics)
        self._settle()

    def _mode_init(self) -> None:
        s = self.setup
        if self.mode == "hpa":
            self.hpa = HorizontalController(s.min_workers, s.max_workers, s.hpa_flags, s.hpa.behavior)
            self.every(s.hpa_flags.sync_period_s, self._hpa_cpu_sync)
        elif self.mode == "keda":
            self.keda = KedaOperator(s.keda.params, s.min_workers)
            self.hpa = HorizontalController(self.keda.hpa_min_replicas(), s.max_workers, s.hpa_flags, s.keda.behavior)
            self.every(s.hpa_flags.sync_period_s, self._hpa_external_sync)
            self.every(s.keda.params.polling_interval_s, self._keda_poll)
        elif self.mode == "task-aware":
            self.policy = ScalingPolicy(s.task_aware.policy)
            self.every(s.task_aware.poll_interval_s, self._task_aware_poll)
        else:
            raise ValueError(f"mode: {self.mode!r} is not one of hpa, keda, task-aware")

    # --- Airflow -----------------------------------------------------------------------------------
    def _arrive(self, task: Task) -> None:
        task.state = "scheduled"
        self.scheduled.append(task)

    def _airflow_schedule(self) -> None:
        in_executor = sum(1 for t in self.tasks if t.state in ("queued", "reserved", "running"))
        while self.scheduled and in_executor < self.setup.airflow.parallelism:
            task = self.scheduled.popleft()
            task.state, task.queued_at = "queued", self.now
            self.queues[task.spec.queue].append(task)
            in_executor += 1

    def _db_loads(self) -> dict[str, tuple[int, int]]:
        """task_instance rows per queue, (queued, running), as the metadata DB shows them."""
        loads = {q: [0, 0] for q in self.queue_names}
        for t in self.tasks:
            if t.state in ("queued", "reserved"):
                loads[t.spec.queue][0] += 1
            elif t.state in ("running", "zombie"):
                loads[t.spec.queue][1] += 1
        return {q: (a, b) for q, (a, b) in loads.items()}

    def _kill(self, task: Task) -> None:
        """SIGKILL mid-run: the row stays "running" until the heartbeat timeout, then fails or retries."""
        task.state, task.pod = "zombie", None
        self.evicted += 1
        a = self.setup.airflow

        def detected() -> None:
            if task.retries_left > 0:
                task.retries_left -= 1
                task.state = "retry_wait"
                self.at(self.now + a.retry_delay_s, lambda: self._arrive(task))
            else:
                task.state = "failed"

        self.at(self.now + a.heartbeat_timeout_s, detected)

    # --- Celery ------------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        c = self.setup.celery
        hold = c.concurrency * c.prefetch_multiplier
        while any(self.queues.values()):
            waiting = [p for p in self.pods if p.consuming(self.now) and len(p.running) + len(p.reserved) < hold]
            if not waiting:
                return
            pod = min(waiting, key=lambda p: (p.waiting_since, p.created_at))
            task = self._next_message(pod)
            task.pod = pod
            if len(pod.running) < c.concurrency:
                self._start(task, pod)
            else:
                task.state = "reserved"
                pod.reserved.append(task)
            pod.waiting_since = self.now  # back to the end of the BRPOP line

    def _next_message(self, pod: Pod) -> Task:
        n = len(self.queue_names)
        for i in range(n):
            name = self.queue_names[(pod.queue_turn + i) % n]
            if self.queues[name]:
                pod.queue_turn = (pod.queue_turn + i + 1) % n
                return self.queues[name].popleft()
        raise AssertionError("no message although a queue was non-empty")

    def _start(self, task: Task, pod: Pod) -> None:
        task.state, task.started_at, task.pod = "running", self.now, pod
        task.attempts += 1
        overhead = self.setup.celery.task_start_s  # the slot is taken now; the task instance runs after this
        task.waits.append(self.now + overhead - task.queued_at)
        pod.running.append(task)
        attempt = task.attempts
        if overhead:
            self.at(self.now + overhead, lambda: self._update_cpu(pod))
        if task.spec.kind == "celery":
            self.at(self.now + overhead + task.spec.duration_s, lambda: self._finish(task, attempt))
        else:
            orphan = task.task_pod
            if orphan is not None and orphan.gone_at is None and self.setup.kpo.reattach:
                pass  # reattach: this attempt ends when the old pod does
            else:
                task.task_pod = TaskPod(task, self.now)
                self.task_pods.append(task.task_pod)
        self._update_cpu(pod)

    def _finish(self, task: Task, attempt: int) -> None:
        if task.state != "running" or task.attempts != attempt:
            return  # this attempt was killed
        pod = task.pod
        c = self.setup.celery
        was_full = len(pod.running) + len(pod.reserved) >= c.concurrency * c.prefetch_multiplier
        task.state, task.finished_at, task.pod = "done", self.now, None
        pod.running.remove(task)
        if pod.reserved and len(pod.running) < c.concurrency:
            self._start(pod.reserved.popleft(), pod)
        if was_full:
            pod.waiting_since = self.now  # a slot freed: the worker joins the end of the BRPOP line
        self._update_cpu(pod)
        if pod.deleting_at is not None and not pod.running:
            self.at(self.now + self.setup.worker.idle_shutdown_s, lambda: self._gone(pod))

    # --- KubernetesPodOperator pods ----------------------------------------------------------------
    def _task_pod_started(self, tp: TaskPod) -> None:
        tp.started_at = self.now
        tp.ends_at = self.now + tp.task.spec.duration_s
        self.at(tp.ends_at, lambda: self._task_pod_done(tp))

    def _task_pod_done(self, tp: TaskPod) -> None:
        # Succeeded: it no longer holds node resources, whoever (if anyone) still follows it.
        tp.gone_at = self.now
        tp.node.pods.discard(tp)
        task = tp.task
        if task.task_pod is tp and task.state == "running":
            self._finish(task, task.attempts)

    # --- worker pods -------------------------------------------------------------------------------
    def _new_pod(self) -> Pod:
        pod = Pod(name=f"worker-{next(self._pod_numbers)}", uid=f"{self.rng.getrandbits(128):032x}", created_at=self.now)
        self.pods.append(pod)
        return pod

    def _update_cpu(self, pod: Pod) -> None:
        w = self.setup.worker
        if not pod.started(self.now) or pod.gone_at is not None:
            value = 0.0
        else:
            booting = pod.consuming_at is not None and self.now < pod.consuming_at
            value = w.idle_cpu_m + (w.boot_cpu_m if booting else 0.0)
            c = self.setup.celery
            value += sum(
                c.task_start_cpu_m if self.now < t.started_at + c.task_start_s
                else t.spec.cpu_m if t.spec.kind == "celery" else self.setup.kpo.wait_cpu_m
                for t in pod.running
            )
            if w.limit_m is not None:
                value = min(value, w.limit_m)
        if not pod.cpu or pod.cpu[-1][1] != value:
            pod.cpu.append((self.now, value))

    def _container_started(self, pod: Pod) -> None:
        if not pod.active:
            return
        pod.started_at = self.now
        w = self.setup.worker
        boot = w.boot_s
        if w.boot_cores is not None:
            starting = sum(1 for p in self.pods if p.active and (p.consuming_at is None or p.consuming_at > self.now))
            boot *= max(1.0, starting / w.boot_cores)
        pod.consuming_at = self.now + boot
        pod.waiting_since = pod.consuming_at
        self._update_cpu(pod)
        self.at(pod.consuming_at, lambda: self._update_cpu(pod))

    def _terminate(self, pod: Pod) -> None:
        """The ReplicaSet deleted the pod: SIGTERM, Celery warm shutdown, SIGKILL at the grace end."""
        pod.deleting_at = self.now
        for task in reversed(pod.reserved):  # un-acked messages go back to the head of their queue
            task.state, task.pod = "queued", None
            self.queues[task.spec.queue].appendleft(task)
        pod.reserved.clear()
        if not pod.started(self.now) or not pod.running:
            delay = self.setup.worker.idle_shutdown_s if pod.started(self.now) else 0.0
            self.at(self.now + delay, lambda: self._gone(pod))
            return

        def grace_over() -> None:
            if pod.gone_at is not None:
                return
            for task in list(pod.running):
                self._kill(task)
            pod.running.clear()
            self._gone(pod)

        self.at(self.now + self.setup.worker.termination_grace_s, grace_over)

    def _gone(self, pod: Pod) -> None:
        if pod.gone_at is not None:
            return
        pod.gone_at = self.now
        self._update_cpu(pod)
        if pod.node is not None:
            pod.node.pods.discard(pod)

    # --- ReplicaSet, scheduler ---------------------------------------------------------------------
    def _set_replicas(self, replicas: int) -> None:
        if replicas != self.replicas:
            self.scale_events.append((self.now, self.replicas, replicas))
            self.replicas = replicas

    def _reconcile_replicaset(self) -> None:
        active = [p for p in self.pods if p.active]
        diff = self.replicas - len(active)
        for _ in range(diff):
            self._new_pod()
        if diff < 0:
            views = [
                RsPod(
                    name=p.name,
                    uid=p.uid,
                    node=p.node.name if p.node else None,
                    phase="Running" if p.started(self.now) else "Pending",
                    ready=p.started(self.now),
                    ready_since=p.started_at if p.started(self.now) else None,
                    created_at=p.created_at,
                    deletion_cost=p.deletion_cost,
                )
                for p in active
            ]
            doomed = set(pods_to_delete(views, -diff, self.now))
            for pod in active:
                if pod.name in doomed:
                    self._terminate(pod)

    def _pick_node(self, pool: PoolName) -> Node | None:
        room = [
            n
            for n in self.nodes
            if n.pool == pool and n.removed_at is None and n.ready_at <= self.now and len(n.pods) < n.capacity
        ]
        # LeastAllocated scoring (and, for workers, the chart's preferred anti-affinity): the emptiest node.
        return min(room, key=lambda n: (len(n.pods), n.requested_at, n.name)) if room else None

    def _place(self, pod: Pod, node: Node) -> None:
        pod.node, pod.assigned_at = node, self.now
        node.pods.add(pod)
        node.empty_since = None
        if pod.started_at is not None:
            return
        w = self.setup.worker
        if node.image_ready_at is None:
            node.image_ready_at = self.now + w.image_pull_s
        self.at(max(self.now, node.image_ready_at) + w.startup_s, lambda: self._container_started(pod))

    def _place_task_pod(self, tp: TaskPod, node: Node) -> None:
        tp.node = node
        node.pods.add(tp)
        node.empty_since = None
        k = self.setup.kpo
        if node.image_ready_at is None:
            node.image_ready_at = self.now + k.image_pull_s
        self.at(max(self.now, node.image_ready_at) + k.start_s, lambda: self._task_pod_started(tp))

    def _pending(self, pool: PoolName) -> list:
        if pool == "worker":
            return [p for p in self.pods if p.active and p.node is None]
        return [tp for tp in self.task_pods if tp.node is None]

    def _schedule_pods(self) -> None:
        for pod in self._pending("worker"):
            node = self._pick_node("worker")
            if node is None:
                break
            self._place(pod, node)
        for tp in self._pending("task"):
            node = self._pick_node("task")
            if node is None:
                break
            self._place_task_pod(tp, node)

    # --- nodes -------------------------------------------------------------------------------------
    def _new_node(self, pool: PoolName, ready_at: float, capacity: int) -> Node:
        node = Node(f"{pool}-node-{len(self.nodes) + 1}", pool, capacity, requested_at=self.now, ready_at=ready_at)
        self.nodes.append(node)
        return node

    def _cluster_autoscaler(self, pool_name: PoolName) -> None:
        pool = self.pools[pool_name]
        live = [n for n in self.nodes if n.pool == pool_name and n.removed_at is None]
        pending = self._pending(pool_name)
        upcoming_room = sum(n.capacity - len(n.pods) for n in live if n.ready_at > self.now)
        need = len(pending) - upcoming_room
        if need > 0:
            add = min(math.ceil(need / pool.pods_per_node), pool.max_nodes - len(live))
            for _ in range(max(add, 0)):
                node = self._new_node(pool_name, ready_at=self.now + pool.provision_s, capacity=pool.pods_per_node)
                self.at(node.ready_at, lambda: None)  # wakes the scheduler when the node joins
            if add > 0:
                self.last_scale_up[pool_name] = self.now
            return
        if pending:
            return
        removable = len(live) - pool.min_nodes
        for node in sorted(live, key=lambda n: n.requested_at, reverse=True):
            if node.ready_at > self.now or node.pods:
                node.empty_since = None
                continue
            if node.empty_since is None:
                node.empty_since = self.now
            if (
                removable > 0
                and self.now - node.empty_since >= pool.scale_down_unneeded_s
                and self.now - self.last_scale_up[pool_name] >= pool.scale_down_delay_after_add_s
            ):
                node.removed_at = self.now
                removable -= 1

    # --- metrics-server ----------------------------------------------------------------------------
    def _scrape_metrics(self) -> None:
        window = self.setup.metrics_resolution_s
        for pod in self.pods:
            if pod.gone_at is None and pod.started_at is not None and pod.started_at <= self.now - window:
                pod.sample = CpuSample(pod.mean_cpu(self.now - window, self.now), self.now, window)

    # --- autoscalers -------------------------------------------------------------------------------
    def _hpa_cpu_sync(self) -> None:
        views = []
        for p in self.pods:
            if p.gone_at is not None:
                continue
            started = p.started(self.now)
            views.append(
                PodView(
                    name=p.name,
                    request_m=self.setup.worker.request_m,
                    phase="Running" if started else "Pending",
                    deleting=p.deleting_at is not None,
                    ready=started,
                    ready_transition=p.started_at if started else None,
                    start_time=p.assigned_at if started else None,
                    sample=p.sample if started else None,
                )
            )
        computed = cpu_replicas(self.replicas, self.setup.hpa.target_cpu_pct, views, self.now, self.setup.hpa_flags)
        self._set_replicas(self.hpa.reconcile(self.now, self.replicas, computed[0] if computed else None))

    def _keda_metric(self) -> int:
        count = sum(q + r for q, r in self._db_loads().values())
        return airflow_chart_query(count, self.setup.celery.concurrency)

    def _hpa_external_sync(self) -> None:
        status_replicas = sum(1 for p in self.pods if p.active)
        computed = None
        if status_replicas > 0:
            computed = external_average_value_replicas(
                status_replicas, self._keda_metric(), self.setup.keda.params.target_query_value, self.setup.hpa_flags.tolerance
            )
        self._set_replicas(self.hpa.reconcile(self.now, self.replicas, computed))

    def _keda_poll(self) -> None:
        target = self.keda.poll(self.now, self._keda_metric(), self.replicas)
        if target is not None:
            self._set_replicas(target)

    def _task_aware_poll(self) -> None:
        """One iteration of airflow_on_k8s.autoscaler.controller: cleanup, decide, scale up or drain-then-remove."""
        active = [p for p in self.pods if p.active]
        for pod in active:  # cleanup: a worker left cancelled and marked is restored
            pod.consumer_cancelled, pod.deletion_cost = False, 0
        loads = tuple(QueueLoad(q, queued, running) for q, (queued, running) in self._db_loads().items())
        busy = sum(1 for p in active if p.running or p.reserved)
        decision = self.policy.decide(Observation(self.now, loads, self.replicas, busy))
        if decision.desired_replicas >= self.replicas:
            self._set_replicas(decision.desired_replicas)
            return
        # Scale-down: cancel the chosen idle workers' consumers (they are idle, so the drain wait is
        # over at once), give them the lowest pod-deletion-cost, then lower replicas: the ReplicaSet
        # removes exactly those.
        workers = [
            WorkerLoad(
                p.name,
                p.started(self.now),
                tuple(t.started_at for t in p.running) + tuple(self.now for _ in p.reserved),
            )
            for p in active
        ]
        chosen = set(choose_workers_to_remove(workers, self.replicas - decision.desired_replicas, self.now))
        for pod, worker in zip(active, workers):
            if pod.name in chosen:
                pod.consumer_cancelled = True
                pod.deletion_cost = -INT32_MAX
            else:
                pod.deletion_cost = deletion_cost(worker, self.now)
        self._set_replicas(decision.desired_replicas)

    # --- after every event -------------------------------------------------------------------------
    def _settle(self) -> None:
        self._reconcile_replicaset()
        self._schedule_pods()
        self._airflow_schedule()
        self._dispatch()
        self._schedule_pods()  # task pods created by tasks that just started
        self._record()

    def _record(self) -> None:
        sample = Sample(
            t=self.now,
            replicas=self.replicas,
            pods=sum(1 for p in self.pods if p.gone_at is None),
            ready_workers=sum(1 for p in self.pods if p.consuming(self.now)),
            running_tasks=sum(len(p.running) for p in self.pods),
            worker_nodes=sum(1 for n in self.nodes if n.pool == "worker" and n.removed_at is None),
            task_nodes=sum(1 for n in self.nodes if n.pool == "task" and n.removed_at is None),
        )
        last = self.timeline[-1] if self.timeline else None
        if last is None or {**last.__dict__, "t": 0} != {**sample.__dict__, "t": 0}:
            self.timeline.append(sample)


def simulate(setup: Setup, tasks: list[TaskSpec], mode: Mode, horizon_s: float, seed: int = 0) -> RunResult:
    return Simulation(setup, tasks, mode, seed).run(horizon_s)
