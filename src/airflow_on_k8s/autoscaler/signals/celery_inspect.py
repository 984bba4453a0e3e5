"""What each Celery worker holds right now, and the consumer switch used to drain one, via Celery's control API.

A worker's tasks are its `active` ones (executing, with `time_start`) plus its `reserved` ones (prefetched
from the broker, waiting for a free process). Both must be empty before a worker may go. `reserved` is
asked before `active`: a task moving from reserved to active between the two calls is then seen twice
(harmless) rather than not at all.

Worker hostnames map to pod names through a template; the Airflow chart's workers are `celery@<pod-name>`
(Celery's default `celery@%h`, and a pod's hostname is its name).

Only the broker is needed (control commands travel over its pidbox exchange), no result backend.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from celery import Celery

from airflow_on_k8s.autoscaler.signals import SignalError


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


def _tasks(entries: list[dict] | None) -> tuple[CeleryTask, ...]:
    return tuple(CeleryTask(e.get("id", ""), e.get("name", ""), e.get("time_start")) for e in entries or ())


class CeleryWorkers:
    """Celery's control API for the autoscaler: per-worker tasks and queues, and add/cancel consumer.

    Calls raise SignalError("celery", ...) when the broker cannot be reached.
    """

    source = "celery"

    def __init__(self, broker_url: str, *, timeout_s: float = 2.0, app: Celery | None = None):
        self.timeout_s = timeout_s
        self.app = app or Celery("worker-autoscaler", broker=broker_url, set_as_current=False)
        # Fail within seconds when the broker is down instead of retrying for minutes.
        self.app.conf.broker_connection_timeout = timeout_s
        self.app.conf.broker_connection_retry = False
        self.app.conf.broker_connection_max_retries = 1
        self.app.conf.broker_transport_options = {
            **(self.app.conf.broker_transport_options or {}),
            "max_retries": 1,
            "socket_connect_timeout": timeout_s,
            "socket_timeout": timeout_s,
        }

    def _broadcast(self, command: str, destination: list[str] | None, arguments: dict | None = None) -> dict:
        # Waits for all `destination` replies or the timeout; with no destination it waits the full timeout.
        try:
            replies = self.app.control.broadcast(
                command,
                arguments=arguments or {},
                destination=destination,
                reply=True,
                timeout=self.timeout_s,
                limit=len(destination) if destination else None,
            )
        except Exception as err:  # kombu raises many types (OperationalError, ConnectionError, redis errors...)
            raise SignalError(self.source, f"{command}: {type(err).__name__}: {err}") from err
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
        self.app.close()
