"""What each Celery worker holds right now, and the consumer switch used to drain one, via Celery's control API.

A worker's tasks are its `active` ones (executing, with `time_start`) plus its `reserved` ones (prefetched
from the broker, waiting for a free process). Both must be empty before a worker may go. `reserved` is
asked before `active`: a task moving from reserved to active between the two calls is then seen twice
(harmless) rather than not at all.

Worker hostnames map to pod names through a template; the Airflow chart's workers are `celery@<pod-name>`
(Celery's default `celery@%h`, and a pod's hostname is its name).

Only the broker is needed (control commands travel over its pidbox exchange), no result backend. The control
app takes the broker options of Airflow's own Celery app (`[celery] celery_config_options`, by default the celery
provider's config: transport options with `visibility_timeout` and `global_keyprefix`, TLS): with Redis, every
client that polls a reply queue may re-queue *any* unacked message older than its own `visibility_timeout`
(kombu/transport/redis.py: `MultiChannelPoller.get` calls `maybe_restore_messages` -> `QoS.restore_visible`
whenever a poll comes back empty), so a client with kombu's default of 3600 s would hand a running acks_late
Airflow task (86400 s in the provider) to a second worker after an hour.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery

from airflow_on_k8s.autoscaler.signals import KOMBU_REDIS_BRPOP_TIMEOUT_S, SignalError


@dataclass(frozen=True)
class CeleryTask:
    id: str
    name: str
    started_at: float | None  # epoch seconds; None while reserved


@dataclass(frozen=True)
class WorkerState:
    hostname: str
    active: tuple[CeleryTask, ...]
    reserved: tuple[CeleryTask, ...]
    queues: tuple[str, ...]  # queues it consumes now; a drained (cancelled) worker consumes none of ours

    @property
    def busy(self) -> bool:
        return bool(self.active or self.reserved)

    def task_start_times(self, now: float) -> tuple[float, ...]:
        """Start times of its tasks for `deletion_cost`; reserved (or not yet started) ones count as starting now."""
        return tuple(t.started_at or now for t in self.active) + tuple(now for _ in self.reserved)


class HostnameTemplate:
    """Maps `celery@{pod}`-style worker hostnames to pod names and back."""

    def __init__(self, template: str = "celery@{pod}"):
        if template.count("{pod}") != 1:
            raise ValueError(f"worker hostname template {template!r} must contain {{pod}} exactly once, e.g. celery@{{pod}}")
        self.template = template
        self._prefix, self._suffix = template.split("{pod}")

    def hostname(self, pod: str) -> str:
        return f"{self._prefix}{pod}{self._suffix}"

    def pod(self, hostname: str) -> str | None:
        if hostname.startswith(self._prefix) and hostname.endswith(self._suffix):
            name = hostname[len(self._prefix) : len(hostname) - len(self._suffix) or None]
            return name or None
        return None


log = logging.getLogger("airflow_on_k8s.autoscaler")

# What Airflow's celery provider uses when [celery_broker_transport_options] visibility_timeout is unset
# (airflow/providers/celery/executors/default_celery.py, provider 3.26: "Using default of 86400 seconds").
AIRFLOW_DEFAULT_VISIBILITY_TIMEOUT_S = 86400
# Broker-side keys of Airflow's Celery config that the control app must share with the workers.
_BROKER_KEYS = ("broker_transport_options", "broker_use_ssl", "broker_login_method")
_DEFAULT_CONFIG_PATH = "airflow.providers.celery.executors.default_celery.DEFAULT_CELERY_CONFIG"


def airflow_celery_config() -> dict[str, Any] | None:
    """Airflow's Celery config as its executor and workers build it, or None where Airflow is not installed."""
    try:
        from airflow.configuration import conf

        path = conf.get("celery", "celery_config_options", fallback=_DEFAULT_CONFIG_PATH)
        if path == _DEFAULT_CONFIG_PATH:
            # Built now from the current config (the module constant was built at import time).
            from airflow.providers.celery.executors import default_celery

            build = getattr(default_celery, "get_default_celery_config", None)
            return dict(build(conf)) if build else dict(default_celery.DEFAULT_CELERY_CONFIG)
        return dict(conf.getimport("celery", "celery_config_options"))
    except ImportError:
        return None
    except Exception as err:  # a config Airflow itself could not load: fall back to the provider's defaults
        log.warning("cannot read Airflow's Celery config, using the celery provider's defaults: %s", err)
        return None


def broker_wait_floor(transport_options: Mapping[str, Any]) -> float:
    """The shortest reply wait that never polls empty-handed: the transport's BRPOP timeout."""
    return float(transport_options.get("polling_interval") or KOMBU_REDIS_BRPOP_TIMEOUT_S)


def _tasks(entries: list[dict] | None) -> tuple[CeleryTask, ...]:
    return tuple(CeleryTask(e.get("id", ""), e.get("name", ""), e.get("time_start")) for e in entries or ())


