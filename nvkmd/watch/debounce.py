"""Collapsing a burst of filesystem events into one rescan.

Adaptive: the configured quiet period (``daemon.debounce_s``) is for a
machine where a package manager is at work, whose transaction touches
kernel directories for many seconds.  When none is seen, a kernel that
appears is looked at after ``calm_s`` (0.2 s): event to build start well
under half a second (issue 16, P10).  Either way no build starts while a
package manager holds its lock: the scanner waits for the locks before it
looks (daemon/intake.py), whatever the quiet period was.
"""

from __future__ import annotations

import time
from typing import Callable

CALM_S = 0.2              # the quiet period when no package manager is seen


class Debouncer:
    """Collapses a burst of events into one rescan.

    Each event pushes the deadline ``quiet_s`` into the future, but never
    past ``max_delay_s`` after the first event of the burst, so a steady
    stream of events cannot postpone the rescan for ever.  ``full`` (inotify
    overflowed: events were lost) is remembered until the rescan is taken.
    The clock is injected, so this is tested without waiting.

    With ``calm_s`` (adaptive), the quiet period is ``calm_s`` unless
    package-manager activity was seen (``activity()``: an event on a
    package manager's files, a lock holder found) within ``busy_for_s``,
    or the burst is a bulk operation (``bulk_events`` events or more, a
    tree being copied by hand): then it is ``quiet_s``.
    """

    BUSY_FOR_S = 30.0       # a transaction's quiet stretches (an initramfs being made)
    BULK_EVENTS = 50

    def __init__(self, quiet_s: float, max_delay_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, calm_s: float | None = None):
        self.quiet_s = quiet_s
        self.max_delay_s = max(max_delay_s if max_delay_s is not None else quiet_s * 5, quiet_s)
        self.clock = clock
        self.calm_s = calm_s
        self._first: float | None = None
        self._last: float | None = None
        self._full = False
        self._now = False
        self._events = 0
        self._activity: float | None = None

    def poke(self, *, full: bool = False, now: bool = False) -> None:
        t = self.clock()
        if self._first is None:
            self._first = t
        self._last = t
        self._events += 1
        self._full |= full
        self._now |= now

    def activity(self) -> None:
        """A package manager is (or was just) at work."""
        self._activity = self.clock()

    def busy(self) -> bool:
        """Is the long quiet period the one to use now?"""
        if self.calm_s is None or self._events >= self.BULK_EVENTS:
            return True
        return self._activity is not None and self.clock() - self._activity < self.BUSY_FOR_S

    def quiet_now(self) -> float:
        return self.quiet_s if self.busy() else min(self.calm_s or 0.0, self.quiet_s)

    @property
    def pending(self) -> bool:
        return self._first is not None

    def deadline(self) -> float | None:
        """When the rescan is due (clock time), None when nothing is pending."""
        if self._first is None or self._last is None:
            return None
        if self._now:
            return self._first
        return min(self._last + self.quiet_now(), self._first + self.max_delay_s)

    def due(self) -> bool:
        d = self.deadline()
        return d is not None and self.clock() >= d

    def take(self) -> bool | None:
        """If due: reset and return whether a full rescan was asked for
        (False for an ordinary one); None when not due."""
        if not self.due():
            return None
        full = self._full
        self._first = self._last = None
        self._full = self._now = False
        self._events = 0
        return full
