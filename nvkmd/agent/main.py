"""``nvkmd-agent``: desktop notifications about nvkmd, in the user's session.

The daemon is a system service and must never connect to a user's session
bus.  This agent runs as the user: it listens to the daemon (through
``nvkmd.client``, normally on the system bus) and shows notifications through
the desktop's notification server on the user's session bus.  It never
builds anything and needs no privileges.

What to show is decided in ``agentrules``; this module is the shell: it
turns everything that happens (daemon signals, the daemon or the
notification server coming and going, a clicked action) into items of one
queue, handled in order, so a progress update can never overtake the result
it leads to.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from typing import Any

import structlog

from nvkmd import __version__, api
from nvkmd.agent import notifications
from nvkmd.agent.config import (
    AgentConfig,
    SeenFailures,
    config_file,
    load_config,
    state_file,
)
from nvkmd.agent.rules import (
    BOOT_SLOT,
    Notice,
    ProgressGate,
    boot_at_risk,
    boot_notice,
    build_slot,
    escape_markup,
    failure_notice,
    progress_notice,
    success_notice,
    unseen_failures,
)
from nvkmd.clients import manager as client
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.model import DaemonStatus, JobFinished, JobProgress, JobQueued, StateChanged

log = structlog.get_logger("nvkmd.agent")

APP_NAME = "nvkmd"
AGENT_NAME = "io.github.nvkmd.Agent"       # on the session bus: one agent per session
SHOW_LOG = "show-log"
CLOSED_BY_USER = 2          # NotificationClosed's reason for a dismissal


class Screen:
    """The agent's notifications on the desktop: one per slot, updated in
    place.  What cannot be shown for want of a server waits in ``pending``
    (progress excepted: it is stale by then) and is shown when one appears."""

    def __init__(self, desktop: notifications.Notifications, on_shown):
        self.desktop = desktop
        self.on_shown = on_shown
        self.ids: dict[str, int] = {}          # slot -> the server's id
        self.shown: dict[str, Notice] = {}     # slot -> what it shows now
        self.by_id: dict[int, Notice] = {}     # id -> notice, for ActionInvoked
        self.pending: dict[str, Notice] = {}
        self.muted: set[str] = set()           # progress the user dismissed
        self.caps: set[str] | None = None
        self.warned = False

    def absent(self, reason: str) -> None:
        if not self.warned:
            self.warned = True
            log.warning("no notification server on the session bus; notifications will be "
                        "shown once one starts", reason=reason)

    async def show(self, n: Notice) -> bool:
        if n.progress and n.slot in self.muted:
            return False
        try:
            if self.caps is None:
                self.caps = set(await self.desktop.capabilities())
            nid = await self.desktop.notify(APP_NAME, self.ids.get(n.slot, 0), n.icon, n.summary,
                                            self._body(n), self._actions(n), self._hints(n),
                                            n.timeout_ms)
        except NvkmdError as e:
            if e.code is not ErrorCode.UNREACHABLE:
                log.warning("the notification server refused a notification", reason=e.message,
                            summary=n.summary)
                return False
            self.caps = None
            self.absent(e.message)
            if not n.progress:
                self.pending[n.slot] = n
            return False
        old = self.ids.get(n.slot)
        if old is not None and old != nid:
            self.by_id.pop(old, None)
        self.ids[n.slot] = nid
        self.shown[n.slot] = n
        self.by_id[nid] = n
        self.pending.pop(n.slot, None)
        self.on_shown(n, nid)
        return True

    def _body(self, n: Notice) -> str:
        return escape_markup(n.body) if "body-markup" in (self.caps or ()) else n.body

    def _actions(self, n: Notice) -> list[str]:
        if not n.log or "actions" not in (self.caps or ()):
            return []
        # "default" is a click on the bubble; the named one is a button
        # where the server draws buttons.  Both open the log.
        return ["default", "Show log", SHOW_LOG, "Show log"]

    @staticmethod
    def _hints(n: Notice) -> dict[str, Any]:
        hints: dict[str, Any] = {"urgency": n.urgency}
        if n.resident:
            hints["resident"] = True
        if n.percent is not None:
            hints["value"] = n.percent
        return hints

    def release(self, slot: str) -> None:
        """Leave the slot's notification on screen but stop updating it: the
        next build of that kernel opens a new one."""
        self.ids.pop(slot, None)
        self.shown.pop(slot, None)
        self.muted.discard(slot)

    async def close(self, slot: str) -> None:
        self.pending.pop(slot, None)
        self.muted.discard(slot)
        self.shown.pop(slot, None)
        nid = self.ids.pop(slot, None)
        if nid is None:
            return
        self.by_id.pop(nid, None)
        try:
            await self.desktop.close_notification(nid)
        except NvkmdError as e:
            log.debug("could not close a notification", id=nid, reason=e.message)

    def closed(self, nid: int, reason: int) -> str | None:
        """The server closed one of ours; the slot it was in, if any."""
        self.by_id.pop(nid, None)
        for slot, i in list(self.ids.items()):
            if i == nid:
                n = self.shown.get(slot)
                self.release(slot)
                if reason == CLOSED_BY_USER and n is not None and n.progress:
                    self.muted.add(slot)
                return slot
        return None

    async def server_changed(self, old: str, new: str) -> None:
        if old:
            # Its ids died with it.  Warnings that must stay up go back in line.
            for slot, n in self.shown.items():
                if n.resident:
                    self.pending.setdefault(slot, n)
            self.ids.clear()
            self.shown.clear()
            self.by_id.clear()
            self.caps = None
            if not new:
                self.warned = False
                self.absent(f"{notifications.NOTIFICATIONS[0]} went away")
        if new:
            log.info("notification server appeared", name=new, waiting=len(self.pending))
            self.warned = False
            self.caps = None
            for n in list(self.pending.values()):
                await self.show(n)


class Agent:
    def __init__(self, config: AgentConfig, seen: SeenFailures, daemon: client.Client,
                 desktop: notifications.Notifications, bus: str):
        self.config = config
        self.seen = seen
        self.daemon = daemon
        self.desktop = desktop
        self.bus = bus
        self.screen = Screen(desktop, self._shown)
        self.queue: asyncio.Queue[tuple] = asyncio.Queue()
        self.gate = ProgressGate()
        self.versions: dict[int, str] = {}          # job id -> driver version
        self.daemon_state = ""
        self.boot: Notice | None = None             # the boot warning wanted up
        self.boot_dismissed: Notice | None = None
        self._refresh_queued = False
        self._viewers: set[asyncio.Task] = set()

    def _put(self, *item: Any) -> None:
        self.queue.put_nowait(item)

    def _request_refresh(self) -> None:
        if not self._refresh_queued:
            self._refresh_queued = True
            self._put("refresh")

    async def run(self) -> None:
        # Listen first, then look: whatever happens in between is seen twice
        # at worst, and showing is idempotent.
        await self.desktop.watch(lambda old, new: self._put("server", old, new),
                                 lambda nid, key: self._put("action", nid, key),
                                 lambda nid, reason: self._put("closed", nid, reason))
        await self.daemon.watch_owner(lambda owner: self._put("daemon", owner))
        await self.daemon.subscribe(lambda event: self._put("event", event))
        if not await self.desktop.owner() and not await self.desktop.activatable():
            self.screen.absent(f"nothing owns {notifications.NOTIFICATIONS[0]}")
        owner = await self.daemon.owner()
        if owner:
            self._put("daemon", owner)
        else:
            log.info("nvkmd is not running; waiting for it", bus=api.describe_bus(self.bus))
        self._put("ready", owner)
        while True:
            item = await self.queue.get()
            try:
                await self._handle(*item)
            except NvkmdError as e:
                log.warning("could not handle an update", what=item[0], reason=e.message)
            except Exception:
                log.exception("internal error", what=repr(item)[:200])

    async def _handle(self, what: str, *args: Any) -> None:
        if what == "event":
            await self._event(args[0])
        elif what == "refresh":
            self._refresh_queued = False
            await self._refresh()
        elif what == "daemon":
            await self._daemon_changed(args[0])
        elif what == "server":
            await self.screen.server_changed(*args)
        elif what == "action":
            await self._action(*args)
        elif what == "closed":
            if self.screen.closed(*args) == BOOT_SLOT and args[1] == CLOSED_BY_USER:
                self.boot_dismissed = self.boot
        elif what == "ready":
            log.info("ready", version=__version__, daemon=args[0] or "absent",
                     bus=api.describe_bus(self.bus))

    def _shown(self, n: Notice, nid: int) -> None:
        if n.seen_key:
            self.seen.add(n.seen_key)
        if n.progress:
            log.debug("notified", id=nid, summary=n.summary, body=n.body)
        else:
            log.info("notified", id=nid, summary=n.summary)

    # -- the daemon ---------------------------------------------------------------
    async def _daemon_changed(self, owner: str) -> None:
        if owner:
            log.info("nvkmd is running", name=owner)
            await self._refresh()
            return
        log.info("nvkmd stopped; waiting for it to return")
        # Its running build was interrupted: the progress shown is stale.
        for slot, n in list(self.screen.shown.items()):
            if n.progress:
                await self.screen.close(slot)
                self.gate.forget(n.kernel)

    async def _event(self, ev: Any) -> None:
        if isinstance(ev, JobQueued):
            self.versions[ev.job.id] = ev.job.source_version
            self._request_refresh()
        elif isinstance(ev, JobProgress):
            if self.config.progress and self.gate.allow(ev.kernel, ev.phase, ev.percent,
                                                        time.monotonic()):
                await self.screen.show(progress_notice(ev.kernel, ev.phase, ev.percent))
        elif isinstance(ev, JobFinished):
            await self._finished(ev)
            self._request_refresh()
        elif isinstance(ev, StateChanged):
            # PropertiesChanged also carries progress, up to 4 times a second:
            # only a change of the daemon's state is worth a new look.
            if ev.state != self.daemon_state:
                self.daemon_state = ev.state
                self._request_refresh()

    async def _finished(self, ev: JobFinished) -> None:
        log.debug("build finished", kernel=ev.kernel, result=ev.result, job=ev.job_id)
        slot = build_slot(ev.kernel)
        self.gate.forget(ev.kernel)
        version = self.versions.pop(ev.job_id, "")
        if ev.result == "failed":
            n = failure_notice(ev.kernel, ev.cause, ev.hint, ev.log, ev.job_id)
            if n.seen_key not in self.seen:
                await self.screen.show(n)
            self.screen.release(slot)
        elif ev.result == "success" and self.config.success:
            await self.screen.show(success_notice(ev.kernel, version))
            self.screen.release(slot)
        else:
            await self.screen.close(slot)

    async def _refresh(self) -> None:
        """Bring what is shown in line with the daemon's status."""
        try:
            st = await self.daemon.status()
        except NvkmdError as e:
            log.warning("cannot read nvkmd's status", reason=e.message)
            return
        self.daemon_state = st.state or self.daemon_state
        running = {j.kernel: j for j in st.jobs if j.state == "running"}
        for j in st.jobs:
            if j.state in ("queued", "running"):
                self.versions.setdefault(j.id, j.source_version)
        # A progress notification is ended by its build's JobFinished (or by
        # the daemon going away), never here: the status can be newer than
        # the signals still queued behind this refresh, and the result must
        # replace the progress in place, not follow a close.
        failures = unseen_failures(st, self.seen.keys)
        if self.config.progress:
            for k, j in running.items():
                if build_slot(k) not in self.screen.shown and \
                        self.gate.allow(k, j.phase, j.percent, time.monotonic()):
                    await self.screen.show(progress_notice(k, j.phase, j.percent))
        for n in failures:
            await self.screen.show(n)
            self.screen.release(n.slot)
        await self._boot(st)

    async def _boot(self, st: DaemonStatus) -> None:
        k = boot_at_risk(st, self.boot.kernel if self.boot else "")
        want = boot_notice(k) if k else None
        if want == self.boot:
            return
        self.boot = want
        if want is None:
            log.info("the next boot has a working NVIDIA module again")
            self.boot_dismissed = None
            await self.screen.close(BOOT_SLOT)
        elif want != self.boot_dismissed:
            log.warning("the next boot would start without the NVIDIA driver", kernel=want.kernel)
            await self.screen.show(want)

    # -- "Show log" -----------------------------------------------------------------
    async def _action(self, nid: int, key: str) -> None:
        n = self.screen.by_id.get(nid)
        if n is None or not n.log or key not in ("default", SHOW_LOG):
            return
        argv = [*self.config.log_viewer, n.log]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            log.warning("cannot run the log viewer", command=argv[0], reason=e.strerror or str(e))
            return
        log.info("opening the build log", log=n.log, command=argv[0])
        task = asyncio.create_task(self._reap(proc, argv[0]))
        self._viewers.add(task)
        task.add_done_callback(self._viewers.discard)

    @staticmethod
    async def _reap(proc: asyncio.subprocess.Process, command: str) -> None:
        status = await proc.wait()
        if status:
            log.warning("the log viewer failed", command=command, status=status)

    async def shutdown(self) -> None:
        """Take down what would go stale without us: the boot warning (no
        one would close it when resolved) and progress bubbles."""
        for slot, n in list(self.screen.shown.items()):
            if n.resident or n.progress:
                await self.screen.close(slot)


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
            return 0
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
    code = 0
    try:
        done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is work:
                t.result()          # raises what stopped it
            elif watched[t] != "stop":
                log.error("lost the connection", bus=watched[t])
                code = 1
    finally:
        for t in watched:
            t.cancel()
        for t in watched:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if code == 0:
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
        return 2
    try:
        return asyncio.run(run(args))
    except NvkmdError as e:
        print(f"nvkmd-agent: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
