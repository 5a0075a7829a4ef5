"""The DKMS build backend: dkms build/install with progress and a log, as one build."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Callable

from nvkmd.build import diagnose
from nvkmd.build import procs
from nvkmd.build.kbuild import _kill_group, count_lines, start_build
from nvkmd.build.locks import kernel_lock
from nvkmd.build.log import BuildLog
from nvkmd.build.progress import Counts, Progress, ProgressTracker
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.install.modules import depmod
from nvkmd.paths import Paths
from nvkmd.system.dkms import (
    DKMS_SUBDIR,
    RETIRED_MARK,
    Registration,
    built_names,
    digest_changed,
    installed,
    installed_files,
    is_current,
    kernel_dirs,
    owner_of,
    run,
    status,
    write_record,
)
from nvkmd.system.kernels import NVKMD_SUBDIR, Kernel
from nvkmd.system.source import Source

TAIL_INTERVAL_S = 0.2


class DkmsBackend:
    """Builds and installs one kernel through ``dkms build`` / ``dkms install``."""

    def __init__(self, paths: Paths, timeout_s: float,
                 on_critical: Callable[[bool], None] = lambda entering: None):
        self.paths = paths
        self.timeout_s = timeout_s
        self.on_critical = on_critical

    def is_current(self, kernel: Kernel, source: Source, reg: Registration) -> bool:
        return is_current(self.paths, kernel, source, reg)

    @staticmethod
    def describe(reg: Registration, release: str) -> str:
        args = f"-m {reg.name} -v {reg.version} -k {release}"
        return f"dkms build {args} --verbose; dkms install {args} --verbose"

    async def build_and_install(self, kernel: Kernel, source: Source, reg: Registration,
                                log: BuildLog, on_progress: Callable[[Progress], None],
                                force: bool) -> None:
        # DKMS shares one build directory per module/version: one build at a time.
        async with kernel_lock(self.paths, f"dkms-{reg.name}-{reg.version}", self.timeout_s):
            await self._locked(kernel, source, reg, log, on_progress, force)

    async def _locked(self, kernel: Kernel, source: Source, reg: Registration, log: BuildLog,
                      on_progress: Callable[[Progress], None], force: bool) -> None:
        release = kernel.release
        spec = ["-m", reg.name, "-v", reg.version, "-k", release]
        states = {e.state for e in await asyncio.to_thread(status, self.paths, reg.name,
                                                            reg.version, release)}
        have = "installed" if "installed" in states else "built" if "built" in states else ""
        rebuild = force or not have or digest_changed(self.paths, release, reg, source)
        log.write(f"nvkmd/dkms: DKMS has {reg.spec} {have or 'not built'} for {release}"
                  f"{'; rebuilding' if rebuild and have else ''}")
        if rebuild:
            on_progress(Progress("prepare", 0))
            rc = await self._run_build(kernel, source, reg, spec + (["--force"] if have else []),
                                       log, on_progress)
            if rc != 0:
                raise NvkmdError(ErrorCode.BUILD_FAILED, diagnose.dkms_exit_line("build", rc))
        on_progress(Progress("install", 99))
        await asyncio.to_thread(self._install, kernel, reg, spec,
                                reinstall=have == "installed" and rebuild,
                                skip_dkms=have == "installed" and not rebuild, log=log.write)
        write_record(self.paths, release, reg, source)
        await asyncio.to_thread(self._drop_orphans, reg, log.write)

    def _install(self, kernel: Kernel, reg: Registration, spec: list[str], *, reinstall: bool,
                 skip_dkms: bool, log: Callable[[str], None]) -> None:
        """Hand the kernel over from nvkmd's own modules to DKMS's, keeping
        ours until DKMS has installed (see the module docstring)."""
        ours = kernel.nvkmd_dir
        # Outside the kernel's directory: depmod would index a hidden one too.
        aside = kernel.dir.parent / f".nvkmd-handover-{kernel.release}"
        self.on_critical(True)
        try:
            if ours.exists():
                shutil.rmtree(aside, ignore_errors=True)
                ours.rename(aside)
                log(f"nvkmd/dkms: moved nvkmd's own modules aside ({ours} -> {aside.name}) for DKMS")
            if skip_dkms:
                if aside.exists():
                    depmod(kernel, log)
            else:
                log("$ dkms install " + " ".join(spec) + " --verbose" + (" --force" if reinstall else ""))
                proc = run(["install", *spec, "--verbose", *(["--force"] if reinstall else [])],
                           timeout=self.timeout_s)
                for line in proc.stdout.splitlines():
                    log(line)
                # dkms exits 0 without copying when its version check finds a module
                # of the same version elsewhere: believe the files, not the status.
                placed = {p.name for p in installed_files(self.paths, kernel)}
                built = built_names(self.paths, reg.name, reg.version, kernel.release)
                missing = (reg.name, reg.version) not in installed(self.paths, kernel.release) \
                    or not built or not built <= placed
                if proc.returncode != 0 or missing:
                    if aside.exists():
                        shutil.rmtree(ours, ignore_errors=True)
                        aside.rename(ours)
                        log("nvkmd/dkms: DKMS did not install; nvkmd's own modules are back in place")
                        depmod(kernel, log)
                    if proc.returncode != 0:
                        raise NvkmdError(ErrorCode.BUILD_FAILED,
                                         diagnose.dkms_exit_line("install", proc.returncode))
                    raise NvkmdError(ErrorCode.BUILD_FAILED, f"{diagnose.MARK_INSTALL} dkms install "
                                     f"exited 0 but {reg.spec} is not installed for {kernel.release}")
        finally:
            shutil.rmtree(aside, ignore_errors=True)
            self.on_critical(False)
        log(f"installed {reg.spec} for {kernel.release} through DKMS into {kernel.dir / DKMS_SUBDIR}")

    def _drop_orphans(self, reg: Registration, log: Callable[[str], None]) -> None:
        """Unregister older versions of the same module that ``source update``
        retired (their source is nvkmd's frozen copy) once no kernel uses them."""
        for name, version in sorted({(e.name, e.version) for e in status(self.paths, reg.name)}):
            src = self.paths.dkms_tree / name / version / "source"
            if version == reg.version or not (src / RETIRED_MARK).is_file():
                continue
            if any((name, version) in installed(self.paths, k.name)
                   for k in kernel_dirs(self.paths)):
                continue
            frozen = src.resolve()
            proc = run(["remove", "-m", name, "-v", version, "--all"])
            log(f"nvkmd/dkms: unregistered {name}/{version} from DKMS (retired by source update, "
                f"no kernel uses it): dkms remove exited {proc.returncode}")
            if proc.returncode == 0 and (frozen / RETIRED_MARK).is_file():
                shutil.rmtree(frozen, ignore_errors=True)

    async def _run_build(self, kernel: Kernel, source: Source, reg: Registration, spec: list[str],
                         log: BuildLog, on_progress: Callable[[Progress], None]) -> int:
        try:
            counts = await asyncio.to_thread(count_lines, kernel, source, source.tree) \
                if kernel.headers else Counts(0, 0, 0)
        except (NvkmdError, OSError, subprocess.SubprocessError):
            counts = Counts(0, 0, 0)
        tracker = ProgressTracker(counts)

        def line_in(line: str) -> None:
            log.write(line)
            p = tracker.feed(line)
            if p:
                on_progress(p)

        make_log = self.paths.dkms_tree / reg.name / reg.version / "build" / "make.log"
        stale = _inode(make_log)
        cmd = ["dkms", "build", *spec, "--verbose"]
        log.write("$ " + " ".join(cmd))
        registry = procs.Registry(self.paths.state_dir / procs.BUILDS_SUBDIR)
        proc, token = await start_build(cmd, None, registry)
        try:
            return await self._supervise(proc, token, make_log, stale, line_in, log)
        finally:
            registry.remove(token)

    async def _supervise(self, proc: asyncio.subprocess.Process, token: str, make_log: Path,
                         stale: int | None, line_in: Callable[[str], None], log: BuildLog) -> int:
        done = asyncio.Event()

        async def pump() -> None:
            assert proc.stdout is not None
            while raw := await proc.stdout.readline():
                line_in(raw.decode(errors="replace").rstrip("\n"))
            await proc.wait()

        async def run_all() -> None:
            tail = asyncio.create_task(_follow(make_log, stale, done, line_in))
            try:
                await pump()
                await asyncio.to_thread(procs.kill_all, token, proc.pid)
            finally:
                done.set()
                await tail

        try:
            async with asyncio.timeout(self.timeout_s):
                await run_all()
        except TimeoutError:
            await _kill_group(proc, token)
            log.write(f"{diagnose.MARK_TIMEOUT} {self.timeout_s:g}s (build.timeout_s); "
                      "every process of the build was killed")
            return -signal.SIGKILL
        except asyncio.CancelledError:
            await _kill_group(proc, token)
            log.write(f"{diagnose.MARK_CANCELLED}; every process of the build was killed")
            raise
        rc = proc.returncode if proc.returncode is not None else -1
        if rc < 0:
            log.write(f"{diagnose.MARK_KILLED} {signal.Signals(-rc).name}")
        return rc


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


async def _follow(path: Path, stale: int | None, done: asyncio.Event,
                  on_line: Callable[[str], None]) -> None:
    """Feed the lines of DKMS's ``make.log`` as they are written.

    DKMS deletes the build directory and writes a new make.log (make's
    output goes there, not to DKMS's stdout); after a successful build it
    renames the file into its log directory, which an open file survives.
    A make.log left from an earlier build (``stale`` inode) is ignored.
    """
    fh = None
    buf = ""
    try:
        while True:
            finished = done.is_set()
            if fh is None:
                try:
                    f = open(path, "r", errors="replace")
                except OSError:
                    f = None
                if f is not None:
                    if os.fstat(f.fileno()).st_ino == stale:
                        f.close()
                    else:
                        fh = f
            if fh is not None:
                chunk = fh.read()
                if chunk:
                    buf += chunk
                    *lines, buf = buf.split("\n")
                    for line in lines:
                        on_line(line)
            if finished:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TAIL_INTERVAL_S):
                    await done.wait()
    finally:
        if buf:
            on_line(buf)
        if fh is not None:
            fh.close()


def refuse_if_owned(paths: Paths, kernel: Kernel) -> None:
    """The Kbuild backend's half of the one-owner rule."""
    owner = owner_of(paths, kernel)
    if owner:
        raise NvkmdError(ErrorCode.BUILD_FAILED, f"{diagnose.MARK_CONFLICT} DKMS already has an "
                         f"nvidia module installed for {kernel.release} ({owner}); nvkmd will not "
                         f"install a second one into {NVKMD_SUBDIR}. Build through DKMS "
                         f"(build.backend = \"auto\" or \"dkms\" with that source) or remove it: "
                         f"dkms remove {owner.split(',')[0]} -k {kernel.release}")
