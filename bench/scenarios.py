"""The workloads the benchmark runs. Each is deterministic: its tasks come from a seeded RNG.

`seed-000` is the seed's experiment (/work/shared/seeds/000): 4 DAGs x 2 tasks of 5 minutes at 200m
CPU each, worker_concurrency 2, 500m workers, nodes already there, HPA at 60 % CPU (min 1, max 10),
KEDA with the chart's query. The others run the project as it deploys (bench.model.project_setup):
workers on the system pool, KubernetesPodOperator pods on the task pool from zero, min 1 / max 10
workers for every mode, each mode configured as airflow_on_k8s/airflow/component.py configures it.

Task kinds: `celery` tasks compute inside the worker (CPU the HPA can see, like the seed's);
`kpo` tasks run a pod on the task pool while the worker slot waits (almost no worker CPU).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from bench.model import Setup, project_setup, seed_setup
from bench.sim import TaskSpec


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    setup: Setup
    tasks: tuple[TaskSpec, ...]
    horizon_s: float
    seed: int = 0


SEED_000 = "seed-000"


def seed_000() -> Scenario:
    tasks = tuple(TaskSpec(0.0, 300.0, cpu_m=200.0) for _ in range(8))
    return Scenario(SEED_000, "the seed's experiment: 8 celery tasks x 5 min at once", seed_setup(), tasks, 40 * 60)


def long_and_short(seed: int = 1) -> Scenario:
    """A burst of short tasks with a few long ones among them: once the short ones finish, every mode
    scales down while the long ones still run, and blind scale-down picks pods by age, not by load."""
    rng = random.Random(seed)
    tasks = [TaskSpec(0.0, rng.uniform(120, 240)) for _ in range(30)]
    tasks += [TaskSpec(0.0, rng.uniform(40 * 60, 60 * 60)) for _ in range(6)]
    rng.shuffle(tasks)  # queue order: long tasks land on arbitrary workers
    # Arrival order is queue order: spread them over the first seconds in the shuffled order.
    tasks = [replace(t, arrival_s=i * 0.5) for i, t in enumerate(tasks)]
    return Scenario(
        "long-and-short", "30 short (2-4 min) + 6 long (40-60 min) celery tasks at once", project_setup(), tuple(tasks), 3 * 3600, seed
    )


def trickle(seed: int = 2) -> Scenario:
    rng = random.Random(seed)
    tasks, t = [], 0.0
    while t < 3 * 3600:
        t += rng.expovariate(1 / 120)
        tasks.append(TaskSpec(t, min(max(rng.lognormvariate(5.5, 0.5), 60), 900), kind="kpo"))
    return Scenario("trickle", "a kpo task every ~2 min for 3 h (median 4 min)", project_setup(), tuple(tasks), 4 * 3600, seed)


def bursts(seed: int = 3) -> Scenario:
    rng = random.Random(seed)
    tasks = [
        TaskSpec(burst * 1800 + rng.uniform(0, 30), rng.uniform(180, 360), kind="kpo") for burst in range(6) for _ in range(16)
    ]
    return Scenario("bursts", "6 bursts of 16 kpo tasks (3-6 min), one every 30 min", project_setup(), tuple(tasks), 4 * 3600, seed)


def two_queues(seed: int = 4) -> Scenario:
    rng = random.Random(seed)
    tasks, t = [], 0.0
    while t < 3600:
        t += rng.expovariate(1 / 30)
        tasks.append(TaskSpec(t, rng.uniform(60, 180), queue="default"))
    for start in (600.0, 2400.0):
        tasks += [
            TaskSpec(start + rng.uniform(0, 10), rng.uniform(20 * 60, 30 * 60), queue="heavy", kind="kpo") for _ in range(6)
        ]
    return Scenario(
        "two-queues",
        "'default': short celery tasks every ~30 s for 1 h; 'heavy': 2 x 6 kpo tasks of 20-30 min",
        project_setup(),
        tuple(tasks),
        3 * 3600,
        seed,
    )


def two_hundred(seed: int = 5) -> Scenario:
    rng = random.Random(seed)
    tasks = tuple(TaskSpec(rng.uniform(0, 10), rng.uniform(120, 480)) for _ in range(200))
    return Scenario("200-tasks", "200 celery tasks (2-8 min) at once", project_setup(), tasks, 4 * 3600, seed)


def all_scenarios() -> list[Scenario]:
    return [seed_000(), long_and_short(), trickle(), bursts(), two_queues(), two_hundred()]
