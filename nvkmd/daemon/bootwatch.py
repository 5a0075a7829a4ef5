"""The daemon's answer to "will the next boot have a working driver?", and
the boot guard run whenever that answer's inputs change.

``BootWatch`` listens to the core's own events: a rescan (the boot loader's
files are watched, so a changed default arrives as one), a job queued,
progressing or finished.  Each time it recomputes ``model.NextBoot`` and
emits ``NextBootChanged`` when anything in it changed.  After a rescan or a
finished job it runs one guard round (``install.bootguard.run``) in a
worker thread, one at a time, skipped when nothing it reads has changed.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from nvkmd.config import BOOT_GUARDS
from nvkmd.daemon.state import Shared
from nvkmd.errors import NvkmdError, invalid
from nvkmd.inspect.nextboot import NextBootChoice
from nvkmd.install import bootguard
from nvkmd.model import (Event, JobFinished, JobProgress, JobQueued, NextBoot, NextBootChanged,
                         StateChanged, next_boot_of)

log = structlog.get_logger()


class BootWatch:
    def __init__(self, shared: Shared, kernels):
        self.sh = shared
        self._kernels = kernels                # Requests.kernels
        self.current = NextBoot("", False, "unknown", "the daemon is starting")
        self.report: bootguard.GuardReport | None = None
        self._choice: NextBootChoice | None = None     # after the guard changed the loader
        self._choice_at = 0.0
        self._last_inputs: object = None
        self._task: asyncio.Task | None = None
        self._again = False
        self._said: tuple = ()
        shared.subscribe(self.on_event)

    # -- the guard's mode: the configuration, or what SetBootGuard chose ---------
    def mode(self) -> str:
        try:
            chosen = self.sh.paths.bootguard_mode.read_text().strip()
        except OSError:
            chosen = ""
        return chosen if chosen in BOOT_GUARDS else self.sh.config.boot_guard

    def set_mode(self, mode: str) -> str:
        if not isinstance(mode, str) or (mode and mode not in BOOT_GUARDS):
            raise invalid(f"boot guard: expected one of {', '.join(BOOT_GUARDS)} or \"\" "
                          f"(the configuration's), got {mode!r}")
        f = self.sh.paths.bootguard_mode
        if mode:
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_name(f.name + ".tmp")
            tmp.write_text(mode + "\n")
            tmp.replace(f)
        else:
            f.unlink(missing_ok=True)
        now = self.mode()
        log.warning("boot guard mode set", mode=now, by="SetBootGuard" if mode else "configuration")
        self._last_inputs = None
        self.schedule_guard()
        self.update()
        return f"boot guard: {now}" + ("" if mode else " (from the configuration)")

    # -- events -------------------------------------------------------------------
    def on_event(self, event: Event) -> None:
        if isinstance(event, NextBootChanged):
            return
        if isinstance(event, JobProgress) and event.kernel != self.current.kernel:
            return
        self.update()
        if isinstance(event, (StateChanged, JobFinished, JobQueued)):
            self.schedule_guard()

    def _choice_now(self) -> NextBootChoice | None:
        snap = self.sh.snapshot
        if snap is None:
            return None
        if self._choice is not None and self._choice_at > snap.taken_at:
            return self._choice
        return snap.next_boot

    def update(self) -> None:
        choice = self._choice_now()
        if choice is None or self.sh.store is None:
            return
        try:
            kernels = self._kernels()
        except NvkmdError:
            return
        r = self.report
        pin = r.pin if r else bootguard.load_record(self.sh.paths)
        nb = next_boot_of(choice.kernel, kernels, guess=choice.guess, loader=choice.loader,
                          source=choice.source, one_shot=choice.one_shot, note=choice.note,
                          guard=self.mode(), guard_note=r.message if r else "",
                          pinned=pin.target if pin else "", undo=pin.undo if pin else "")
        if nb == self.current:
            return
        self.current = nb
        key = (nb.kernel, nb.ready, nb.reason, nb.cause)
        if key != self._said:
            self._said = key
            (log.info if nb.ready else log.warning)(
                "next boot", kernel=nb.kernel, ready=nb.ready, detail=nb.detail,
                loader=nb.loader, source=nb.source, one_shot=nb.one_shot or None)
        self.sh.emit(NextBootChanged(nb))

    # -- the guard ------------------------------------------------------------------
    def schedule_guard(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        try:
            self._task = asyncio.get_running_loop().create_task(self._guard())
        except RuntimeError:          # no loop (a test calling in directly)
            pass

    async def _guard(self) -> None:
        while True:
            self._again = False
            try:
                await self._round()
            except Exception:      # the guard must never take the daemon down
                log.exception("boot guard round failed")
            if not self._again:
                return

    async def _round(self) -> None:
        snap = self.sh.snapshot
        if snap is None or self.sh.store is None:
            return
        try:
            states = {k.release: k.state for k in self._kernels()}
        except NvkmdError:
            return
        mode = self.mode()
        inputs = (mode, snap.taken_at, tuple(sorted(states.items())))
        if inputs == self._last_inputs:
            return
        self._last_inputs = inputs
        report = await asyncio.to_thread(bootguard.run, self.sh.paths, mode, states)
        old = self.report
        self.report = report
        if report.action != "none":
            self._choice, self._choice_at = report.choice, time.time()
        if report.message and (old is None or old.message != report.message):
            log.info("boot guard", mode=mode, action=report.action, note=report.message)
        self.update()

    async def boot_try(self, kernel: str) -> str:
        states = {k.release: k.state for k in self._kernels()}
        return await asyncio.to_thread(bootguard.boot_try, self.sh.paths, kernel, states)

    def reload(self) -> None:
        """boot.guard may have changed: decide again."""
        self._last_inputs = None
        self.schedule_guard()
        self.update()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
