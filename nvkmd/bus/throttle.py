"""Rate limits and change detection for what the bus emits.  Pure logic:
the caller passes the time in and schedules the flushes it is told about.

A build reports progress many times a second; clients need at most a few
updates a second, and none that repeat what they already know.  The newest
value is never lost: one held back is emitted when its interval ends.
"""

from __future__ import annotations

from typing import Any, Hashable


class Throttle:
    """Per key, at most one emission per ``interval`` seconds."""

    def __init__(self, interval: float):
        self.interval = interval
        self._last: dict[Hashable, float] = {}
        self._pending: dict[Hashable, Any] = {}

    def offer(self, key: Hashable, value: Any, now: float) -> bool:
        """True: emit ``value`` now.  False: it is held; call ``take`` at
        ``deadline(key)``."""
        last = self._last.get(key)
        if last is None or now - last >= self.interval:
            self._last[key] = now
            self._pending.pop(key, None)
            return True
        self._pending[key] = value
        return False

    def deadline(self, key: Hashable) -> float | None:
        if key not in self._pending:
            return None
        return self._last[key] + self.interval

    def take(self, key: Hashable, now: float) -> tuple[bool, Any]:
        """The held value, if its interval has ended (and it is then due)."""
        if key not in self._pending or now - self._last[key] < self.interval:
            return False, None
        self._last[key] = now
        return True, self._pending.pop(key)

    def forget(self, key: Hashable) -> None:
        self._last.pop(key, None)
        self._pending.pop(key, None)


class PropertyState:
    """The properties' current values and what clients were last told.

    ``update`` returns the changes to announce now: values equal to the last
    announced ones are dropped, and changes of the ``throttled`` properties
    are announced at most once per ``interval``; a held-back change is
    returned by ``flush`` once ``deadline()`` has passed.
    """

    def __init__(self, initial: dict[str, Any], interval: float,
                 throttled: frozenset[str] = frozenset()):
        self.current = dict(initial)
        self.announced = dict(initial)
        self.interval = interval
        self.throttled = throttled
        self._last_throttled = float("-inf")

    def _due(self, now: float) -> dict[str, Any]:
        changed = {k: v for k, v in self.current.items() if self.announced.get(k) != v}
        if any(k in self.throttled for k in changed):
            if now - self._last_throttled >= self.interval:
                self._last_throttled = now
            else:
                changed = {k: v for k, v in changed.items() if k not in self.throttled}
        self.announced.update(changed)
        return changed

    def update(self, values: dict[str, Any], now: float) -> dict[str, Any]:
        self.current.update(values)
        return self._due(now)

    def flush(self, now: float) -> dict[str, Any]:
        return self._due(now)

    def deadline(self) -> float | None:
        """When a held-back change becomes due, or None if none is held."""
        if any(self.announced.get(k) != self.current.get(k) for k in self.throttled):
            return self._last_throttled + self.interval
        return None
