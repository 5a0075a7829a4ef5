"""The build engine: one kernel, one source, one result a person can act on.

``Engine.build`` runs the whole pipeline for one kernel: preflight, the
per-kernel lock, a private build tree, ``make`` with progress, the product
cache, the atomic install and the log.  It reports through callbacks and
return values only; it knows nothing of queues, D-Bus or systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Callable

from nvkmd.build import diagnose, procs
from nvkmd.build.cache import ProductCache
from nvkmd.build.diagnose import Diagnosis
from nvkmd.build.kbuild import make_vars, prepare_tree, run_make
from nvkmd.build.locks import kernel_lock
from nvkmd.build.log import BuildLog
from nvkmd.build.progress import Progress
from nvkmd.config import Config
from nvkmd.detect.keys import build_key
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.install import dkms as dkms_backend
from nvkmd.install.modules import InstallError, install, recover
from nvkmd.paths import Paths
from nvkmd.system import dkms
from nvkmd.system.installed import module_is_current
from nvkmd.system.kernels import Kernel
from nvkmd.system.source import Source

ProgressFn = Callable[[Progress], None]
AfterInstall = Callable[[Kernel, Callable[[str], None]], None]


@dataclasses.dataclass(frozen=True)
class Outcome:
    kernel: str
    result: str                      # success | failed | cancelled | up-to-date
    version: str
    log: Path | None = None
    diagnosis: Diagnosis | None = None
    from_cache: bool = False
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.result in ("success", "up-to-date")


def _log_failure(e: NvkmdError) -> Diagnosis:
    """The diagnosis when the log itself could not be written."""
    if e.code is ErrorCode.DISK_FULL:
        d = diagnose.diagnose(f"{diagnose.MARK_NOSPACE} {e.message}")
        return dataclasses.replace(d, first_error=e.message)
    return Diagnosis("unknown", "cannot write the build log", "check the log directory", e.message)



class Phases:
    """Where a build's time went, for its log's trailer (``# phases: copy
    1.21s, make 110.42s, ...``): what makes nvkmd slower than a bare make
    is read from the log, not guessed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - t0

    def describe(self) -> str:
        return ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items())

