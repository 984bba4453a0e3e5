"""The repository's own tooling: workflows lint clean, CI runs the README's test command, previews cover every stack."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from airflow_on_k8s.testing.mock_runtime import available_stacks

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def _actionlint() -> str:
    found = shutil.which("actionlint") or str(Path(sys.executable).parent / "actionlint")
    assert Path(found).exists(), "actionlint is missing: install requirements-dev.txt"
    return found


def test_workflows_pass_actionlint():
    assert WORKFLOWS, "no workflows found"
    result = subprocess.run([_actionlint(), *map(str, WORKFLOWS)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    # Guards the check above against passing vacuously (e.g. a linter that accepts anything).
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ matrix.nope }}\n")
    result = subprocess.run([_actionlint(), str(broken)], capture_output=True, text=True)
    assert result.returncode != 0


def test_fork_previews_cover_every_stack():
    preview = yaml.safe_load((REPO / ".github/workflows/preview.yml").read_text())
    offline = preview["jobs"]["offline-preview"]["strategy"]["matrix"]["stack"]
    assert sorted(offline) == available_stacks()
    cloud = [entry["stack"] for entry in preview["jobs"]["cloud-preview"]["strategy"]["matrix"]["include"]]
    assert sorted(cloud) == [s for s in available_stacks() if s != "local"]


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^```sh\n(.*?)```", readme, re.M | re.S)
    test_commands = [line for block in commands for line in block.splitlines() if line.strip().startswith("make test")]
    assert test_commands, "the README must show the test command (make test)"
    ci = (REPO / ".ci" / "run").read_text()
    assert any(cmd.strip() in ci for cmd in test_commands)
    workflow = (REPO / ".github/workflows/test.yml").read_text()
    assert "make test" in workflow


def test_readme_config_reference_is_generated_from_the_model():
    from airflow_on_k8s.tools.config_reference import main

    assert main(["--check"]) == 0, "run: python -m airflow_on_k8s.tools.config_reference --write"


def test_config_reference_lists_every_key_with_a_description():
    from airflow_on_k8s.tools.config_reference import rows

    keys = {key: meaning for key, _, _, meaning in rows()}
    for key in ("cloud", "taskPool.minSize", "aws.region", "gcp.project", "scaling.mode", "airflow.workerConcurrency"):
        assert key in keys
    undocumented = [key for key, meaning in keys.items() if not meaning]
    assert not undocumented, f"add a docstring under these fields in airflow_on_k8s/config.py: {undocumented}"


def test_readme_benchmark_table_matches_the_committed_results():
    import json

    summary = json.loads((REPO / "bench/results/summary.json").read_text())["scenarios"]["seed-000"]
    readme = (REPO / "README.md").read_text()
    table = readme.split("<!-- bench-seed-000 -->")[1].split("<!-- /bench-seed-000 -->")[0]
    rows = [line.strip("|").split("|") for line in table.strip().splitlines()[2:]]
    assert {r[0].strip() for r in rows} == set(summary)
    from bench.report import simulated_limit
    from bench.scenarios import seed_000

    limit = simulated_limit(seed_000())
    for mode, makespan_min, max_replicas, pod_minutes, evicted, x_makespan, x_pods in ([c.strip() for c in r] for r in rows):
        figures = summary[mode]
        assert float(makespan_min) == round(figures["makespan_s"] / 60, 1), mode
        assert int(max_replicas) == figures["max_replicas"], mode
        assert float(pod_minutes) == round(figures["worker_pod_minutes"], 1), mode
        assert int(evicted) == figures["evicted_tasks"], mode
        assert float(x_makespan) == round(figures["makespan_s"] / limit["makespan_limit_s"], 2), mode
        assert float(x_pods) == round(figures["worker_pod_minutes"] * 60 / limit["pod_seconds_limit"], 2), mode


def test_readme_real_benchmark_table_matches_the_committed_real_run():
    import json

    runs = json.loads((REPO / "bench/results/real-k8s.json").read_text())["runs"]
    readme = (REPO / "README.md").read_text()
    table = readme.split("<!-- bench-real-k8s -->")[1].split("<!-- /bench-real-k8s -->")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.strip().splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [(run["scenario"], run["mode"]) for run in runs]
    for row, run in zip(rows, runs):
        assert float(row[2]) == round(run["makespan_s"], 1)
        assert int(row[3]) == run["max_replicas"]
        assert int(row[4]) == round(run["worker_pod_seconds"])
        assert int(row[5]) == run["evicted_task_attempts"]
        assert (float(row[6]), float(row[7])) == (run["makespan_x_limit"], run["pod_seconds_x_limit"])
    # The eviction scenario's point: real KEDA kills task attempts, the task-aware mode none.
    by = {(r["scenario"], r["mode"]): r for r in runs}
    assert by[("long-and-short", "keda")]["evicted_task_attempts"] > 0
    assert by[("long-and-short", "task-aware")]["evicted_task_attempts"] == 0
