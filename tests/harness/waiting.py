"""Waiting on a condition with a deadline, never a fixed sleep."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(cond: Callable[[], T], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.05, error: type[Exception] = AssertionError) -> T:
    """Poll ``cond`` until it returns something truthy, and return that;
    raise ``error`` after ``timeout`` seconds (bench raises its own error,
    which marks one figure unavailable instead of failing a test)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
