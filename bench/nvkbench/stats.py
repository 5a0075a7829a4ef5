"""Summaries and the one-line format of a figure (pure).

A figure's line is ``P<n> <name>: <value> (<ratio> vs <anchor>)``.  The
value is the median of several runs; the min and max follow in brackets
when they differ by more than 20%.  A figure that cannot run says
``n/a (<reason>)`` in place of the value and keeps the format.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from typing import Any

SPREAD = 1.2          # max/min above this: show the range
LINE_RE = re.compile(r"^P(?P<n>[1-9][0-9]*) (?P<name>[^:]+): (?P<value>.+) \((?P<ratio>\S+) vs (?P<anchor>.+)\)$")


@dataclasses.dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    n: int

    @property
    def spread(self) -> bool:
        if self.n < 2:
            return False
        if self.low <= 0:
            return self.high > 0
        return self.high / self.low > SPREAD

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}


def summarize(samples: list[float]) -> Summary:
    if not samples:
        raise ValueError("no samples")
    return Summary(statistics.median(samples), min(samples), max(samples), len(samples))


def _num(x: float, digits: int) -> str:
    return f"{x:.{digits}f}"


def fmt(s: Summary, unit: str, digits: int = 2) -> str:
    """``3.10 s`` or ``3.10 s [2.40..4.00]`` when the runs spread."""
    text = f"{_num(s.median, digits)} {unit}".rstrip()
    if s.spread:
        text += f" [{_num(s.low, digits)}..{_num(s.high, digits)}]"
    return text


def ratio(value: float, anchor: float) -> str:
    """``0.35x``: the value as a multiple of the anchor."""
    if anchor <= 0:
        return "n/a"
    r = value / anchor
    return f"{r:.2f}x" if r >= 0.01 else f"{r:.4f}x"


@dataclasses.dataclass
class Figure:
    n: int
    name: str
    value: str
    ratio: str
    anchor: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def measured(self) -> bool:
        return not self.value.startswith("n/a")

    def line(self) -> str:
        return f"P{self.n} {self.name}: {self.value} ({self.ratio} vs {self.anchor})"

    def to_dict(self) -> dict[str, Any]:
        return {"figure": f"P{self.n}", "name": self.name, "line": self.line(), "value": self.value,
                "ratio": self.ratio, "anchor": self.anchor, "measured": self.measured, "data": self.data,
                "notes": self.notes}


def unavailable(n: int, name: str, reason: str, anchor: str, **data: Any) -> Figure:
    """A figure that could not be measured: the reason, in the same format."""
    reason = " ".join(reason.split())[:300]
    return Figure(n, name, f"n/a ({reason})", "n/a", anchor, dict(data))
