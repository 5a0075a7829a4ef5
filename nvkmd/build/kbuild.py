"""Run the kernel build system on a private copy of the source tree."""

from __future__ import annotations

import asyncio
import errno
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from nvkmd.build import diagnose, history, procs
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.system.kernels import Kernel
from nvkmd.procenv import child_env
from nvkmd.build.progress import Counts, Progress, ProgressTracker, kbuild_conftests, parse_counts
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
            # count-lines.mk leaves out Kbuild's own conftests (header presence, sanity).
            try:
                kbuild = (build_dir / "Kbuild").read_text(errors="replace")
            except OSError:
                kbuild = ""
            return Counts(counts.conftests + kbuild_conftests(kbuild), counts.objects,
                          counts.modules)
    # No count-lines.mk: every C file is an object, and the tree says its modules.
    objects = sum(1 for _ in build_dir.rglob("*.c"))
    return Counts(0, objects, max(1, len(source.modules)))


async def _kill_group(proc: asyncio.subprocess.Process, token: str, grace: float = 5.0) -> None:
    """Stop the build: SIGTERM, then SIGKILL, to every process it started
    (procs.py: its group, its descendants and whatever carries its token,
    setsid or not), until none is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        await asyncio.to_thread(procs.kill, token, proc.pid, sig)
        try:
            async with asyncio.timeout(grace):
                await proc.wait()
            break
        except TimeoutError:
            continue
    # make may exit before its children: make sure none survive.
    await asyncio.to_thread(procs.kill_all, token, proc.pid)


async def start_build(cmd: list[str], cwd: Path | None, registry: procs.Registry | None
                      ) -> tuple[asyncio.subprocess.Process, str]:
    """Start a build command with its token, recorded in ``registry``."""
    token = procs.new_token()
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=cwd, env=child_env(**{procs.BUILD_ENV: token}), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True, limit=1 << 20)
    if registry is not None:
        try:
            registry.add(token, proc.pid)
        except OSError:
            await _kill_group(proc, token)
            raise
    return proc, token


async def run_make(kernel: Kernel, source: Source, build_dir: Path, jobs: int, timeout_s: float,
                   log: Callable[[str], None], on_progress: Callable[[Progress], None],
                   registry: procs.Registry | None = None,
                   launcher: tuple[str, ...] = ()) -> int:
    """``make modules`` in ``build_dir``; returns make's exit status.

    Every process of the build (procs.py) is killed at ``timeout_s`` (a
    timeout marker goes to the log and the status is -SIGKILL) and when the
    calling task is cancelled (the marker says so; CancelledError propagates).
    """
    state_dir = kernel.paths.state_dir
    # count-lines.mk is a make run of its own (up to 2 minutes on a slow
    # machine): in a thread, or the bus and the watchdog would stall meanwhile.
    counts = await asyncio.to_thread(count_lines, kernel, source, build_dir)
    tracker = ProgressTracker(counts, history.previous(state_dir, source.version), time.monotonic)
    if tracker.eta() >= 0:
        on_progress(Progress("prepare", 0, tracker.eta()))   # the ETA from the start
    # ``launcher``: e.g. ("nice", "-n", "19") for the preflight, which must
    # never slow a real build down; it execs make, so the process group is the same.
    cmd = [*launcher, "make", f"-j{jobs}", *make_vars(kernel), "modules"]
    log("$ " + " ".join(cmd))
    proc, token = await start_build(cmd, build_dir, registry)
    try:
        rc = await _supervise(proc, token, timeout_s, log, tracker, on_progress)
        if rc == 0:      # a failed build's lines are no total for the next one
            history.record(state_dir, source.version, tracker.learned_now(), time.time())
        return rc
    finally:
        if registry is not None:
            registry.remove(token)


async def _supervise(proc: asyncio.subprocess.Process, token: str, timeout_s: float,
                     log: Callable[[str], None], tracker: ProgressTracker,
                     on_progress: Callable[[Progress], None]) -> int:
    async def pump() -> None:
        assert proc.stdout is not None
        while raw := await proc.stdout.readline():
            line = raw.decode(errors="replace").rstrip("\n")
            log(line)
            p = tracker.feed(line)
            if p:
                on_progress(p)

    async def run() -> None:
        reader = asyncio.create_task(pump())
        try:
            await proc.wait()
            # make is done: what it left running (a recipe's setsid daemon)
            # is no part of the result, and must not hold the output open.
            await asyncio.to_thread(procs.kill_all, token, proc.pid)
            await reader
        finally:
            reader.cancel()

    try:
        async with asyncio.timeout(timeout_s):
            await run()
    except TimeoutError:
        await _kill_group(proc, token)
        log(f"{diagnose.MARK_TIMEOUT} {timeout_s:g}s (build.timeout_s); every process of the "
            "build was killed")
        return -signal.SIGKILL
    except asyncio.CancelledError:
        await _kill_group(proc, token)
        log(f"{diagnose.MARK_CANCELLED}; every process of the build was killed")
        raise
    rc = proc.returncode if proc.returncode is not None else -1
    if rc < 0:
        log(f"{diagnose.MARK_KILLED} {signal.Signals(-rc).name}")
    return rc
