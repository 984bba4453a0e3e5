"""Run the scaling benchmark: `python -m bench.scaling` (simulated, ~20 s), `--real` (local processes) or
`--real-k8s` (real control plane, real KEDA and HPA controllers, real Celery workers; bench/real_k8s.py);
`--real-k8s-compare` runs the simulator on --real-k8s's results and writes them side by side (bench/sim_vs_real.py).

Writes bench/results/summary.json, table.md and one <scenario>.png per scenario (simulated), real.* (`--real`)
or real-k8s.* (`--real-k8s`).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import calibrate
from bench.model import MODES
from bench.report import mode_summary, plot_scenario, write_summary, write_table
from bench.scenarios import SEED_000, Scenario, all_scenarios, long_and_short, two_queues
from bench.sim import RunResult, simulate

RESULTS = Path(__file__).parent / "results"
EVICTION_DRAWS = range(1, 9)


def run_scenario(scenario: Scenario) -> dict[str, RunResult]:
    return {mode: simulate(scenario.setup, list(scenario.tasks), mode, scenario.horizon_s, scenario.seed) for mode in MODES}


def calibration(runs: dict[str, RunResult]) -> dict[str, Any]:
    hpa, keda = runs["hpa"], runs["keda"]
    model = {
        "hpa_sequence": "→".join(map(str, hpa.replica_sequence())),
        "hpa_makespan_s": hpa.makespan_s,
        "keda_sequence": "→".join(map(str, keda.replica_sequence())),
        "keda_makespan_s": keda.makespan_s,
    }
    seed = {
        "hpa_sequence": "→".join(map(str, calibrate.SEED_HPA_SEQUENCE)),
        "hpa_makespan_s": calibrate.SEED_HPA_MAKESPAN_S,
        "keda_sequence": "→".join(map(str, calibrate.SEED_KEDA_SEQUENCE)),
        "keda_makespan_s": calibrate.SEED_KEDA_MAKESPAN_S,
    }
    residual = (
        f"Residual: HPA makespan {(hpa.makespan_s - calibrate.SEED_HPA_MAKESPAN_S) / 60:+.1f} min, KEDA "
        f"{(keda.makespan_s - calibrate.SEED_KEDA_MAKESPAN_S) / 60:+.1f} min. The model's HPA steps every ~1 min "
        "(pod start-up + boot + one metrics window + one sync), the seed's `kubectl describe` ages put them 1-2 min "
        "apart (2, 3, 4, 6, 8 at 32, 30, 29, 27, 26 min ago, rounded, mixed with earlier runs): its pods started "
        "slower than a single start-up figure can match while KEDA's 1→4 still finishes in ~6 min. The model's "
        "steps read 71-76 % CPU (the newest worker is counted while booting) where the seed printed 81 %; 81 % at "
        "3 replicas would have given 5, not 4. The seed's scale-down (8→5→4→2→1 over 10 min) is not fitted: its "
        "CPU after the tasks is unknown."
    )
    return {"seed": seed, "model": model, "residual": residual}


def evictions_over_seeds() -> dict[str, Any]:
    out: dict[str, Any] = {"draws": len(EVICTION_DRAWS), "scenarios": {}}
    for make in (long_and_short, two_queues):
        per_mode: dict[str, dict[str, list[int]]] = {m: {"evicted": [], "failed": []} for m in MODES}
        name = ""
        for seed in EVICTION_DRAWS:
            scenario = make(seed)
            name = scenario.name
            for mode, run in run_scenario(scenario).items():
                per_mode[mode]["evicted"].append(run.evicted_tasks)
                per_mode[mode]["failed"].append(run.failed_tasks)
        out["scenarios"][name] = per_mode
    return out


def run_simulated(out: Path, only: list[str] | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"scenarios": {}, "scenario_info": {}, "stock_cluster_autoscaler": {}}
    for scenario in all_scenarios():
        if only and scenario.name not in only:
            continue
        started = time.perf_counter()
        runs = run_scenario(scenario)
        for mode, run in runs.items():
            if run.unfinished_tasks:
                print(f"warning: {scenario.name}/{mode}: {run.unfinished_tasks} tasks unfinished at the horizon", file=sys.stderr)
        summary["scenarios"][scenario.name] = {mode: mode_summary(run) for mode, run in runs.items()}
        summary["scenario_info"][scenario.name] = {
            "description": scenario.description,
            "tasks": len(scenario.tasks),
            "horizon_s": scenario.horizon_s,
            "seed": scenario.seed,
        }
        stock = replace(scenario, setup=scenario.setup.with_stock_ca())
        summary["stock_cluster_autoscaler"][scenario.name] = {
            mode: round(run.node_minutes("task"), 1) for mode, run in run_scenario(stock).items()
        }
        if scenario.name == SEED_000:
            summary["calibration"] = calibration(runs)
        plot_scenario(scenario.name, runs, out / f"{scenario.name}.png")
        print(f"{scenario.name}: {time.perf_counter() - started:.1f}s", file=sys.stderr)
    if not only:
        summary["evictions_over_seeds"] = evictions_over_seeds()
    write_summary(summary, out / "summary.json")
    write_table(summary, out / "table.md")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", action="store_true", help="run the small real comparison on local processes")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: bench/results)")
    parser.add_argument("--scenario", action="append", help="run only this scenario (repeatable)")
    parser.add_argument("--real-k8s", action="store_true",
                        help="run seed-000 and long-and-short for hpa, keda and task-aware on a real control plane")
    parser.add_argument("--mode", action="append", choices=("hpa", "keda", "task-aware"),
                        help="--real-k8s: run only this mode (repeatable)")
    parser.add_argument("--quick", action="store_true",
                        help="--real-k8s: a smoke run, seed-000 only with 30 s tasks (unless --scenario says otherwise)")
    parser.add_argument("--real-k8s-compare", action="store_true",
                        help="run the simulator on the scenarios, clocks and CPU of --real-k8s's results and write "
                             "sim-vs-real.md/.json/.png side by side with them (bench/sim_vs_real.py)")
    parser.add_argument("--real-k8s-results", type=Path,
                        help="--real-k8s-compare: the real results to read (default: <out>/real-k8s.json)")
    args = parser.parse_args(argv)
    if args.real_k8s_compare and not args.real_k8s:
        from bench import sim_vs_real

        return sim_vs_real.main(args.real_k8s_results or args.out / "real-k8s.json", args.out)
    if args.real_k8s:
        from bench import real_k8s

        code = real_k8s.main(args.out, quick=args.quick, only_scenarios=args.scenario, only_modes=args.mode)
        if args.real_k8s_compare and (args.out / "real-k8s.json").exists():  # `--real-k8s --real-k8s-compare`
            from bench import sim_vs_real

            sim_vs_real.main(args.out / "real-k8s.json", args.out)
        return code
    if args.real:
        from bench import real

        return real.main(args.out)
    summary = run_simulated(args.out, args.scenario)
    print((args.out / "table.md").read_text())
    return 0 if summary["scenarios"] else 1


if __name__ == "__main__":
    sys.exit(main())
