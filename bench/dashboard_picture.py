"""`python -m bench.dashboard_picture`: docs/dashboard.png, the Grafana dashboard's panels drawn from the
benchmark's time series (no Grafana runs here).

- "Worker replicas vs queued and running tasks" (the seed's view, the dashboard's first panel) from the real
  run in bench/results/real.json: live `airflow celery worker` processes and running task instances, sampled
  once a second, for the task-aware controller and, beside it, the keda-like baseline.
- "Desired vs current replicas" and "Task pool nodes and pending KubernetesPodOperator pods" from the
  benchmark's simulation in task-aware mode (the project's real policy code): spec.replicas against ready
  workers in `long-and-short`, task-pool nodes against running tasks in `bursts` (KubernetesPodOperator
  tasks), because the real run has no Deployment and no nodes. Each panel's title says where its series come from.

Panel titles are the dashboard's own (airflow_on_k8s/observability/dashboard.py), so the two cannot drift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from airflow_on_k8s.observability.dashboard import PANELS

REAL = Path(__file__).parent / "results" / "real.json"
OUT = Path(__file__).resolve().parents[1] / "docs" / "dashboard.png"


def _panel(title: str) -> str:
    [panel] = [p for p in PANELS if p.title.startswith(title)]
    return panel.title


def render(out: Path = OUT, real: Path = REAL) -> list[str]:
    """Write the picture; return the panel titles drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.scenarios import bursts, long_and_short
    from bench.sim import simulate

    runs = {r["mode"]: r for r in json.loads(real.read_text())["runs"]}

    def simulated(scenario):
        run = simulate(scenario.setup, list(scenario.tasks), "task-aware", scenario.horizon_s, scenario.seed)
        return [s for s in run.timeline if s.t >= 0]  # from the first task on (the model warms up before)

    celery, kpo = simulated(long_and_short()), simulated(bursts())

    seed_view = _panel("Worker replicas vs queued and running tasks")
    desired = _panel("Desired vs current replicas")
    pool = _panel("Task pool nodes")
    titles = [f"{seed_view}: task-aware (real run)", f"{seed_view}: keda-like (real run)",
              f"{desired} (simulated, long-and-short)", f"{pool} (simulated, bursts)"]

    fig, axes = plt.subplots(2, 2, figsize=(13, 7))
    fig.patch.set_facecolor("#111217")
    for ax, title in zip(axes.flat, titles):
        ax.set_facecolor("#181b1f")
        ax.set_title(title, fontsize=9, color="#d8d9da", loc="left")
        ax.tick_params(colors="#9fa7b3", labelsize=8)
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.grid(color="#2c3235", linewidth=0.6)

    for ax, mode in zip(axes[0], ("task-aware", "keda-like")):
        timeline = runs[mode]["timeline"]
        t = [row[0] for row in timeline]
        ax.step(t, [row[1] for row in timeline], where="post", color="#73bf69", label="worker replicas")
        ax.step(t, [row[2] for row in timeline], where="post", color="#f2cc0c", label="running default")
        ax.set_xlabel(f"seconds; {runs[mode]['evicted_tasks']} evicted, makespan {runs[mode]['makespan_s']} s",
                      color="#9fa7b3", fontsize=8)

    ax = axes[1][0]
    hours = [s.t / 3600 for s in celery]
    ax.step(hours, [s.replicas for s in celery], where="post", color="#5794f2", label="desired (spec.replicas)")
    ax.step(hours, [s.ready_workers for s in celery], where="post", color="#73bf69", label="current (ready)")
    ax.set_xlabel("hours", color="#9fa7b3", fontsize=8)
    ax = axes[1][1]
    hours = [s.t / 3600 for s in kpo]
    ax.step(hours, [s.task_nodes for s in kpo], where="post", color="#ff9830", label="task-pool nodes")
    ax.step(hours, [s.running_tasks for s in kpo], where="post", color="#f2cc0c", label="running tasks")
    ax.set_xlabel("hours", color="#9fa7b3", fontsize=8)
    for ax in axes.flat:
        legend = ax.legend(fontsize=8, loc="upper right", facecolor="#181b1f", edgecolor="#2c3235")
        for text in legend.get_texts():
            text.set_color("#d8d9da")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, metadata={"Software": None}, facecolor=fig.get_facecolor())
    plt.close(fig)
    return titles


if __name__ == "__main__":
    print("\n".join(render()))
    sys.exit(0)
