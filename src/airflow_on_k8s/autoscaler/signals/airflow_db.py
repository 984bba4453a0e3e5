"""Queued and running task instances per Celery queue, read from the Airflow metadata database.

The count is what Celery workers must serve: task instances in state `queued` (sent, or about to be
sent, to the broker) or `running`, that belong to the CeleryExecutor and to a queue this Deployment's
workers consume. Excluded:

* tasks of other executors. Airflow 3 records a task's executor in `task_instance.executor`; NULL means
  the default executor, the first one in `[core] executor`. So NULL rows count only when Celery is the
  default, and explicit rows count when they name the CeleryExecutor (by alias, class name or path);
* the kubernetes queue of a hybrid setup (`[celery_kubernetes_executor] kubernetes_queue`), and any queue
  outside `include_queues` when that is set.

Each read is one short read-only transaction with a statement timeout, safe behind PgBouncer in
transaction mode (no session-level settings).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import sqlalchemy as sa

from airflow_on_k8s.autoscaler.policy import QueueLoad
from airflow_on_k8s.autoscaler.signals import SignalError

CELERY_EXECUTOR_PATH = "airflow.providers.celery.executors.celery_executor.CeleryExecutor"

_QUERY = sa.text(
    """
    SELECT COALESCE(queue, :default_queue) AS queue, state, COUNT(*) AS n
    FROM task_instance
    WHERE state IN ('queued', 'running')
      AND (executor IN :celery_names OR (:celery_is_default AND executor IS NULL))
    GROUP BY COALESCE(queue, :default_queue), state
    """
).bindparams(sa.bindparam("celery_names", expanding=True))


# Running Celery task instances of KubernetesPodOperator and its subclasses (GKEStartPodOperator,
# EksPodOperator, ...): each holds a worker slot while it only waits for its pod, unless it deferred.
_POD_OPERATOR_QUERY = sa.text(
    """
    SELECT COUNT(*) FROM task_instance
    WHERE state = 'running' AND operator LIKE '%PodOperator'
      AND (executor IN :celery_names OR (:celery_is_default AND executor IS NULL))
    """
).bindparams(sa.bindparam("celery_names", expanding=True))


@dataclass(frozen=True)
class ExecutorFilter:
    """Which `task_instance.executor` values mean "run by Celery"."""

    celery_names: frozenset[str]
    celery_is_default: bool

    @classmethod
    def from_airflow_setting(cls, core_executor: str) -> ExecutorFilter:
        """From `[core] executor` (AIRFLOW__CORE__EXECUTOR), e.g. "CeleryExecutor,KubernetesExecutor"
        or "fast:airflow.providers.celery.executors.celery_executor.CeleryExecutor"."""
        entries = [e.strip() for e in core_executor.split(",") if e.strip()]
        if not entries:
            raise ValueError("executor setting is empty; set it like AIRFLOW__CORE__EXECUTOR=CeleryExecutor")
        names: set[str] = set()
        default_is_celery = False
        for i, entry in enumerate(entries):
            alias, _, path = entry.rpartition(":")
            # "CeleryKubernetesExecutor" (Airflow 2 hybrid) schedules its non-kubernetes-queue tasks on Celery.
            if path.split(".")[-1] not in ("CeleryExecutor", "CeleryKubernetesExecutor"):
                continue
            names.update(n for n in (alias, path, path.split(".")[-1]) if n)
            default_is_celery = default_is_celery or i == 0
        if not names:
            raise ValueError(
                f"executor setting {core_executor!r} has no CeleryExecutor; the worker autoscaler only scales Celery workers"
            )
        names.add(CELERY_EXECUTOR_PATH)
        return cls(frozenset(names), default_is_celery)


class AirflowDbSignal:
    """Reads per-queue load from Airflow's metadata DB. `read()` raises SignalError("airflow_db", ...) on failure."""

    source = "airflow_db"

    def __init__(
        self,
        db_url: str,
        executors: ExecutorFilter,
        *,
        include_queues: Iterable[str] = (),
        exclude_queues: Iterable[str] = (),
        default_queue: str = "default",
        connect_timeout_s: int = 5,
        statement_timeout_ms: int = 5000,
    ):
        self.executors = executors
        self.include_queues = tuple(include_queues)
        self.exclude_queues = frozenset(exclude_queues)
        self.default_queue = default_queue
        self.statement_timeout_ms = int(statement_timeout_ms)
        url = sa.engine.make_url(db_url)
        connect_args = {"connect_timeout": connect_timeout_s} if url.get_backend_name() == "postgresql" else {}
        # One connection is plenty for one query per poll; pre-ping replaces connections a DB restart broke.
        self._engine = sa.create_engine(
            url, pool_size=1, max_overflow=0, pool_pre_ping=True, pool_recycle=600, connect_args=connect_args
        )

    @contextlib.contextmanager
    def read_only_transaction(self) -> Iterator[sa.Connection]:
        """A connection in a read-only transaction with a statement timeout, rolled back afterwards."""
        with self._engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # Transaction-scoped (SET LOCAL), so nothing leaks into a PgBouncer-shared server session.
                conn.execute(sa.text("SET TRANSACTION READ ONLY"))
                conn.execute(sa.text(f"SET LOCAL statement_timeout = {self.statement_timeout_ms}"))
            try:
                yield conn
            finally:
                conn.rollback()

    def read(self) -> tuple[QueueLoad, ...]:
        counts: dict[str, dict[str, int]] = {q: {"queued": 0, "running": 0} for q in self.include_queues}
        try:
            with self.read_only_transaction() as conn:
                rows = conn.execute(
                    _QUERY,
                    {
                        "default_queue": self.default_queue,
                        "celery_names": sorted(self.executors.celery_names),
                        "celery_is_default": self.executors.celery_is_default,
                    },
                ).all()
        except sa.exc.SQLAlchemyError as err:
            raise SignalError(self.source, f"{type(err).__name__}: {str(err).splitlines()[0]}") from err
        for queue, state, n in rows:
            if queue in self.exclude_queues or (self.include_queues and queue not in self.include_queues):
                continue
            counts.setdefault(queue, {"queued": 0, "running": 0})[state] += int(n)
        return tuple(QueueLoad(q, c["queued"], c["running"]) for q, c in sorted(counts.items()))

    def pod_operator_slots(self) -> int:
        """Worker slots held by running, non-deferred KubernetesPodOperator tasks."""
        try:
            with self.read_only_transaction() as conn:
                return int(conn.execute(_POD_OPERATOR_QUERY, {
                    "celery_names": sorted(self.executors.celery_names),
                    "celery_is_default": self.executors.celery_is_default,
                }).scalar() or 0)
        except sa.exc.SQLAlchemyError as err:
            raise SignalError(self.source, f"{type(err).__name__}: {str(err).splitlines()[0]}") from err

    def close(self) -> None:
        self._engine.dispose()
