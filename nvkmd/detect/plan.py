"""Which jobs to add and drop for a snapshot: a pure decision."""

from __future__ import annotations

import dataclasses
from typing import Iterable

from nvkmd.detect.diff import Change
from nvkmd.detect.snapshot import Snapshot


@dataclasses.dataclass(frozen=True)
class ActiveJob:
    id: int
    kernel: str
    source_version: str
    running: bool


@dataclasses.dataclass(frozen=True)
class PastJob:
    """The newest finished job for a (kernel, source version) pair."""
    result: str
    build_key: str              # "" when the job does not hold back a retry


@dataclasses.dataclass(frozen=True)
class Plan:
    add: list[tuple[str, str]]          # (kernel, reason)
    drop: list[tuple[int, str]]         # (job id, cause)


def plan(snap: Snapshot, active: Iterable[ActiveJob], past: dict[tuple[str, str], PastJob],
         changes: list[Change], initial: bool = False) -> Plan:
    """Pure: which jobs to drop and which kernels to queue.

    A kernel is queued when it has headers, its module is not current and
    no job for it with this source version is active; unless the last job
    for exactly these inputs (``build_key``) already ran: a failed pair is
    not retried in a loop, only when the headers or the source change (the
    key changes), when the kernel or its headers come back (removed and
    installed again, perhaps with its modules cleaned up meanwhile), or on
    request.  ``initial``: the changes are the first scan's, where every
    kernel is "added"; that is no reason to retry anything.
    """
    version = snap.source.version
    drop: list[tuple[int, str]] = []
    kept: set[tuple[str, str]] = set()
    for job in active:
        k = snap.kernels.get(job.kernel)
        if k is None:
            drop.append((job.id, "kernel removed"))
        elif not k.headers:
            drop.append((job.id, "headers removed"))
        elif not version:
            drop.append((job.id, f"no driver source: {snap.source.error}"))
        elif job.source_version != version:
            drop.append((job.id, f"superseded by source version {version}"))
        else:
            kept.add((job.kernel, job.source_version))
    add: list[tuple[str, str]] = []
    if not version:
        return Plan(add, drop)
    why: dict[str, str] = {}
    for c in changes:
        if c.kernel and c.kind.endswith("-added"):
            why.setdefault(c.kernel, c.describe())      # "kernel added" over "headers added"
    source_change = next((c.describe() for c in changes if c.kind == "source-changed"), "")
    for r in snap.releases():
        k = snap.kernels[r]
        if not k.headers or k.current or (r, version) in kept:
            continue
        last = past.get((r, version))
        came_back = r in why and not initial
        if last is not None and last.build_key and last.build_key == k.build_key and not came_back:
            continue
        add.append((r, why.get(r) or source_change or "module missing or out of date"))
    return Plan(add, drop)
