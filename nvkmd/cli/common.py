"""What nvkmctl's commands share: output, the daemon connection, and the
lines of wait-ready.

Every command module imports this one and nothing imports a command module
back, so the commands stay leaves.  It is loaded by every run of nvkmctl,
``nvkmctl status`` included: anything heavier than argparse is imported
inside the function that needs it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import argparse

READY_PREFIX = "nvkmd-ready: "


def out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def print_json(value: Any) -> None:
    import json
    out(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def glyphs():
    from nvkmd.cli.render import glyphs_for
    return glyphs_for(sys.stdout.encoding)


def interactive() -> bool:
    """May polkit ask for a password?  Only with a person at the terminal."""
    return sys.stdin.isatty()


async def client(args: argparse.Namespace):
    from nvkmd.clients.manager import connect
    return await connect(args.bus)


async def show(args: argparse.Namespace, ask: Callable[[Any], Any],
               as_json: Callable[[Any], Any], as_text: Callable[[Any], str]) -> Any:
    """Ask the daemon (``await ask(client)``) and print the answer, as JSON
    with --json, else as text; returns the answer."""
    async with await client(args) as c:
        value = await ask(c)
    if args.json:
        print_json(as_json(value))
    else:
        out(as_text(value))
    return value


def renderer():
    """nvkmd.cli.render, loaded only when text is printed (not for --json)."""
    from nvkmd.cli import render
    return render


def watch_connection(c: Any, lost: Callable[[], None]) -> None:
    """Call ``lost()`` if the bus connection itself goes away while waiting."""
    import asyncio    # not at module level: wait-ready's fast path imports this module
    task = asyncio.get_running_loop().create_task(c.wait_disconnected())
    task.add_done_callback(lambda t: lost())
    _keep.add(task)


_keep: set = set()


# wait-ready writes to a boot console and the journal: each line names it.
def say(line: str) -> None:
    print(f"{READY_PREFIX}{line}", flush=True)


def fail(line: str) -> None:
    print(f"{READY_PREFIX}{line}", file=sys.stderr, flush=True)