class Engine:
    def __init__(self, paths: Paths, config: Config,
                 after_install: AfterInstall | None = None,
                 on_critical: Callable[[bool], None] | None = None):
        self.paths = paths
        self.config = config
        self.cache = ProductCache(paths.products_root, config.build_cache_keep,
                                  paths.product_digests)
        # Runs in a worker thread after a successful install and depmod, with
        # the build log's writer; raising NvkmdError fails the build.  By
        # default the initramfs step (install.initramfs), so that no place
        # that makes an Engine can forget it.
        self.after_install = after_install or self._initramfs
        self.on_critical = on_critical or (lambda entering: None)
        self.dkms = dkms_backend.DkmsBackend(paths, config.build_timeout_s, self.on_critical)

    def _initramfs(self, kernel: Kernel, log: Callable[[str], None]) -> None:
        from nvkmd.install import initramfs
        initramfs.regenerate(self.paths, self.config, kernel, log, critical=self.on_critical)

    @property
    def jobs(self) -> int:
        return self.config.build_jobs or os.cpu_count() or 1

    async def build(self, release: str, source: Source, *, force: bool = False,
                    on_progress: ProgressFn = lambda p: None) -> Outcome:
        kernel = Kernel(self.paths, release)
        # build.backend and DKMS's registrations decide Kbuild or DKMS (dkms.py).
        choice = await asyncio.to_thread(dkms.choose, self.config.build_backend, self.paths, source)
        current = self.dkms.is_current(kernel, source, choice.registration) if choice.registration \
            else module_is_current(kernel, source)
        if not force and current:
            return Outcome(release, "up-to-date", source.version)
        async with kernel_lock(self.paths, release):
            return await self._build_locked(kernel, source, on_progress, choice, force)

    async def _build_locked(self, kernel: Kernel, source: Source, on_progress: ProgressFn,
                            choice: dkms.Choice = dkms.Choice("kbuild", None),
                            force: bool = False) -> Outcome:
        started = time.monotonic()
        recover(kernel)
        toolchain = kernel.toolchain if kernel.headers else None
        log = BuildLog(self.paths.log_dir, kernel.release, self.config.logs_keep,
                       max_bytes=self.config.logs_max_mib << 20)
        try:
            log.open({
                "kernel": kernel.release,
                "source": f"{source.origin} ({source.kind})",
                "tree": str(source.tree),
                "version": source.version,
                "toolchain": toolchain.describe() if toolchain else "unknown (no headers)",
                "backend": f"dkms ({choice.registration.spec})" if choice.registration
                           else choice.backend,
                "command": dkms_backend.DkmsBackend.describe(choice.registration, kernel.release)
                           if choice.registration else
                           " ".join(["make", f"-j{self.jobs}", *make_vars(kernel), "modules"])
                           if toolchain else "(none)",
            })
        except NvkmdError as e:
            return Outcome(kernel.release, "failed", source.version, None, _log_failure(e),
                           elapsed_s=time.monotonic() - started)
        if log.failed_write:
            # A build nobody could read the log of is not worth installing.
            log.close("failed", time.monotonic() - started)
            return Outcome(kernel.release, "failed", source.version, log.path,
                           _log_failure(log.failed_write), elapsed_s=time.monotonic() - started)

        from_cache = False
        phases = Phases()
        try:
            with log.attempt() as attempt:
                from_cache = await self._produce_and_install(kernel, source, log, on_progress,
                                                             choice, force, phases)
                attempt.result = "success"
        finally:
            elapsed = time.monotonic() - started
            trailer = {"from cache": "yes"} if from_cache else {}
            if phases.seconds:
                trailer["phases"] = phases.describe()
            log.close(attempt.result, elapsed, trailer)
        if attempt.result == "success":
            on_progress(Progress("done", 100))
            return Outcome(kernel.release, "success", source.version, log.path, None, from_cache, elapsed)
        d = _log_failure(log.failed_write) if log.failed_write else diagnose.diagnose(log.text())
        return Outcome(kernel.release, "failed", source.version, log.path, d, False, elapsed)

    async def _produce_and_install(self, kernel: Kernel, source: Source, log: BuildLog,
                                   on_progress: ProgressFn, choice: dkms.Choice, force: bool,
                                   phases: Phases) -> bool:
        if choice.registration:
            with phases("dkms"):
                await self.dkms.build_and_install(kernel, source, choice.registration, log,
                                                  on_progress, force)
            with phases("after-install"):
                await asyncio.to_thread(self.after_install, kernel, log.write)
            return False
        if choice.problem:
            raise NvkmdError(ErrorCode.NOT_SUPPORTED, f"{diagnose.MARK_DKMS_UNUSABLE} {choice.problem}")
        dkms_backend.refuse_if_owned(self.paths, kernel)
        if kernel.headers is None:
            raise NvkmdError(ErrorCode.HEADERS_MISSING, f"{diagnose.MARK_HEADERS} {kernel.build_link} "
                             "does not lead to a tree with a Makefile and .config")
        missing = kernel.toolchain.missing()
        if missing:
            raise NvkmdError(ErrorCode.BUILD_FAILED, f"{diagnose.MARK_COMPILER} {', '.join(missing)} "
                             f"not found (the kernel was built with {kernel.toolchain.text or 'gcc'})")
        key = build_key(kernel, source)
        products = await asyncio.to_thread(self.cache.lookup, kernel.release, key)
        if self.cache.rejected:
            log.write(f"nvkmd: warning: not installing the cached build {self.cache.rejected}; "
                      "building again")
        from_cache = products is not None
        build_dir = self.paths.build_root / source.version / kernel.release
        if products is not None:
            log.write(f"nvkmd: inputs unchanged (key {key}); installing from the cache {products}")
        else:
            on_progress(Progress("prepare", 0))
            with phases("copy"):
                await asyncio.to_thread(prepare_tree, source, build_dir)
            with phases("make"):
                rc = await run_make(kernel, source, build_dir, self.jobs, self.config.build_timeout_s,
                                    log.write, on_progress,
                                    procs.Registry(self.paths.state_dir / procs.BUILDS_SUBDIR))
            if rc != 0:
                raise NvkmdError(ErrorCode.BUILD_FAILED, f"make exited with status {rc}")
            if self.config.build_cache_keep > 0:
                try:
                    with phases("cache"):
                        products = await asyncio.to_thread(self.cache.store, kernel.release, key,
                                                           build_dir)
                except OSError as e:
                    log.write(f"nvkmd: warning: cannot keep the build in the cache: {e}")
            products = products or build_dir
        if log.failed_write:
            raise log.failed_write
        on_progress(Progress("install", 99))
        signing = (str(self.paths.at(self.config.signing_key)), str(self.paths.at(self.config.signing_cert))) \
            if self.config.signing_key else None
        manifest = {"kernel": kernel.release, "version": source.version, "digest": source.digest,
                    "key": key, "source": str(source.origin), "kind": source.kind}
        try:
            with phases("install"):
                await asyncio.to_thread(install, kernel, products, manifest,
                                        strip=self.config.install_strip, signing=signing,
                                        log=log.write, on_critical=self.on_critical)
        except InstallError as e:
            raise NvkmdError(e.code, e.message if e.message.startswith(e.marker) else
                             f"{e.marker} {e.message}") from None
        if products != build_dir:
            shutil.rmtree(build_dir, ignore_errors=True)
        with phases("after-install"):
            await asyncio.to_thread(self.after_install, kernel, log.write)
        return from_cache
