"""Polling until something holds: the one wait shared by the test harness, the tests and the benchmark."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 30, what: str = "condition", poll_s: float = 0.2) -> T:
    """`predicate()`'s first truthy value, polled every `poll_s`; an AssertionError naming `what` once `timeout`
    seconds have passed (the predicate gets one last call at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll_s)
