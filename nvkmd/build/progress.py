"""How far along a build is, from the lines Kbuild prints.  Pure logic.

A person reads the percent as "how much of the wait is behind me", so:
- it never goes backwards, and neither does the phase (Kbuild links the
  composite objects, then compiles each module's ``.mod.o``, then links
  the ``.ko``: the phase shown stays "link");
- the totals are the tree's own: conftests as NVIDIA's Kbuild defines them
  (``count-lines.mk``'s compile tests plus Kbuild's header presence tests
  and sanity checks, which it does not count), or what the previous build of the same driver
  version on this machine actually printed (``Learned``, build/history.py);
- with a previous build, each kind of line weighs what it took then, so
  the percent follows time and the ETA is that build's duration less the
  time spent (``eta_s``, -1 when there is no previous build).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

PHASES = ("prepare", "conftest", "compile", "link", "install", "done")
RANK = {p: i for i, p in enumerate(PHASES)}
KINDS = ("conftest", "compile", "link")


@dataclasses.dataclass(frozen=True)
class Counts:
    conftests: int
    objects: int
    modules: int

    @property
    def total(self) -> int:
        return self.conftests + self.objects + self.modules


@dataclasses.dataclass(frozen=True)
class Learned:
    """What the previous successful build of a driver version printed, and
    how long each kind of line went on (seconds), on this machine."""
    lines: dict[str, int]
    seconds: dict[str, float]
    total_s: float

    def counts(self) -> Counts:
        return Counts(self.lines.get("conftest", 0), self.lines.get("compile", 0),
                      self.lines.get("link", 0))


@dataclasses.dataclass(frozen=True)
class Progress:
    phase: str
    percent: int
    eta_s: float = -1.0          # seconds left, from the previous build; -1: unknown


def parse_counts(text: str) -> Counts | None:
    """``conftests:N objects:N modules:N`` as printed by ``count-lines.mk``."""
    m = re.search(r"conftests:(\d+)\s+objects:(\d+)\s+modules:(\d+)", text)
    return Counts(*(int(g) for g in m.groups())) if m else None


# Kbuild's own lists whose every word prints a `` CONFTEST: <word>`` line:
# count-lines.mk reads the module Kbuild files, not Kbuild, and leaves them out.
KBUILD_CONFTEST_LISTS = ("NV_HEADER_PRESENCE_TESTS", "BUILD_SANITY_CHECKS")


def kbuild_conftests(kbuild: str) -> int:
    """How many conftests NVIDIA's top-level Kbuild itself defines (header
    presence tests and build sanity checks), as make would expand the lists."""
    text = kbuild.replace("\\\n", " ")
    total = 0
    for name in KBUILD_CONFTEST_LISTS:
        n = 0
        for m in re.finditer(rf"^{name}\s*(\+=|:=|\?=|=)(.*)$", text, re.M):
            words = len(m.group(2).split("#")[0].split())
            n = n + words if m.group(1) == "+=" else words
        total += n
    return total


_MARKERS = (
    (" CONFTEST: ", "conftest"),
    ("  CC [M] ", "compile"),
    ("  LD [M] ", "link"),
)


def kind_of(line: str) -> str | None:
    for marker, kind in _MARKERS:
        if line.startswith(marker):
            return kind
    return None


class ProgressTracker:
    """Feed build output lines; get a new ``Progress`` whenever the phase
    or the percent changes.

    Each kind advances its share of the whole by one line of its total
    (capped there: Kbuild may print more lines than a tree declares), and
    the percent stays below 100 until the build has ended.
    """

    def __init__(self, counts: Counts | None, learned: Learned | None = None,
                 clock: Callable[[], float] | None = None):
        if learned is not None and learned.counts().total:
            counts = learned.counts()
        self.counts = counts or Counts(0, 0, 0)
        self.learned = learned
        self.clock = clock
        self.started = clock() if clock else 0.0
        self.seen = dict.fromkeys(KINDS, 0)
        # Time since the previous counted line, credited to this line's kind.
        self.spent = dict.fromkeys(KINDS, 0.0)
        self.prev = self.started
        limits = {"conftest": self.counts.conftests, "compile": self.counts.objects,
                  "link": self.counts.modules}
        self.limits = limits
        spent = learned.seconds if learned else {}
        # A kind's weight: the time it took last time, else its line count.
        if spent and sum(spent.get(k, 0.0) for k in KINDS) > 0:
            self.weights = {k: max(spent.get(k, 0.0), 0.0) if limits[k] else 0.0 for k in KINDS}
        else:
            self.weights = {k: float(limits[k]) for k in KINDS}
        self.current = Progress("prepare", 0)

    def fraction(self) -> float:
        total = sum(self.weights.values())
        if not total:
            return 0.0
        return sum(w * min(self.seen[k], self.limits[k]) / self.limits[k]
                   for k, w in self.weights.items() if self.limits[k]) / total

    def eta(self) -> float:
        if self.learned is None or self.clock is None or self.learned.total_s <= 0:
            return -1.0
        return max(self.learned.total_s - (self.clock() - self.started), 0.0)

    def feed(self, line: str) -> Progress | None:
        kind = kind_of(line)
        if kind is None:
            return None
        self.seen[kind] += 1
        if self.clock is not None:
            now = self.clock()
            self.spent[kind] += now - self.prev
            self.prev = now
        percent = min(99, int(100 * self.fraction()))
        phase = kind if RANK[kind] >= RANK[self.current.phase] else self.current.phase
        return self.set(Progress(phase, max(percent, self.current.percent)))

    def set(self, progress: Progress) -> Progress | None:
        """The new progress if it shows something new (phase or percent)."""
        if (progress.phase, progress.percent) == (self.current.phase, self.current.percent):
            return None
        if progress.eta_s < 0:
            progress = dataclasses.replace(progress, eta_s=self.eta())
        self.current = progress
        return progress

    def learned_now(self) -> Learned:
        """What this build printed and how long each kind went on: the next
        build of the same driver version learns from it."""
        end = self.clock() if self.clock else 0.0
        return Learned(dict(self.seen), dict(self.spent), end - self.started)
