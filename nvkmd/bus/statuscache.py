"""GetStatus's reply body, kept per state version.

GetStatus is what every client polls, and a desktop may have several
polling at once: with the body kept until something changes, a flood of
calls while nothing happens costs a lookup each, not a walk over every
kernel and job.  The service calls ``changed()`` for every core event and
after every privileged method (``answered``), the two ways the status changes.  A few
fields change without an event (the driver's versions read after a
rescan, preflight bookkeeping): ``max_age_s`` bounds how old they can be.
"""

from __future__ import annotations

import time
from typing import Callable

from nvkmd.dbusconn import marshallable


class StatusCache:
    def __init__(self, compute: Callable[[], list], max_age_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.compute = compute
        self.max_age_s = max_age_s
        self.clock = clock
        self.version = 0
        self.computed = 0                # how often ``compute`` ran (tests, bench)
        self._kept: tuple[int, float, list] | None = None

    def changed(self) -> None:
        self.version += 1

    def answered(self, action: str) -> None:
        """A method was answered; ``action``, its polkit action, is "" for
        the methods that change nothing."""
        if action:
            self.changed()

    def get(self) -> list:
        now = self.clock()
        kept = self._kept
        if kept is not None and kept[0] == self.version and now - kept[1] < self.max_age_s:
            return kept[2]
        version = self.version          # a change while computing makes the next call compute
        # May raise (the daemon is starting): nothing is kept.  Made safe for
        # the writer once here, not on every reply (dbusconn.marshallable).
        body = marshallable(self.compute())
        self.computed += 1
        self._kept = (version, now, body)
        return body
