"""What every figure shares in one run: the mode, the workspace, the
source, the kernel, and the real-system pieces (set up once, put back once)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .env import BenchError, SourceTree, Workspace, header_kernels


@dataclasses.dataclass
class Context:
    quick: bool
    dry: bool
    ws: Workspace
    reps: int
    idle_minutes: float
    jobs: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    _source: SourceTree | None = None
    _tiny: SourceTree | None = None
    _kernel: str = ""
    guard: object | None = None          # realsys.SystemGuard, once the real system is touched
    module: object | None = None         # realsys.BenchModule, once registered
    _service: object | None = None       # service.Service, once started

    @property
    def source(self) -> SourceTree:
        if self._source is None:
            self._source = SourceTree(self.ws, nvidia=not self.quick)
        return self._source

    @property
    def tiny_source(self) -> SourceTree:
        """The tiny tree, in every mode (figures about detection, not building)."""
        if self.quick:
            return self.source
        if self._tiny is None:
            self._tiny = SourceTree(self.ws, nvidia=False)
        return self._tiny

    @property
    def kernel(self) -> str:
        """The kernel every build figure uses: the oldest with headers (Debian's
        NVIDIA 535 source does not build on the newest 6.1 headers here)."""
        if not self._kernel:
            ks = header_kernels()
            if not ks:
                raise BenchError("no kernel headers installed (scripts/setup installs them)")
            self._kernel = ks[0]
        return self._kernel

    def log_file(self, name: str) -> Path:
        return self.ws.dir / f"{name}.log"

    def real_system(self):
        """The guard that puts the real system back (created on first use)."""
        from .realsys import SystemGuard
        if self.guard is None:
            self.guard = SystemGuard()
        return self.guard

    def dkms_module(self):
        from .realsys import BenchModule
        self.real_system()
        if self.module is None:
            self.module = BenchModule(self.source, self.jobs)
        return self.module

    def service(self):
        """The daemon at rest shared by P4, P5, P6 and P8 (started on first use)."""
        from .service import Service
        if self._service is None:
            self._service = Service(self)
        return self._service

    def close(self) -> None:
        if self._service is not None:
            self._service.close()
        if self.module is not None:
            self.module.close()
        if self.guard is not None:
            self.guard.restore()
