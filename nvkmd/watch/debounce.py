"""Collapsing a burst of filesystem events into one rescan."""

from __future__ import annotations

import time
from typing import Callable


class Debouncer:
    """Collapses a burst of events into one rescan.

    Each event pushes the deadline ``quiet_s`` into the future, but never
    past ``max_delay_s`` after the first event of the burst, so a steady
    stream of events cannot postpone the rescan for ever.  ``full`` (inotify
    overflowed: events were lost) is remembered until the rescan is taken.
    The clock is injected, so this is tested without waiting.
    """

    def __init__(self, quiet_s: float, max_delay_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.quiet_s = quiet_s
        self.max_delay_s = max(max_delay_s if max_delay_s is not None else quiet_s * 5, quiet_s)
        self.clock = clock
        self._first: float | None = None
        self._last: float | None = None
        self._full = False
        self._now = False

    def poke(self, *, full: bool = False, now: bool = False) -> None:
        t = self.clock()
        if self._first is None:
            self._first = t
        self._last = t
        self._full |= full
        self._now |= now

    @property
    def pending(self) -> bool:
        return self._first is not None

    def deadline(self) -> float | None:
        """When the rescan is due (clock time), None when nothing is pending."""
        if self._first is None or self._last is None:
            return None
        if self._now:
            return self._first
        return min(self._last + self.quiet_s, self._first + self.max_delay_s)

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
        return full
