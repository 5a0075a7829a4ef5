"""The agent's loop: everything that happens (daemon signals, the daemon or
the notification server coming and going, a clicked action) becomes an
item of one queue, handled in order, so a progress update can never
overtake the result it leads to.  What to show is decided in ``rules``;
``Screen`` shows it.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import structlog

from nvkmd import __version__, api
from nvkmd.agent import notifications, preflightwarn
from nvkmd.agent.config import AgentConfig, SeenFailures
from nvkmd.agent.rules import (
    BOOT_SLOT,
    Notice,
    ProgressGate,
    boot_at_risk,
    boot_notice,
    build_slot,
    failure_notice,
    progress_notice,
    ready_fallback,
    success_notice,
    unseen_failures,
)
from nvkmd.agent.screen import CLOSED_BY_USER, SHOW_LOG, Screen
from nvkmd.clients import manager as client
from nvkmd.errors import NvkmdError
from nvkmd.model import (
    ACTIVE_JOB_STATES,
    DaemonStatus,
    JobFinished,
    JobProgress,
    JobQueued,
    NextBootChanged,
    StateChanged,
)

log = structlog.get_logger("nvkmd.agent")


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
        # job id -> when it should end (monotonic), from the JobInfo.eta_s a
        # refresh read: the JobProgress signal does not carry the ETA.
        self.ends: dict[int, float] = {}
        self.daemon_state = ""
        self.boot: Notice | None = None             # the boot warning wanted up
        self.boot_dismissed: Notice | None = None
        self.next_kernel = ""                       # what the boot loader starts next
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
        await preflightwarn.subscribe(self.daemon, lambda results: self._put("preflight", results))
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
        elif what == "preflight":
            await self._preflight(args[0])
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
                end = self.ends.get(ev.job_id)
                await self.screen.show(progress_notice(ev.kernel, ev.phase, ev.percent,
                                                       ev.kernel == self.next_kernel,
                                                       max(end - time.monotonic(), 0.0)
                                                       if end is not None else -1.0))
        elif isinstance(ev, NextBootChanged):
            if (ev.next_boot.kernel, ev.next_boot.ready) != (self.next_kernel, self.boot is None):
                self._request_refresh()
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
            if j.state in ACTIVE_JOB_STATES:
                self.versions.setdefault(j.id, j.source_version)
        # A progress notification is ended by its build's JobFinished (or by
        # the daemon going away), never here: the status can be newer than
        # the signals still queued behind this refresh, and the result must
        # replace the progress in place, not follow a close.
        # Only a boot loader's own answer, not the newest-first guess.
        nb = st.next_boot
        self.next_kernel = nb.kernel if nb is not None and not nb.guess else ""
        failures = unseen_failures(st, self.seen.keys)
        self.ends = {j.id: time.monotonic() + j.eta_s for j in running.values() if j.eta_s >= 0}
        if self.config.progress:
            for k, j in running.items():
                if build_slot(k) not in self.screen.shown and \
                        self.gate.allow(k, j.phase, j.percent, time.monotonic()):
                    await self.screen.show(progress_notice(k, j.phase, j.percent,
                                                           k == self.next_kernel, j.eta_s))
        for n in failures:
            await self.screen.show(n)
            self.screen.release(n.slot)
        await self._boot(st)
        await self._preflight(st.candidates)

    async def _boot(self, st: DaemonStatus) -> None:
        k = boot_at_risk(st, self.boot.kernel if self.boot else "")
        want = boot_notice(k, ready_fallback(st, k.release)) if k else None
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

    async def _preflight(self, results: list) -> None:
        """A coming kernel the driver will not build for: once per result."""
        for n in preflightwarn.notices(results, self.seen.keys):
            log.warning("a coming kernel would break the NVIDIA driver", kernel=n.kernel)
            await self.screen.show(n)
            self.screen.release(n.slot)

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

