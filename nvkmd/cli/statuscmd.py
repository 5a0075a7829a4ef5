"""``nvkmctl status``: the daemon, the driver source, every kernel and the jobs.

A command people type and scripts run often, so it stays lean: no argparse
(readyargs reads its usual lines), no asyncio and no dbus-fast package
import (nvkmd.clients.quick asks once over a blocking socket).
tests/test_statusfast.py keeps that budget.
"""

from __future__ import annotations

from typing import Any

from nvkmd.cli.common import glyphs, out, print_json, renderer
from nvkmd.errors import EXIT_OK


def cmd_status(args: Any) -> int:
    from nvkmd.clients import quick
    try:
        s = quick.status(args.bus)
    except quick.Unsupported:
        s = _through_manager(args)
    if args.json:
        print_json(s.to_dict())
    else:
        out(renderer().status_text(s, glyphs()))
    return EXIT_OK


def _through_manager(args: Any) -> Any:
    import asyncio

    from nvkmd.cli.common import client

    async def ask() -> Any:
        async with await client(args) as c:
            return await c.status()
    return asyncio.run(ask())