class CeleryWorkers:
    """Celery's control API for the autoscaler: per-worker tasks and queues, and add/cancel consumer.

    Calls raise SignalError("celery", ...) when the broker cannot be reached.
    """

    source = "celery"

    def __init__(self, broker_url: str, *, timeout_s: float = 2.0, app: Celery | None = None,
                 celery_config: Mapping[str, Any] | None = None):
        """`celery_config`: Airflow's Celery config (default: `airflow_celery_config()`); its broker options
        are used, the broker URL is ours."""
        self.app = app or Celery("worker-autoscaler", broker=broker_url, set_as_current=False)
        config = celery_config if celery_config is not None else (airflow_celery_config() or {})
        for key in _BROKER_KEYS:
            if config.get(key):
                self.app.conf[key] = config[key]
        options = dict(self.app.conf.broker_transport_options or {})
        # Never restore a message sooner than the workers' own clients would.
        options.setdefault("visibility_timeout", AIRFLOW_DEFAULT_VISIBILITY_TIMEOUT_S)
        floor = broker_wait_floor(options) + 0.5
        if timeout_s < floor:
            log.warning("celery reply timeout %.1fs raised to %.1fs (above the broker's poll timeout)", timeout_s, floor)
        self.timeout_s = max(timeout_s, floor)
        # Fail within seconds when the broker is down instead of retrying for minutes.
        self.app.conf.broker_connection_timeout = self.timeout_s
        self.app.conf.broker_connection_retry = False
        self.app.conf.broker_connection_max_retries = 1
        self.app.conf.broker_transport_options = {
            **options,
            "max_retries": 1,
            "socket_connect_timeout": self.timeout_s,
            "socket_timeout": self.timeout_s,
        }
        self._conn = None

    def _connection(self):
        if self._conn is None:
            self._conn = self.app.connection_for_write()
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken
                pass

    def _broadcast(self, command: str, destination: list[str] | None, arguments: dict | None = None) -> dict:
        # Waits for all `destination` replies or the timeout; with no destination it waits the full timeout.
        for attempt in (1, 2):
            try:
                replies = self.app.control.broadcast(
                    command,
                    connection=self._connection(),
                    arguments=arguments or {},
                    destination=destination,
                    reply=True,
                    timeout=self.timeout_s,
                    limit=len(destination) if destination else None,
                )
                break
            except Exception as err:  # kombu raises many types (OperationalError, ConnectionError, redis errors...)
                if attempt == 2:
                    raise SignalError(self.source, f"{command}: {type(err).__name__}: {err}") from err
                # After a broker restart our connection is dead and only the first call finds out: drop it
                # and try once more on a fresh one, so the loop right after the outage is not blind.
                self._drop_connection()
        merged: dict = {}
        for reply in replies or ():
            merged.update(reply)
        return merged

    def snapshot(self, hostnames: Iterable[str] | None = None) -> dict[str, WorkerState]:
        """State of the workers that answered, by hostname. Pass the expected hostnames to return as soon as
        they all answered; a worker missing from the result did not answer (treat its tasks as unknown)."""
        destination = sorted(hostnames) if hostnames is not None else None
        if destination == []:
            return {}
        reserved = self._broadcast("reserved", destination)
        active = self._broadcast("active", destination)
        queues = self._broadcast("active_queues", destination)
        states = {}
        for host in set(reserved) & set(active) & set(queues):
            states[host] = WorkerState(
                hostname=host,
                active=_tasks(active[host]),
                reserved=_tasks(reserved[host]),
                queues=tuple(sorted(q["name"] for q in queues[host] or ())),
            )
        return states

    def ping(self, hostnames: Iterable[str] | None = None) -> set[str]:
        destination = sorted(hostnames) if hostnames is not None else None
        return set(self._broadcast("ping", destination)) if destination != [] else set()

    def cancel_consumer(self, hostnames: Iterable[str], queues: Iterable[str]) -> set[str]:
        """Stop the workers taking new tasks from `queues`; returns the hostnames that confirmed every queue."""
        return self._consumer_command("cancel_consumer", hostnames, queues)

    def add_consumer(self, hostnames: Iterable[str], queues: Iterable[str]) -> set[str]:
        """Let the workers take tasks from `queues` again (a no-op for queues they already consume)."""
        return self._consumer_command("add_consumer", hostnames, queues)

    def _consumer_command(self, command: str, hostnames: Iterable[str], queues: Iterable[str]) -> set[str]:
        destination = sorted(hostnames)
        queues = list(queues)
        if not destination:
            return set()
        for queue in queues:
            arguments = {"queue": queue}
            if command == "add_consumer":
                arguments.update(exchange=None, exchange_type="direct", routing_key=None)
            self._broadcast(command, destination, arguments)
        # Workers answer before they act (the change runs on their event loop soon after), so confirm by
        # watching their queues: a cancelled worker no longer lists the queue, an added one lists it.
        deadline = time.monotonic() + self.timeout_s * 2
        while True:
            current = self._broadcast("active_queues", destination)
            confirmed = {
                host
                for host, listed in current.items()
                if all((q in {e["name"] for e in listed or ()}) == (command == "add_consumer") for q in queues)
            }
            if confirmed == set(destination) or time.monotonic() >= deadline:
                return confirmed
            time.sleep(0.1)

    def wait_until_idle(
        self, hostnames: Iterable[str], *, timeout_s: float, poll_s: float = 1.0, abort=lambda: False
    ) -> tuple[set[str], set[str]]:
        """Poll until every named worker holds no active or reserved task, `abort()` is true, or the timeout.

        Returns (idle, not_idle): workers that did not answer count as not idle.
        """
        pending = set(hostnames)
        idle: set[str] = set()
        deadline = time.monotonic() + timeout_s
        while pending:
            states = self.snapshot(pending)
            newly_idle = {h for h, s in states.items() if not s.busy}
            idle |= newly_idle
            pending -= newly_idle
            if not pending or time.monotonic() >= deadline or abort():
                break
            time.sleep(poll_s)
        return idle, pending

    def close(self) -> None:
        self._drop_connection()
        self.app.close()
