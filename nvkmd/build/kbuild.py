"""Run the kernel build system on a private copy of the source tree."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Callable

from nvkmd.build import diagnose
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.system.kernels import Kernel
from nvkmd.procenv import child_env
from nvkmd.build.progress import Counts, Progress, ProgressTracker, parse_counts
from nvkmd.system.source import Source


def make_vars(kernel: Kernel) -> list[str]:
    sysout = kernel.headers
    if sysout is None:
        raise NvkmdError(ErrorCode.HEADERS_MISSING, f"{kernel.release}: no kernel headers")
    sysrc = kernel.source_tree or sysout
    return [f"KERNEL_UNAME={kernel.release}", f"SYSSRC={sysrc}", f"SYSOUT={sysout}",
            *(f"{k}={v}" for k, v in kernel.toolchain.make_vars)]


def prepare_tree(source: Source, build_dir: Path) -> None:
    """A fresh private copy of the tree: two kernels never share objects,
    and the shared source is never written."""
    try:
        if build_dir.exists():
            shutil.rmtree(build_dir)
        build_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source.tree, build_dir, symlinks=True)
    except OSError as e:
        shutil.rmtree(build_dir, ignore_errors=True)
        if e.errno == errno.ENOSPC or "No space left" in str(e):
            raise NvkmdError(ErrorCode.DISK_FULL, f"{diagnose.MARK_NOSPACE} copying the source "
                             f"into {build_dir}") from None
        raise NvkmdError(ErrorCode.INTERNAL, f"cannot copy the source into {build_dir}: {e}") from None


def count_lines(kernel: Kernel, source: Source, build_dir: Path) -> Counts:
    """How many conftests, objects and modules the build will report."""
    if source.has_count_lines():
        proc = subprocess.run(["make", "-s", "-f", "count-lines.mk", "count", *make_vars(kernel)],
                              cwd=build_dir, capture_output=True, text=True, env=child_env(),
                              timeout=120, check=False)
        counts = parse_counts(proc.stdout)
        if counts:
            return counts
    # No count-lines.mk: every C file is an object, and the tree says its modules.
    objects = sum(1 for _ in build_dir.rglob("*.c"))
    return Counts(0, objects, max(1, len(source.modules)))


async def _kill_group(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), grace)
            # make may exit before its children: make sure none survive.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return
        except asyncio.TimeoutError:
            continue


async def run_make(kernel: Kernel, source: Source, build_dir: Path, jobs: int, timeout_s: float,
                   log: Callable[[str], None], on_progress: Callable[[Progress], None]) -> int:
    """``make modules`` in ``build_dir``; returns make's exit status.

    The whole process group is killed at ``timeout_s`` (a timeout marker goes
    to the log and the status is -SIGKILL) and when the calling task is
    cancelled (the marker says so; CancelledError propagates).
    """
    tracker = ProgressTracker(count_lines(kernel, source, build_dir))
    cmd = ["make", f"-j{jobs}", *make_vars(kernel), "modules"]
    log("$ " + " ".join(cmd))
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=build_dir, env=child_env(), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True, limit=1 << 20)

    async def pump() -> None:
        assert proc.stdout is not None
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip("\n")
            log(line)
            p = tracker.feed(line)
            if p:
                on_progress(p)
        await proc.wait()

    try:
        await asyncio.wait_for(pump(), timeout_s)
    except asyncio.TimeoutError:
        await _kill_group(proc)
        log(f"{diagnose.MARK_TIMEOUT} {timeout_s:g}s (build.timeout_s); the process group was killed")
        return -signal.SIGKILL
    except asyncio.CancelledError:
        await _kill_group(proc)
        log(f"{diagnose.MARK_CANCELLED}; the process group was killed")
        raise
    rc = proc.returncode if proc.returncode is not None else -1
    if rc < 0:
        log(f"{diagnose.MARK_KILLED} {signal.Signals(-rc).name}")
    return rc
