"""Waiting on a condition with a deadline, never a fixed sleep: from plain
code (``wait_for``) and from a coroutine (``until``, which lets the event
loop run between polls)."""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")


def _polls(timeout: float, what: str, error: type[Exception]) -> Iterator[None]:
    """One step per poll; raises ``error`` once ``timeout`` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        yield
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:g}s waiting for {what}")


def wait_for(cond: Callable[[], T], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.05, error: type[Exception] = AssertionError) -> T:
    """Poll ``cond`` until it returns something truthy, and return that;
    raise ``error`` after ``timeout`` seconds (bench raises its own error,
    which marks one figure unavailable instead of failing a test)."""
    for _ in _polls(timeout, what, error):
        if value := cond():
            return value
        time.sleep(interval)


async def until(cond: Callable[[], T], timeout: float = 120.0, what: str = "condition",
                interval: float = 0.05) -> T:
    """``wait_for`` inside a coroutine: the loop serves the daemon's core
    (or a client) while the test waits."""
    for _ in _polls(timeout, what, AssertionError):
        if value := cond():
            return value
        await asyncio.sleep(interval)
