"""The intake: what changed on the machine, turned into jobs.

Watch events poke the debouncer; once it is quiet and no package manager
holds its lock, the scanner rescans, diffs the new snapshot against the
last (``detect``), and applies the plan to the queue (``jobs``).  The wait
for the package managers is shared with the builder: one wait, logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Callable

import structlog

from nvkmd.daemon.state import Shared, given
from nvkmd.detect.diff import Change, diff
from nvkmd.detect.plan import plan
from nvkmd.detect.scan import scan, watch_spec
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.inspect.versions import driver_info
from nvkmd.model import JobFinished, JobQueued
from nvkmd.system import pkgdb
from nvkmd.watch.debounce import CALM_S, Debouncer
from nvkmd.watch.events import WatchEvent, lock_event, relevant

log = structlog.get_logger()

# Rescan (D-Bus) answers within this, well inside a client's call timeout.
RESCAN_WAIT_S = 60.0
# Watched files of the package managers: any event on them is activity.
PACKAGE_MANAGER_TAGS = frozenset({"dpkg", "pacman", "pacman-local", "rpm"})


def _settle(waiters: list[asyncio.Future], error: BaseException | None) -> None:
    for f in waiters:
        if not f.done():
            f.set_exception(error) if error is not None else f.set_result(None)


class Intake:
    def __init__(self, shared: Shared, drop_running: Callable[[int, str], bool]):
        """``drop_running(job_id, cause)`` cancels ``job_id`` if it is the
        one being built (the builder's business) and says whether it was."""
        self.shared = shared
        self._drop_running = drop_running
        # Adaptive: CALM_S when no package manager is seen, debounce_s while one is.
        self.debouncer = Debouncer(shared.config.daemon_debounce_s, calm_s=CALM_S)
        # The watcher, attached by the daemon (duck-typed: the core does not
        # import pyinotify): .update(spec) and .add(path, tag, recursive).
        self.watcher = None
        # Other parts' directories and their events, by tag (the preflights'
        # apt lists and pacman sync databases): merged into every update.
        self.extra_watches: Callable[[], dict] = dict
        self.tag_handlers: dict[str, Callable[[WatchEvent], None]] = {}
        self._poked = asyncio.Event()          # the scanner has something to look at
        self._scan_waiters: list[asyncio.Future] = []     # rescan_now()'s callers
        self.settled = asyncio.Event()         # no scan pending or running
        self._lock_changed = asyncio.Event()   # a package manager's lock file closed
        self._lock_wait: asyncio.Task | None = None
        self._driver_task: asyncio.Task | None = None

    def reload(self) -> None:
        quiet = self.shared.config.daemon_debounce_s
        self.debouncer.quiet_s = quiet
        self.debouncer.max_delay_s = max(self.debouncer.max_delay_s, quiet)

    def close(self) -> None:
        for extra in (self._lock_wait, self._driver_task):
            if extra is not None:
                extra.cancel()

    # -- events in ----------------------------------------------------------------
    def on_watch_event(self, ev: WatchEvent) -> None:
        """The watcher's callback (on the event loop)."""
        if ev.overflow:
            log.warning("inotify queue overflowed; events were lost, rescanning everything")
            self.poke(full=True)
            return
        handler = self.tag_handlers.get(ev.tag)
        if handler is not None:
            handler(ev)
            return
        if ev.tag in PACKAGE_MANAGER_TAGS:
            self.debouncer.activity()          # the long quiet period, for a while
        if lock_event(ev):
            self._lock_changed.set()
        if ev.tag == "modules" and "isdir" in ev.flags and ev.flags & {"create", "moved_to"}:
            # Watch a new kernel directory now, before its build link can
            # appear; the rescan that follows would be too late for that.
            self._add_kernel_watch(Path(ev.path))
        if relevant(ev):
            log.debug("change seen", tag=ev.tag, path=ev.path, flags=",".join(sorted(ev.flags)))
            self.poke()

    def _add_kernel_watch(self, path: Path) -> None:
        if self.watcher is not None:
            self.watcher.add(path, "kernel", False)

    def _update_watches(self, spec: dict) -> None:
        if self.watcher is not None:
            self.watcher.update({**spec, **self.extra_watches()})

    def poke(self, *, full: bool = False, now: bool = False) -> None:
        """Look again: after the debouncer's quiet time, or ``now``."""
        self.debouncer.poke(full=full, now=now)
        self.settled.clear()
        self._poked.set()

    # -- the scanner ----------------------------------------------------------------
    async def run(self) -> None:
        while True:
            deadline = self.debouncer.deadline()
            if deadline is None:
                self.settled.set()
                self.shared.wake.set()
                await self._poked.wait()
                self._poked.clear()
                continue
            delay = deadline - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._poked.wait()
                self._poked.clear()
                continue
            full = self.debouncer.take()
            # Whoever asked before this round learns how it went.
            waiters, self._scan_waiters = self._scan_waiters, []
            try:
                await self.wait_for_package_managers()
            except NvkmdError as e:
                log.error("giving up on this round", reason=e.message)
                _settle(waiters, NvkmdError(e.code, f"rescan not done: {e.message}"))
                continue
            try:
                await self.rescan(bool(full))
            except Exception as e:
                log.exception("rescan failed")
                _settle(waiters, e if isinstance(e, NvkmdError) else
                        NvkmdError(ErrorCode.INTERNAL, f"rescan failed: {type(e).__name__}: {e} "
                                   "(see the daemon's journal)"))
            else:
                _settle(waiters, None)

    async def rescan_now(self, wait_s: float = RESCAN_WAIT_S) -> None:
        """A full rescan now; returns once it is done, raises if it failed
        (NvkmdError), or Busy after ``wait_s`` (a package manager's
        transaction holds it back; it runs when the lock goes)."""
        fut = asyncio.get_running_loop().create_future()
        self._scan_waiters.append(fut)
        self.poke(full=True, now=True)
        try:
            async with asyncio.timeout(wait_s):
                await asyncio.shield(fut)
        except TimeoutError:
            held = self.shared.waiting_for
            raise NvkmdError(ErrorCode.BUSY, f"the rescan has not run within {wait_s:g}s"
                             + (f": waiting for {held}" if held else "")
                             + "; it runs as soon as it can") from None

    async def rescan(self, full: bool) -> None:
        sh = self.shared
        if full:
            log.info("full rescan")
        old = sh.snapshot
        # Watch first, then look: whatever appears after the look is seen by a watch.
        self._update_watches(await asyncio.to_thread(watch_spec, sh.paths, sh.config, old))
        snap = await asyncio.to_thread(scan, sh.paths, sh.config)
        if old is None or snap.source.path != old.source.path:
            self._update_watches(await asyncio.to_thread(watch_spec, sh.paths, sh.config, snap))
        changes = diff(old, snap)
        for c in changes:
            log.info(c.kind, **given(kernel=c.kernel, old=c.old, new=c.new))
        if snap.source.error and (old is None or old.source.error != snap.source.error):
            log.error("no usable driver source", error=snap.source.error)
        sh.snapshot = snap
        self._refresh_driver()
        self._apply_plan(changes, initial=old is None)
        if old is None or old.source != snap.source or old.kernels != snap.kernels \
                or old.next_boot != snap.next_boot:
            # Kernels' states may have changed (a module now current): tell
            # subscribers, so the STATUS line and D-Bus properties follow.
            sh.emit_state()
        log.debug("rescan done", kernels=len(snap.kernels),
                  active=len(sh.store.active()) if sh.store else 0,
                  **given(source=snap.source.version))

    def _refresh_driver(self) -> None:
        """Re-read versions and Secure Boot beside the rescan, never delaying it."""
        sh = self.shared

        async def refresh() -> None:
            try:
                sh.driver = await asyncio.to_thread(driver_info, sh.paths, sh.config)
            except Exception:   # a report must never stop the daemon from building
                log.exception("cannot read the driver's versions and Secure Boot state")
        self._driver_task = asyncio.get_running_loop().create_task(refresh())

    def _apply_plan(self, changes: list[Change], initial: bool) -> None:
        sh = self.shared
        assert sh.store and sh.snapshot
        snap = sh.snapshot
        p = plan(snap, sh.store.active_pairs(), sh.store.past(), changes, initial)
        for job_id, cause in p.drop:
            if self._drop_running(job_id, cause):
                continue
            job = sh.store.finish(job_id, "cancelled", cause=cause)
            log.info("job dropped", job=job_id, kernel=job.kernel, cause=cause)
            sh.emit(JobFinished(job_id, job.kernel, "cancelled", cause, "", ""))
        for kernel, reason in p.add:
            job, created = sh.store.enqueue(kernel, snap.source.version, reason=reason)
            if created:
                log.info("job queued", job=job.id, kernel=kernel, version=job.source_version,
                         reason=reason)
                sh.emit(JobQueued(job))
        if p.add:
            sh.wake.set()

    # -- package managers ----------------------------------------------------------
    async def wait_for_package_managers(self) -> float:
        """Shared by the scanner and the builder: one wait, logged once."""
        if self._lock_wait is None or self._lock_wait.done():
            self._lock_wait = asyncio.create_task(self._lock_wait_run())
        return await asyncio.shield(self._lock_wait)

    async def _lock_wait_run(self) -> float:
        sh = self.shared

        async def sleep(seconds: float) -> None:
            # Back off, but wake at once when a lock file is closed.
            self._lock_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._lock_changed.wait()

        def on_wait(held: list[pkgdb.Holder]) -> None:
            self.debouncer.activity()    # a transaction is on: its next events wait longer
            sh.waiting_for = ", ".join(h.describe() for h in held)
            sh.refresh_state()

        try:
            waited = await pkgdb.wait_until_free(sh.paths, sh.config.daemon_lock_wait_max_s,
                                                 sleep=sleep, on_wait=on_wait)
        finally:
            if sh.waiting_for:
                sh.waiting_for = ""
                sh.refresh_state()
        if waited > 0.01:
            log.info("package managers done", waited_s=round(waited, 2))
        return waited

    async def package_managers_busy(self) -> bool:
        return bool(await asyncio.to_thread(pkgdb.holders, self.shared.paths))
