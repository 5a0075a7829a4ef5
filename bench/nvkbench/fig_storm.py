"""P7: an event storm under <modules> (more events than the inotify queue
holds, new kernels arriving in the middle of it), then the time until the
right jobs are queued and how many kernels were missed.

The daemon is frozen (SIGSTOP) during the storm, as a busy machine might
leave it, so that its inotify queue overflows for sure with the kernel's
default ``max_queued_events``; the clock starts when it is let go.  The
anchor is one kernel arriving on a calm system, in the same daemon.  The
tiny tree is used in every mode: this figure is about detection."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from . import stats
from .context import Context
from .env import BenchError, BenchRoot, DaemonProc, log, wait_for

P7 = "event storm"
LIMIT = Path("/proc/sys/fs/inotify/max_queued_events")
NEW_KERNELS = 5


def _storm(modules: Path, files: int, kernels: list[str], headers_of: str) -> None:
    """``files`` files created and half of them removed again, a kernel
    directory with its headers links added at even steps in between."""
    real = Path("/lib/modules") / headers_of
    targets = {n: (real / n).resolve() for n in ("build", "source")}
    at = {files * (i + 1) // (len(kernels) + 1): k for i, k in enumerate(kernels)}
    for i in range(files):
        fd = os.open(modules / f"storm-{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
        if i in at:
            d = modules / at[i]
            (d / "kernel").mkdir(parents=True)
            for name, target in targets.items():
                os.symlink(target, d / name)
    for i in range(0, files, 2):
        os.unlink(modules / f"storm-{i:06d}")


def _one(ctx: Context, files: int, run: int) -> dict:
    k = ctx.kernel
    root = BenchRoot(ctx.ws.new("p7-root"), ctx.tiny_source)
    # The kernel the running system has, built before the storm.
    root.add_kernel(k, headers_of=k)
    d = DaemonProc(root.path, ctx.log_file(f"p7-nvkmd-{run}"), env={"NVKMD_RUNNING_KERNEL": k}).start()
    try:
        d.wait_event("ready", timeout=300)
        d.wait_settled(timeout=3600)
        calm = f"6.1.0-{800 + run}-calm"
        mark = d.mark()
        t0 = time.monotonic()
        root.add_kernel(calm, headers_of=k)
        calm_s = d.wait_event("job queued", mark, timeout=120, kernel=calm)[0] - t0
        d.wait_settled(mark, timeout=600)
        mark = d.mark()
        new = [f"6.1.0-{900 + run * 10 + i}-storm" for i in range(NEW_KERNELS)]
        os.kill(d.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            _storm(root.modules, files, new, k)
        finally:
            t_end = time.monotonic()
            os.kill(d.pid, signal.SIGCONT)

        def queued() -> dict[str, int]:
            out: dict[str, int] = {}
            for _, f in d.find("job queued", mark):
                out[f.get("kernel", "")] = out.get(f.get("kernel", ""), 0) + 1
            return out
        try:
            wait_for(lambda: all(x in queued() for x in new), 120, "jobs for the new kernels",
                     interval=0.02)
        except BenchError:
            pass
        q = queued()
        times = [t for t, f in d.find("job queued", mark) if f.get("kernel") in new]
        overflow = bool(d.find("inotify queue overflowed; events were lost, rescanning everything", mark))
        return {"storm_s": t_end - t0, "calm_s": calm_s, "to_queued_s": (max(times) - t_end) if times else None,
                "missed": sum(1 for x in new if x not in q),
                "duplicates": sum(max(0, q.get(x, 0) - 1) for x in new),
                "wrong": sorted(x for x in q if x not in new),
                "overflow": overflow, "files": files, "events": files + files // 2 + 3 * NEW_KERNELS}
    finally:
        d.stop()
        shutil.rmtree(root.path, ignore_errors=True)


def p7(ctx: Context) -> stats.Figure:
    limit = int(LIMIT.read_text()) if LIMIT.exists() else 16384
    files = 2000 if ctx.dry else 3 * limit
    reps = 1 if ctx.dry else ctx.reps
    runs = []
    for i in range(reps):
        log(f"P7 run {i + 1}/{reps}: {files} files and {NEW_KERNELS} new kernels under <modules>")
        runs.append(_one(ctx, files, i))
    got = [r["to_queued_s"] for r in runs if r["to_queued_s"] is not None]
    missed = sum(r["missed"] for r in runs)
    dups = sum(r["duplicates"] for r in runs)
    overflows = sum(r["overflow"] for r in runs)
    calm = stats.summarize([r["calm_s"] for r in runs])
    data = {"runs": runs, "inotify_max_queued_events": limit, "new_kernels_per_run": NEW_KERNELS,
            "missed": missed, "duplicates": dups, "overflowed_runs": overflows}
    if not got:
        raise BenchError(f"no job was queued for any new kernel ({missed} missed)")
    s = stats.summarize(got)
    value = (f"{stats.fmt(s, 's')} from the storm's end to all {NEW_KERNELS} jobs queued; "
             f"{missed} of {NEW_KERNELS * reps} kernels missed, {dups} duplicate jobs, "
             f"queue overflowed in {overflows}/{reps} runs")
    fig = stats.Figure(7, P7, value, stats.ratio(s.median, calm.median),
                       f"one kernel arriving on a calm system {stats.fmt(calm, 's')}", data)
    fig.notes.append(f"storm: {files} files created and half removed, {NEW_KERNELS} kernels added "
                     "meanwhile, nvkmd frozen by SIGSTOP until the storm ended")
    data["right_jobs"] = missed == 0 and dups == 0 and not any(r["wrong"] for r in runs)
    return fig
