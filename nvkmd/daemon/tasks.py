"""Ending the daemon's own asyncio tasks, for sure."""

from __future__ import annotations

import asyncio

import structlog

log = structlog.get_logger()


async def cancel_tasks(tasks: list[asyncio.Task], recancel_s: float = 1.0) -> None:
    """Cancel ``tasks`` and wait until every one has ended.  One cancel is
    not always enough: on Python 3.11, ``asyncio.wait_for`` returns the
    result instead of raising when the cancel lands just as what it waits
    for completes, and the task goes on (a daemon that did not stop on
    SIGTERM).  So a task still running ``recancel_s`` after its cancel is
    cancelled again."""
    for t in tasks:
        t.cancel()
    pending = {t for t in tasks if not t.done()}
    while pending:
        _, pending = await asyncio.wait(pending, timeout=recancel_s)
        for t in pending:
            log.warning("a task outlived its cancellation; cancelling it again", task=t.get_name())
            t.cancel()
    for t in tasks:
        if not t.cancelled():
            t.exception()       # retrieved: its failure was logged where it happened
