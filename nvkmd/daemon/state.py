"""What the parts of the daemon share: its view of the machine (the last
scan), the queue, what it is doing, and who listens.

The intake writes the snapshot, the builder the current job and its
progress; everyone may emit events.  The daemon's one state
(``model.DAEMON_STATES``) follows from these facts, never set by hand.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import structlog

from nvkmd.build.progress import Progress
from nvkmd.config import Config
from nvkmd.detect.snapshot import Snapshot
from nvkmd.errors import ErrorCode, NvkmdError, invalid
from nvkmd.jobs.store import JobStore
from nvkmd.model import DriverInfo, Event, JobInfo, StateChanged
from nvkmd.paths import Paths

log = structlog.get_logger()


def given(**kw: object) -> dict[str, object]:
    """Only the log fields that have a value: the journal line stays short."""
    return {k: v for k, v in kw.items() if v not in (None, "")}


class Shared:
    def __init__(self, paths: Paths, config: Config):
        self.paths = paths
        self.config = config
        self.store: JobStore | None = None          # opened by Core.start
        self.snapshot: Snapshot | None = None       # the last scan (the intake's)
        # Versions and Secure Boot for status (versions.driver_info), per rescan.
        self.driver = DriverInfo()
        self.state = "starting"
        self.waiting_for = ""                       # the package managers the intake waits for
        self.current: JobInfo | None = None         # the builder's running job
        self.progress = Progress("prepare", 0)
        self.started = False
        self.stopping = False
        self.wake = asyncio.Event()                 # the builder may have work
        self._subscribers: list[Callable[[Event], None]] = []

    def need_store(self) -> JobStore:
        if self.store is None:
            raise NvkmdError(ErrorCode.BUSY, "the daemon is starting")
        return self.store

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        if not callable(callback):
            raise invalid("subscribe: expected a callable")
        self._subscribers.append(callback)

    def emit(self, event: Event) -> None:
        for cb in list(self._subscribers):
            try:
                cb(event)
            except Exception:
                log.exception("event subscriber failed", subscriber=repr(cb))

    def refresh_state(self) -> None:
        """The daemon's state follows from what it is doing; a build running
        while the scanner waits for a package manager is still "building"."""
        if self.stopping:
            state = "stopping"
        elif not self.started:
            state = "starting"
        elif self.current is not None:
            state = "building"
        elif self.waiting_for:
            state = "waiting-for-lock"
        else:
            state = "idle"
        if state != self.state:
            self.state = state
            log.debug("daemon state", state=state)
        self.emit_state()

    def emit_state(self) -> None:
        cur = self.current
        self.emit(StateChanged(self.state, cur.id if cur else 0,
                               self.progress.phase if cur else "",
                               self.progress.percent if cur else 0,
                               self.snapshot.source.version if self.snapshot else ""))
