"""Where the autoscaler's decisions take effect: a Kubernetes Deployment, or local worker processes.

Both actuators offer the same operations to the controller (see `Actuator`), and both have a leader lock
so that two controllers never act at once (`LeaderLock`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class WorkerPod:
    name: str  # pod name (Kubernetes) or worker name (local); the Celery hostname is derived from it
    ready: bool
    terminating: bool = False  # being deleted (deletionTimestamp set / SIGTERM sent)
    marked: bool = False  # chosen for removal by us (pod-deletion-cost annotation / local marker)
    # What the ReplicaSet ranks pods by before their pod-deletion-cost (see policy.plan_removal).
    phase: str = "Running"  # Pending, Running or Unknown
    node: str | None = "local"  # None: not scheduled yet
    # False only while no container of the pod has started: then it cannot hold a Celery task.
    containers_started: bool = True
    template_hash: str = ""  # the pod-template-hash label: which ReplicaSet of the Deployment owns it
    deletion_cost: int = 0  # its pod-deletion-cost annotation now


@dataclass(frozen=True)
class ScaleTarget:
    """The worker count as read, with what a conditional write needs."""

    replicas: int
    version: str | None = None  # resourceVersion of the Deployment's scale subresource; None = no precondition


@dataclass(frozen=True)
class WorkerView:
    """One consistent look at the workers: the count, the Deployment's own pods, and what does not fit."""

    scale: ScaleTarget
    workers: list[WorkerPod]
    replica_sets: int = 1  # the Deployment's ReplicaSets that want or have pods (>1: a rollout is under way)
    foreign: list[str] = field(default_factory=list)  # pods matching the selector that the Deployment does not own


class ScaleConflict(RuntimeError):
    """The worker count changed since it was read (someone else scaled): nothing was changed."""


class Actuator(Protocol):
    def get_replicas(self) -> int: ...

    def set_replicas(self, replicas: int) -> None:
        """Scale up (or set) the worker count."""

    def list_workers(self) -> list[WorkerPod]: ...

    def observe(self) -> WorkerView: ...

    def mark_for_removal(self, names: Iterable[str]) -> None:
        """Make these the workers the next `remove` takes (Kubernetes: the lowest pod-deletion-cost)."""

    def clear_marks(self, names: Iterable[str]) -> None: ...

    def remove(self, names: list[str], replicas: int, expected: ScaleTarget) -> None:
        """Remove exactly these (marked, drained) workers by setting the count to `replicas`, only if the count
        is still `expected`; raises ScaleConflict otherwise."""


class LeaderLock(Protocol):
    identity: str
    retry_period_s: float  # how often a candidate tries to acquire or renew

    @property
    def held(self) -> bool:
        """True while this instance may act (a cheap local check, no I/O)."""

    def try_acquire(self) -> bool:
        """Acquire or renew; True if this instance holds the lock now."""

    def release(self) -> None: ...
