"""Stopping means stopping: the daemon's tasks end when they are cancelled.

On Python 3.11 (Debian 12's), ``asyncio.wait_for`` returns its result
instead of raising when a cancel lands just as what it waits for completes;
the cancelled loop goes on and the daemon does not stop on SIGTERM (CI saw
it: "nvkmd did not stop within 20s of SIGTERM", the scanner rescanning after
"stopping").  So the long-running side uses ``asyncio.timeout``, which counts
cancellations, and stops its tasks with ``cancel_tasks``, which cancels again
whatever outlived a cancel."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

from nvkmd.daemon.tasks import cancel_tasks

PKG = Path(__file__).resolve().parent.parent / "nvkmd"
# The short-lived programs' waits end with the program; the daemon's do not.
CLIENT_SIDE = ("cli", "admin", "agent", "clients")


def test_the_daemon_side_never_uses_asyncio_wait_for():
    found = []
    for p in sorted(PKG.rglob("*.py")):
        if p.relative_to(PKG).parts[0] in CLIENT_SIDE:
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "wait_for"
                    and isinstance(node.value, ast.Name) and node.value.id == "asyncio"):
                found.append(f"{p.relative_to(PKG.parent)}:{node.lineno}")
    assert not found, f"asyncio.wait_for can swallow a cancel on 3.11; use asyncio.timeout: {found}"


def test_cancel_tasks_ends_a_task_that_swallowed_its_cancel():
    swallowed = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(True)      # what 3.11's wait_for did

    async def main() -> tuple[bool, bool]:
        t = asyncio.create_task(stubborn(), name="stubborn")
        plain = asyncio.create_task(asyncio.sleep(3600), name="plain")
        await asyncio.sleep(0)
        async with asyncio.timeout(10):
            await cancel_tasks([t, plain], recancel_s=0.05)
        return t.cancelled(), plain.cancelled()

    assert asyncio.run(main()) == (True, True)
    assert swallowed == [True]


def test_cancel_tasks_retrieves_a_failed_tasks_exception():
    async def fails() -> None:
        raise RuntimeError("boom")

    async def main() -> asyncio.Task:
        t = asyncio.create_task(fails())
        await asyncio.sleep(0)
        await cancel_tasks([t])
        return t

    t = asyncio.run(main())
    assert isinstance(t.exception(), RuntimeError)
