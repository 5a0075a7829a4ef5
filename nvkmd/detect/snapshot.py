"""What one scan of the system found, as plain data."""

from __future__ import annotations

import dataclasses

from nvkmd.inspect.nextboot import NextBootChoice
from nvkmd.system.kernels import release_key
from nvkmd.system.source import Source


@dataclasses.dataclass(frozen=True)
class KernelScan:
    release: str
    headers: bool
    headers_package: str        # "" when no package database names it
    current: bool               # nvkmd's module was built from the current source
    build_key: str              # inputs fingerprint, "" without headers or source
    origin: str                 # where the installed nvidia module came from
    module_version: str


@dataclasses.dataclass(frozen=True)
class SourceScan:
    path: str = ""
    version: str = ""
    digest: str = ""
    kind: str = ""
    error: str = ""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    kernels: dict[str, KernelScan]
    source: SourceScan
    source_obj: Source | None = dataclasses.field(default=None, compare=False)
    boot_kernel: str | None = None
    taken_at: float = 0.0
    # What the boot loader starts next (boot_kernel is its kernel when the
    # loader named one, for the queue's order).
    next_boot: NextBootChoice | None = None

    def releases(self) -> list[str]:
        return sorted(self.kernels, key=release_key, reverse=True)
