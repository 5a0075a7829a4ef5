"""What changed between two snapshots."""

from __future__ import annotations

import dataclasses

from nvkmd.detect.snapshot import Snapshot, SourceScan
from nvkmd.system.kernels import release_key


@dataclasses.dataclass(frozen=True)
class Change:
    kind: str        # kernel-added kernel-removed headers-added headers-removed source-changed
    kernel: str = ""
    old: str = ""    # source-changed: the old and new "version (digest)"
    new: str = ""

    def describe(self) -> str:
        if self.kind == "source-changed":
            return f"source changed from {self.old or 'none'} to {self.new or 'none'}"
        return f"{self.kind.replace('-', ' ')}: {self.kernel}"


def _source_id(s: SourceScan) -> str:
    return f"{s.version} ({s.digest})" if s.version else ""


def diff(old: Snapshot | None, new: Snapshot) -> list[Change]:
    """Pure: the changes from ``old`` (None: nothing known yet) to ``new``."""
    before = old.kernels if old else {}
    out: list[Change] = []
    for r in sorted(set(before) | set(new.kernels), key=release_key):
        a, b = before.get(r), new.kernels.get(r)
        if a is None and b is not None:
            out.append(Change("kernel-added", r))
            if b.headers:
                out.append(Change("headers-added", r))
        elif a is not None and b is None:
            out.append(Change("kernel-removed", r))
        elif a is not None and b is not None and a.headers != b.headers:
            out.append(Change("headers-added" if b.headers else "headers-removed", r))
    old_id = _source_id(old.source) if old else ""
    new_id = _source_id(new.source)
    if old is not None and old_id != new_id:
        out.append(Change("source-changed", old=old_id, new=new_id))
    return out
