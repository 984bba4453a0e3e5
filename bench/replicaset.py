"""Which pods a ReplicaSet deletes when it scales down, ported from kubernetes/kubernetes
pkg/controller/controller_utils.go `ActivePodsWithRanks.Less` and
pkg/controller/replicaset/replica_set.go `getPodsToDelete` / `getPodsRankedByRelatedPodsOnSameNode`.

Rules, applied in turn until one differs (the first pod in the sorted list is deleted first):

1. unscheduled before scheduled;
2. Pending before Unknown before Running;
3. not ready before ready;
4. lower `controller.kubernetes.io/pod-deletion-cost` first (beta, on by default since 1.22);
5. more ReplicaSet pods on the same node first ("doubled up");
6. ready for a shorter time first;
7. more container restarts first;
8. created more recently first.

6 and 8 compare log2 of the age in nanoseconds (LogarithmicScaleDown, on by default since 1.22), so
pods of similar age tie and fall back to UID order, a pseudo-random choice.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal

_PHASE_ORDER = {"Pending": 0, "Unknown": 1, "Running": 2}


@dataclass(frozen=True)
class RsPod:
    name: str
    uid: str
    node: str | None
    phase: Literal["Pending", "Unknown", "Running"]
    ready: bool
    ready_since: float | None
    created_at: float
    deletion_cost: int = 0
    restarts: int = 0


def _log_rank(t: float, now: float) -> int:
    age_ns = (now - t) * 1e9
    return int(math.log2(age_ns)) if age_ns > 0 else -1


def _newer_first(t1: float | None, t2: float | None, now: float, uid1: str, uid2: str) -> bool | None:
    """Rule 6/8 comparison: True if pod 1 goes first, False if pod 2 does, None if they tie."""
    if t1 == t2:
        return None
    if t1 is None or t2 is None:  # a zero timestamp sorts first
        return t1 is None
    diff = _log_rank(t1, now) - _log_rank(t2, now)
    if diff == 0:
        return uid1 < uid2
    return diff < 0


def deletion_order(pods: list[RsPod], now: float) -> list[RsPod]:
    """The pods sorted the way the ReplicaSet controller picks them for deletion (first = deleted first)."""
    on_node = Counter(p.node or "" for p in pods)

    def less(a: RsPod, b: RsPod) -> bool:
        if a.node != b.node and (not a.node or not b.node):
            return not a.node
        if _PHASE_ORDER[a.phase] != _PHASE_ORDER[b.phase]:
            return _PHASE_ORDER[a.phase] < _PHASE_ORDER[b.phase]
        if a.ready != b.ready:
            return not a.ready
        if a.deletion_cost != b.deletion_cost:
            return a.deletion_cost < b.deletion_cost
        rank_a, rank_b = on_node[a.node or ""], on_node[b.node or ""]
        if rank_a != rank_b:
            return rank_a > rank_b
        if a.ready and b.ready:
            first = _newer_first(a.ready_since, b.ready_since, now, a.uid, b.uid)
            if first is not None:
                return first
        if a.restarts != b.restarts:
            return a.restarts > b.restarts
        first = _newer_first(a.created_at, b.created_at, now, a.uid, b.uid)
        return bool(first)

    def compare(a: RsPod, b: RsPod) -> int:
        if less(a, b):
            return -1
        if less(b, a):
            return 1
        return 0

    return sorted(pods, key=functools.cmp_to_key(compare))


def pods_to_delete(pods: list[RsPod], count: int, now: float) -> list[str]:
    """Names of the `count` pods the ReplicaSet deletes."""
    if count <= 0:
        return []
    return [p.name for p in deletion_order(pods, now)[:count]]
