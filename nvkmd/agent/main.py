"""``nvkmd-agent``: desktop notifications about nvkmd, in the user's session.

The daemon is a system service and must never connect to a user's session
bus.  This agent runs as the user: it listens to the daemon (through
``nvkmd.clients.manager``, normally on the system bus) and shows notifications
through the desktop's notification server on the user's session bus.  It never
builds anything and needs no privileges.

What to show is decided in ``rules``, shown by ``screen`` and driven by
``listener``'s one queue; this module is the program: arguments, the two
connections, signals, and the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import structlog

from nvkmd import __version__, api
from nvkmd.agent import notifications
from nvkmd.agent.config import SeenFailures, config_file, load_config, state_file
from nvkmd.agent.listener import Agent
from nvkmd.clients import manager as client
from nvkmd.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, NvkmdError

log = structlog.get_logger("nvkmd.agent")

AGENT_NAME = "io.github.nvkmd.Agent"       # on the session bus: one agent per session


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nvkmd-agent", description="Desktop notifications about "
                                "nvkmd's builds, in the user's graphical session.")
    p.add_argument("--bus", default="system",
                   help="the bus nvkmd serves on: system, session or a D-Bus address "
                        "(default system); notifications always go to the session bus")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--version", action="version", version=f"nvkmd-agent {__version__}")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    config, warning = load_config(config_file())
    if warning:
        log.warning("bad configuration; using the defaults", problem=warning)
    seen = SeenFailures(state_file())
    warning = seen.load()
    if warning:
        log.warning("cannot use the state file", problem=warning)
    desktop = await notifications.connect_session()
    try:
        if not await desktop.own(AGENT_NAME):
            # Started twice (the user unit and an autostart entry): one is enough.
            log.info("another nvkmd-agent runs in this session; exiting", name=AGENT_NAME)
            desktop.close()
            return EXIT_OK
        daemon = await client.connect(args.bus)
    except NvkmdError:
        desktop.close()
        raise
    agent = Agent(config, seen, daemon, desktop, args.bus)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    work = asyncio.create_task(agent.run(), name="agent")
    watched = {asyncio.create_task(stop.wait()): "stop",
               asyncio.create_task(daemon.wait_disconnected()): api.describe_bus(args.bus),
               asyncio.create_task(desktop.wait_disconnected()): "the session bus",
               work: "agent"}
    code = EXIT_OK
    try:
        done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is work:
                t.result()          # raises what stopped it
            elif watched[t] != "stop":
                log.error("lost the connection", bus=watched[t])
                code = EXIT_FAILED
    finally:
        for t in watched:
            t.cancel()
        for t in watched:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if code == EXIT_OK:
            with contextlib.suppress(NvkmdError, asyncio.TimeoutError):
                await asyncio.wait_for(agent.shutdown(), 5)
        daemon.close()
        desktop.close()
    log.info("stopped", exit_code=code)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from nvkmd import logsetup
    logsetup.setup(args.verbose)
    try:
        api.parse_bus(args.bus)
    except ValueError as e:
        print(f"nvkmd-agent: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(run(args))
    except NvkmdError as e:
        print(f"nvkmd-agent: {e.message}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
