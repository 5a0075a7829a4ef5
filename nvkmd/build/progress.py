"""How far along a build is, from the lines Kbuild prints.  Pure logic."""

from __future__ import annotations

import dataclasses
import re

PHASES = ("prepare", "conftest", "compile", "link", "install", "done")


@dataclasses.dataclass(frozen=True)
class Counts:
    conftests: int
    objects: int
    modules: int

    @property
    def total(self) -> int:
        return self.conftests + self.objects + self.modules


@dataclasses.dataclass(frozen=True)
class Progress:
    phase: str
    percent: int


def parse_counts(text: str) -> Counts | None:
    """``conftests:N objects:N modules:N`` as printed by ``count-lines.mk``."""
    m = re.search(r"conftests:(\d+)\s+objects:(\d+)\s+modules:(\d+)", text)
    return Counts(*(int(g) for g in m.groups())) if m else None


_KINDS = (
    (" CONFTEST: ", "conftest"),
    ("  CC [M] ", "compile"),
    ("  LD [M] ", "link"),
)


class ProgressTracker:
    """Feed build output lines; get a new ``Progress`` whenever it changes.

    Each counted line advances the overall percentage by one unit of
    ``counts.total``.  Kbuild compiles more objects than ``count-lines.mk``
    lists (only those that depend on conftest), so each kind is capped at
    its own count and the total never passes 99 before the build ends.
    """

    def __init__(self, counts: Counts | None):
        self.counts = counts or Counts(0, 0, 0)
        self.seen = {"conftest": 0, "compile": 0, "link": 0}
        self.current = Progress("prepare", 0)

    def _limit(self, kind: str) -> int:
        return {"conftest": self.counts.conftests, "compile": self.counts.objects,
                "link": self.counts.modules}[kind]

    def feed(self, line: str) -> Progress | None:
        for marker, kind in _KINDS:
            if line.startswith(marker):
                break
        else:
            return None
        self.seen[kind] += 1
        total = self.counts.total
        done = sum(min(n, self._limit(k)) for k, n in self.seen.items())
        percent = min(99, 100 * done // total) if total else 0
        return self.set(Progress(kind, max(percent, self.current.percent)))

    def set(self, progress: Progress) -> Progress | None:
        if progress == self.current:
            return None
        self.current = progress
        return progress
