"""The preflights' memory: ``<statedir>/preflight.json`` holds each result
by (kernel package version, driver version), and the holds nvkmd placed.
Unreadable means start over: every result can be computed again."""

from __future__ import annotations

import json
import os
from pathlib import Path

from nvkmd.verdict import PreflightResult

MAX_RESULTS = 200            # kept results; the oldest go first


class ResultStore:
    """``preflight.json``: results by key, and the holds nvkmd placed."""

    def __init__(self, path: Path):
        self.path = path
        self.results: dict[str, dict] = {}
        # candidate key -> {"package", "version", "packages"}: what nvkmd holds
        self.held: dict[str, dict] = {}
        try:
            data = json.loads(path.read_text())
            self.results = {k: v for k, v in data.get("results", {}).items() if isinstance(v, dict)}
            self.held = {k: v for k, v in data.get("held", {}).items()
                         if isinstance(v, dict) and isinstance(v.get("packages"), list)}
        except (OSError, ValueError, AttributeError):
            pass      # none yet, or unreadable: start over, the results are recomputable

    def get(self, key: str) -> PreflightResult | None:
        d = self.results.get(key)
        try:
            return PreflightResult.from_dict(d) if d else None
        except (TypeError, ValueError):
            return None         # a hand-edited or older entry: computed again

    def put(self, r: PreflightResult) -> None:
        self.results.pop(r.key, None)
        self.results[r.key] = r.to_dict()
        while len(self.results) > MAX_RESULTS:
            self.results.pop(next(iter(self.results)))
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps({"results": self.results, "held": self.held}, indent=1))
        os.replace(tmp, self.path)
