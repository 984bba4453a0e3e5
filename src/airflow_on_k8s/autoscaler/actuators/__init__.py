"""Where the autoscaler's decisions take effect: a Kubernetes Deployment, or local worker processes.

Both actuators offer the same operations to the controller (see `Actuator`), and both have a leader lock
so that two controllers never act at once (`LeaderLock`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class WorkerPod:
    name: str  # pod name (Kubernetes) or worker name (local); the Celery hostname is derived from it
    ready: bool
    terminating: bool = False  # being deleted (deletionTimestamp set / SIGTERM sent)
    marked: bool = False  # chosen for removal by us (pod-deletion-cost annotation / local marker)


class Actuator(Protocol):
    def get_replicas(self) -> int: ...

    def set_replicas(self, replicas: int) -> None:
        """Scale up (or set) the worker count."""

    def list_workers(self) -> list[WorkerPod]: ...

    def mark_for_removal(self, names: Iterable[str]) -> None:
        """Make these the workers the next `remove` takes (Kubernetes: the lowest pod-deletion-cost)."""

    def clear_marks(self, names: Iterable[str]) -> None: ...

    def remove(self, names: list[str]) -> None:
        """Remove exactly these (marked, drained) workers and lower the worker count by len(names)."""


class LeaderLock(Protocol):
    identity: str

    def try_acquire(self) -> bool:
        """Acquire or renew; True if this instance holds the lock now."""

    def release(self) -> None: ...
