"""Settings, the stack config's scaling section, and `python -m airflow_on_k8s.autoscaler` as a process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from airflow_on_k8s.config import ConfigError, ScalingConfig, parse_stack_config
from tests.autoscaler.conftest import REPO_ROOT, seeded_load_db, set_load
from airflow_on_k8s.autoscaler.actuators.local_processes import LocalProcessActuator, airflow_worker_command
from airflow_on_k8s.autoscaler.policy import PolicyConfig
from airflow_on_k8s.autoscaler.settings import SettingsError, settings_from_args

AWS_OK = {"cloud": "aws", "aws": {"region": "eu-west-1"}}
CONN = ["--db-url", "postgresql://airflow@db/airflow", "--broker-url", "redis://redis:6379/0"]


def run_cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "airflow_on_k8s.autoscaler", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_stack_scaling_section_becomes_the_same_policy_in_the_autoscaler():
    scaling = ScalingConfig(min_workers=1, max_workers=20, target_load_factor=0.8, queues=["default", "etl"],
                            scale_down_stabilization_seconds=300, scale_down_cooldown_seconds=90, scale_up_max_step=4,
                            scale_down_max_step=2, poll_interval_seconds=15, drain_timeout_seconds=600,
                            drain_settle_seconds=5, per_queue_ceiling=True)
    settings, once = settings_from_args([*CONN, *scaling.autoscaler_args(worker_concurrency=8)], environ={})
    assert not once
    assert settings.policy_config() == PolicyConfig(
        min_workers=1, max_workers=20, worker_concurrency=8, target_load_factor=0.8, scale_up_stabilization_s=0,
        scale_down_stabilization_s=300, scale_up_max_step=4, scale_down_max_step=2, scale_down_cooldown_s=90,
        per_queue_ceiling=True,
    )
    assert (settings.queues, settings.poll_interval_s, settings.drain_timeout_s, settings.drain_settle_s) == (
        ("default", "etl"), 15, 600, 5)


@pytest.mark.parametrize(
    ("scaling", "key", "fix"),
    [
        ({"scaleUpStabilizationSeconds": 300, "scaleDownStabilizationSeconds": 60}, "scaling.scaleUpStabilizationSeconds", "shorten it"),
        ({"scaleUpMaxStep": 1, "scaleDownMaxStep": 3}, "scaling.scaleUpMaxStep", "raise it or use 0"),
        ({"drainTimeoutSeconds": 15, "pollIntervalSeconds": 10}, "scaling.drainTimeoutSeconds", "raise it"),
        ({"queues": []}, "scaling.queues", "at least one queue"),
        # The names reach the workers' command line (case 4 of issue 11).
        ({"queues": ["etl; rm -rf /"]}, "scaling.queues", "use letters, digits"),
        ({"pollIntervalSeconds": 0}, "scaling.pollIntervalSeconds", "greater than or equal to 1"),
        ({"scaleDownMaxStep": 0}, "scaling.scaleDownMaxStep", "greater than or equal to 1"),
    ],
)
def test_bad_scaling_settings_name_the_key_and_the_fix(scaling, key, fix):
    with pytest.raises(ConfigError) as err:
        parse_stack_config({**AWS_OK, "scaling": scaling})
    line = next(p for p in err.value.problems if f"airflow-on-k8s:{key}:" in p)
    assert fix in line


def test_connections_fall_back_to_airflows_own_environment():
    env = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://airflow:pw@pgbouncer:6543/airflow",
        "AIRFLOW__CELERY__BROKER_URL": "redis://:pw@airflow-redis:6379/0",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor,KubernetesExecutor",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
        "AIRFLOW__CELERY_KUBERNETES_EXECUTOR__KUBERNETES_QUEUE": "kubernetes",
        "WORKER_AUTOSCALER_MAX_WORKERS": "7",
        "POD_NAME": "autoscaler-abc",
    }
    settings, _ = settings_from_args(["--max-workers", "9"], environ=env)
    assert settings.db_url.startswith("postgresql+psycopg2://airflow:pw@pgbouncer")
    assert settings.broker_url == "redis://:pw@airflow-redis:6379/0"
    assert settings.executor == "CeleryExecutor,KubernetesExecutor"
    assert (settings.worker_concurrency, settings.exclude_queues, settings.identity) == (4, ("kubernetes",), "autoscaler-abc")
    assert settings.max_workers == 9  # the flag beats WORKER_AUTOSCALER_MAX_WORKERS
    settings, _ = settings_from_args([], environ=env)
    assert settings.max_workers == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--db-url: is required; pass --db-url, or set WORKER_AUTOSCALER_DB_URL or AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"),
        ([*CONN, "--max-workers", "2", "--min-workers", "3"], "--max-workers: 2 is below --min-workers (3); raise --max-workers or lower --min-workers"),
        ([*CONN, "--target-load-factor", "1.5"], "--target-load-factor: 1.5 must be in (0, 1]"),
        ([*CONN, "--queues", "default", "--exclude-queues", "default"], "--exclude-queues: ['default'] are also in --queues"),
        ([*CONN, "--actuator", "local"], "--local-state-dir: is required with --actuator local"),
        ([*CONN, "--actuator", "nomad"], "--actuator: Input should be 'kubernetes' or 'local'"),
        ([*CONN, "--hostname-template", "celery@host"], "--hostname-template: 'celery@host' must contain {pod}"),
        (["--db-url", "sqlite:////tmp/a.db", "--broker-url", "redis://r/0"], "--db-url: sqlite:// is not a database this reads"),
        # Case 5 of issue 11: a reply wait under kombu's BRPOP timeout re-queues other workers' running tasks.
        ([*CONN, "--celery-timeout-s", "1"], "--celery-timeout-s: 1.0 is not above the broker's 1 s poll"),
    ],
)
def test_bad_settings_name_the_flag(args, message):
    with pytest.raises(SettingsError) as err:
        settings_from_args(args, environ={})
    assert message in str(err.value)


def test_cli_help_and_exit_codes():
    help_run = run_cli("--help")
    assert help_run.returncode == 0
    assert "--scale-down-cooldown-s" in help_run.stdout and "AIRFLOW__CELERY__BROKER_URL" in help_run.stdout
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "WORKER_AUTOSCALER_"))}
    bad = run_cli(*CONN, "--min-workers", "5", "--max-workers", "2", env=env)
    assert bad.returncode == 2
    assert "--max-workers: 2 is below --min-workers (5)" in bad.stderr
    typo = run_cli(*CONN, "--max-workers", "many", env=env)
    assert typo.returncode == 2 and "argument --max-workers: invalid int value: 'many'" in typo.stderr


def test_cli_once_with_the_local_actuator_starts_airflow_workers_for_the_load(pg_server, redis, tmp_path):
    db_url = seeded_load_db(pg_server, tmp_path, "airflow_cli")
    set_load(pg_server, "airflow_cli", queued=3)
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "WORKER_AUTOSCALER_"))}
    env.update(AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=db_url, AIRFLOW__CELERY__BROKER_URL=redis.url(40),
               AIRFLOW__CELERY__WORKER_CONCURRENCY="2", AIRFLOW_HOME=str(tmp_path / "home"))
    try:
        run = run_cli("--actuator", "local", "--local-state-dir", str(state), "--metrics-port", "0", "--once",
                      "--celery-timeout-s", "1.5", env=env)
        assert run.returncode == 0, run.stderr[-2000:]
        assert "replicas 0 -> 2 (scale up: load needs 2 workers; load default=3q+0r)" in run.stderr
        workers = LocalProcessActuator(state, airflow_worker_command(2))
        assert workers.alive() == ["worker-1", "worker-2"]
    finally:
        LocalProcessActuator(state, airflow_worker_command(2)).kill_all()
