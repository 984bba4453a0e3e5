"""The autoscaler's settings: command-line flags, each with an environment variable as its default.

Every flag `--some-flag` also reads `WORKER_AUTOSCALER_SOME_FLAG`. The connection settings fall back to
Airflow's own variables, so the autoscaler can run with the same env as an Airflow pod:

    --db-url       WORKER_AUTOSCALER_DB_URL,      else AIRFLOW__DATABASE__SQL_ALCHEMY_CONN
    --broker-url   WORKER_AUTOSCALER_BROKER_URL,  else AIRFLOW__CELERY__BROKER_URL
    --executor     WORKER_AUTOSCALER_EXECUTOR,    else AIRFLOW__CORE__EXECUTOR, else CeleryExecutor
    --worker-concurrency  ...,                    else AIRFLOW__CELERY__WORKER_CONCURRENCY, else 16
    --exclude-queues      ...,                    else AIRFLOW__CELERY_KUBERNETES_EXECUTOR__KUBERNETES_QUEUE
    --parallelism         ...,                    else AIRFLOW__CORE__PARALLELISM, else 32

Bad values exit with status 2 and a message that names the flag and the fix.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from airflow_on_k8s.autoscaler.policy import PolicyConfig
from airflow_on_k8s.autoscaler.signals import KOMBU_REDIS_BRPOP_TIMEOUT_S

ENV_PREFIX = "WORKER_AUTOSCALER_"


def _csv(value: str | Sequence[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    return tuple(i.strip() for i in items if i and i.strip())


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Sources
    db_url: str = Field(min_length=1)
    broker_url: str = Field(min_length=1)
    executor: str = "CeleryExecutor"
    queues: tuple[str, ...] = ("default",)
    exclude_queues: tuple[str, ...] = ()
    # Above kombu's Redis BRPOP timeout: a shorter reply wait polls empty and restores unacked messages.
    celery_timeout_s: float = 2.0
    hostname_template: str = "celery@{pod}"
    # Policy
    min_workers: int = 0
    max_workers: int = 10
    worker_concurrency: int = 16
    # Airflow's [core] parallelism (per scheduler) and scheduler count: they cap queued + running tasks.
    parallelism: int = Field(default=32, ge=1)
    schedulers: int = Field(default=1, ge=1)
    target_load_factor: float = 1.0
    scale_up_stabilization_s: float = 0.0
    scale_down_stabilization_s: float = 120.0
    scale_up_max_step: int = 0
    scale_down_max_step: int = 1
    scale_down_cooldown_s: float = 60.0
    per_queue_ceiling: bool = False
    # Loop
    poll_interval_s: float = Field(default=10.0, gt=0)
    drain_timeout_s: float = Field(default=300.0, gt=0)
    drain_poll_s: float = Field(default=2.0, gt=0)
    drain_settle_s: float = Field(default=2.0, ge=0)
    # Actuator
    actuator: Literal["kubernetes", "local"] = "kubernetes"
    namespace: str = "airflow"
    deployment: str = "airflow-worker"
    label_selector: str = "component=worker"
    lease_name: str = "airflow-worker-autoscaler"
    lease_duration_s: int = Field(default=30, ge=5)
    identity: str = Field(default_factory=socket.gethostname, min_length=1)
    local_state_dir: str = ""
    # Observability
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(default=9090, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("queues", "exclude_queues", mode="before")
    @classmethod
    def _split(cls, v):
        return _csv(v) if isinstance(v, (str, list, tuple)) else v

    @field_validator("queues")
    @classmethod
    def _some_queue(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("is empty; name the queues the workers consume, e.g. default")
        return v

    @field_validator("hostname_template")
    @classmethod
    def _template(cls, v: str) -> str:
        if v.count("{pod}") != 1:
            raise ValueError(f"{v!r} must contain {{pod}} exactly once, e.g. celery@{{pod}}")
        return v

    @field_validator("celery_timeout_s")
    @classmethod
    def _reply_wait(cls, v: float) -> float:
        if not v > KOMBU_REDIS_BRPOP_TIMEOUT_S:
            raise ValueError(
                f"{v} is not above the broker's {KOMBU_REDIS_BRPOP_TIMEOUT_S:g} s poll (kombu's BRPOP timeout): a shorter "
                "wait comes back empty and kombu then re-queues other workers' running tasks; use 2 or more"
            )
        return v

    @field_validator("db_url")
    @classmethod
    def _db(cls, v: str) -> str:
        if not v.startswith(("postgresql", "mysql")):
            raise ValueError(f"{v.split('://')[0]}:// is not a database this reads; use a postgresql:// (or mysql://) URL")
        return v

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, v: str) -> str:
        if "://" not in v:
            raise ValueError(f"{v!r} is not a broker URL; use e.g. redis://host:6379/0")
        return v

    @model_validator(mode="after")
    def _rules(self) -> Settings:
        self.policy_config().validate()
        overlap = set(self.queues) & set(self.exclude_queues)
        if overlap:
            raise ValueError(f"exclude_queues: {sorted(overlap)} are also in queues; drop them from one of the two")
        if self.actuator == "local" and not self.local_state_dir:
            raise ValueError("local_state_dir: is required with actuator local; point it at a writable directory")
        if self.drain_poll_s > self.drain_timeout_s:
            raise ValueError("drain_poll_s: is longer than drain_timeout_s; lower it")
        return self

    @property
    def task_slot_cap(self) -> int:
        return self.parallelism * self.schedulers

    def policy_config(self) -> PolicyConfig:
        return PolicyConfig(**{f: getattr(self, f) for f in PolicyConfig.__dataclass_fields__})


# flag name -> (settings field, type, airflow env fallback, help)
_FLAGS: list[tuple[str, type, str | None, str]] = [
    ("db-url", str, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "Airflow metadata DB (SQLAlchemy URL)"),
    ("broker-url", str, "AIRFLOW__CELERY__BROKER_URL", "Celery broker of the workers"),
    ("executor", str, "AIRFLOW__CORE__EXECUTOR", "Airflow's [core] executor, to tell Celery tasks from others"),
    ("queues", str, None, "comma-separated queues the workers consume (drained and restored as a set)"),
    ("exclude-queues", str, "AIRFLOW__CELERY_KUBERNETES_EXECUTOR__KUBERNETES_QUEUE", "queues never counted"),
    ("celery-timeout-s", float, None, "wait for Celery control replies, over 1 (kombu's BRPOP timeout)"),
    ("hostname-template", str, None, "worker hostname from pod name, e.g. celery@{pod}"),
    ("min-workers", int, None, "fewest workers"),
    ("max-workers", int, None, "most workers"),
    ("worker-concurrency", int, "AIRFLOW__CELERY__WORKER_CONCURRENCY", "task slots per worker"),
    ("parallelism", int, "AIRFLOW__CORE__PARALLELISM", "Airflow's [core] parallelism (tasks at once, per scheduler)"),
    ("schedulers", int, None, "number of Airflow schedulers (each applies parallelism on its own)"),
    ("target-load-factor", float, None, "share of slots to fill, (0, 1]"),
    ("scale-up-stabilization-s", float, None, "lowest recommendation over this window when scaling up"),
    ("scale-down-stabilization-s", float, None, "highest recommendation over this window when scaling down"),
    ("scale-up-max-step", int, None, "most workers added per decision, 0 = unlimited"),
    ("scale-down-max-step", int, None, "most workers removed per decision"),
    ("scale-down-cooldown-s", float, None, "least time between two scale-downs"),
    ("per-queue-ceiling", str, None, "true: sum of per-queue ceilings instead of one pooled ceiling"),
    ("poll-interval-s", float, None, "seconds between loop iterations"),
    ("drain-timeout-s", float, None, "longest wait for a cancelled worker to finish its tasks"),
    ("drain-poll-s", float, None, "seconds between drain checks"),
    ("drain-settle-s", float, None, "wait after cancel_consumer before trusting that a worker is idle"),
    ("actuator", str, None, "kubernetes (a Deployment) or local (worker processes)"),
    ("namespace", str, None, "namespace of the worker Deployment and the Lease"),
    ("deployment", str, None, "worker Deployment name"),
    ("label-selector", str, None, "label selector of the worker pods"),
    ("lease-name", str, None, "coordination.k8s.io Lease for leader election"),
    ("lease-duration-s", int, None, "Lease duration"),
    ("identity", str, "POD_NAME", "leader identity (defaults to the hostname)"),
    ("local-state-dir", str, None, "state dir of the local actuator (pid files, leader.lock)"),
    ("metrics-host", str, None, "address of /metrics, /healthz, /readyz"),
    ("metrics-port", int, None, "port of /metrics, /healthz, /readyz; 0 picks a free one"),
    ("log-level", str, None, "DEBUG, INFO, WARNING or ERROR"),
]
_FIELD_TO_FLAG = {flag.replace("-", "_"): f"--{flag}" for flag, *_ in _FLAGS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_on_k8s.autoscaler",
        description="Task-aware autoscaler for Airflow's Celery workers: scales on queued + running tasks "
        "and removes only idle workers. Every flag also reads WORKER_AUTOSCALER_<FLAG> from the environment.",
    )
    for flag, typ, airflow_env, help_text in _FLAGS:
        env = ENV_PREFIX + flag.upper().replace("-", "_")
        info = Settings.model_fields[flag.replace("-", "_")]
        default = info.default if info.default_factory is None else None
        shown = "" if default is None or flag in ("db-url", "broker-url") else f"; default {default!r}"
        source = f"env {env}" + (f", else {airflow_env}" if airflow_env else "")
        parser.add_argument(f"--{flag}", type=typ, default=None, help=f"{help_text} ({source}{shown})")
    parser.add_argument("--once", action="store_true", help="run one loop iteration and exit")
    return parser


def _flag_of(loc: Sequence) -> str:
    return _FIELD_TO_FLAG.get(str(loc[0]), str(loc[0])) if loc else ""


class SettingsError(ValueError):
    """Settings that cannot work; each line names the flag and the fix."""


def settings_from_args(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> tuple[Settings, bool]:
    """Parse flags (env as defaults) into Settings; raises SettingsError. argparse itself exits 2 on bad syntax."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    raw: dict[str, object] = {}
    for flag, _typ, airflow_env, _help in _FLAGS:
        field = flag.replace("-", "_")
        value = getattr(args, field)
        if value is None:
            value = environ.get(ENV_PREFIX + field.upper()) or (environ.get(airflow_env) if airflow_env else None)
        if value is not None and value != "":
            raw[field] = value
    for needed, env in (("db_url", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"), ("broker_url", "AIRFLOW__CELERY__BROKER_URL")):
        if needed not in raw:
            flag = _FIELD_TO_FLAG[needed]
            raise SettingsError(f"{flag}: is required; pass {flag}, or set {ENV_PREFIX}{needed.upper()} or {env}")
    try:
        return Settings.model_validate(raw), args.once
    except ValidationError as err:
        lines = []
        for e in err.errors():
            msg = e["msg"].removeprefix("Value error, ")
            for line in msg.splitlines():
                # Model-level messages start with the field they are about ("max_workers: ...").
                field, sep, rest = line.partition(": ")
                if sep and field in _FIELD_TO_FLAG:
                    lines.append(f"{_FIELD_TO_FLAG[field]}: {rest}")
                else:
                    lines.append(f"{_flag_of(e['loc'])}: {line}" if e["loc"] else line)
        # Name flags, not Python fields, in the fixes too ("raise max_workers" -> "raise --max-workers").
        text = "\n".join(lines)
        for field, flag in _FIELD_TO_FLAG.items():
            text = re.sub(rf"(?<![\w-]){field}(?!\w)", flag, text)
        raise SettingsError(text) from None
