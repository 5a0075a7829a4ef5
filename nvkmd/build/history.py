"""What the last successful build of each driver version printed and how
long it took, on this machine: the next build's progress totals, weights
and ETA (progress.Learned).  One small JSON file in the state dir, written
atomically; a missing or damaged file only means "no previous build"."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

from nvkmd.build.progress import KINDS, Learned

FILE = "build-history.json"
KEEP = 8                 # driver versions remembered (a machine has one or two at a time)


def _path(state_dir: Path) -> Path:
    return state_dir / FILE


def _load(state_dir: Path) -> dict:
    try:
        data = json.loads(_path(state_dir).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _number(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        return None
    return float(v)


def previous(state_dir: Path, version: str, backend: str = "kbuild") -> Learned | None:
    """The last successful build of ``version`` with ``backend``, or None."""
    e = _load(state_dir).get(f"{backend}:{version}")
    if not isinstance(e, dict):
        return None
    lines, seconds = e.get("lines"), e.get("seconds")
    total = _number(e.get("total_s"))
    if not isinstance(lines, dict) or not isinstance(seconds, dict) or total is None:
        return None
    ls = {k: int(n) for k in KINDS if (n := _number(lines.get(k))) is not None}
    ss = {k: s for k in KINDS if (s := _number(seconds.get(k))) is not None}
    if not sum(ls.values()):
        return None
    return Learned(ls, ss, total)


def record(state_dir: Path, version: str, learned: Learned, at: float,
           backend: str = "kbuild") -> None:
    """Remember a successful build; never fails the build (best effort)."""
    data = _load(state_dir)
    data[f"{backend}:{version}"] = {"lines": learned.lines, "seconds": learned.seconds,
                                   "total_s": learned.total_s, "at": at}
    newest = sorted(data, key=lambda k: _number((data[k] or {}).get("at")) or 0.0
                    if isinstance(data[k], dict) else 0.0)[-KEEP:]
    data = {k: data[k] for k in newest}
    path = _path(state_dir)
    tmp = path.with_name(f".{FILE}.{os.getpid()}.tmp")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
