"""P10: event to build start on a calm system (no package manager at
work): a kernel directory with its headers links appears under <modules>
of a daemon at rest, and the clock stops at its "build started" line.
The anchor is the configured quiet period (``daemon.debounce_s``), the
wait every event paid before the debounce became adaptive.

P1's rule is checked beside it, in the same daemon: while this process
holds dpkg's ``lock-frontend`` in the root (as apt does), a new kernel is
seen but no build starts; the time from the lock's release to the build's
start is reported too.  The tiny tree is used in every mode: this figure
is about reaction, not compiling."""

from __future__ import annotations

import fcntl
import os
import shutil
import time

from . import stats
from .context import Context
from .env import BenchError, BenchRoot, DaemonProc, log

P10 = "event to build start"
DEBOUNCE_S = 2.0         # nvkmd's default daemon.debounce_s (etc/nvkmd.toml)


def _locked_round(root: BenchRoot, d: DaemonProc, k: str) -> dict:
    admin = root.path / "var" / "lib" / "dpkg"
    rel = "6.1.0-699-locked"
    mark = d.mark()
    fd = os.open(admin / "lock-frontend", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        root.add_kernel(rel, headers_of=k)
        d.wait_event("waiting for package manager", mark, timeout=60)
        held_s = 1.0
        # The daemon waits; give it a moment to do what it must not.
        time.sleep(held_s)   # measuring an absence: nothing to wait on but time
        if d.find("build started", mark, kernel=rel):
            raise BenchError("a build started while dpkg's lock-frontend was held (P1's rule)")
        released = time.monotonic()
        fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    started = d.wait_event("build started", mark, timeout=120, kernel=rel)[0]
    d.wait_settled(mark, timeout=600)
    return {"no_build_while_held_s": held_s, "release_to_build_start_s": started - released}


def p10(ctx: Context) -> stats.Figure:
    k = ctx.kernel
    root = BenchRoot(ctx.ws.new("p10-root"), ctx.tiny_source)
    root.add_kernel(k, headers_of=k)
    # dpkg's admin dir exists from the start, as on Debian: the daemon watches its locks.
    (root.path / "var" / "lib" / "dpkg").mkdir(parents=True, exist_ok=True)
    d = DaemonProc(root.path, ctx.log_file("p10-nvkmd"), env={"NVKMD_RUNNING_KERNEL": k}).start()
    reps = 1 if ctx.dry else max(ctx.reps, 3)
    try:
        d.wait_event("ready", timeout=300)
        d.wait_settled(timeout=3600)
        times = []
        for i in range(reps):
            rel = f"6.1.0-{700 + i}-react"
            mark = d.mark()
            t0 = time.monotonic()
            root.add_kernel(rel, headers_of=k)
            times.append(d.wait_event("build started", mark, timeout=120, kernel=rel)[0] - t0)
            d.wait_settled(mark, timeout=600)
        log("P10: the same with dpkg's lock-frontend held (P1's rule)")
        locked = _locked_round(root, d, k)
    finally:
        d.stop()
        shutil.rmtree(root.path, ignore_errors=True)
    s = stats.summarize(times)
    data = {"event_to_build_start_s": s.to_dict(), "samples": times, "with_lock_held": locked,
            "debounce_s": DEBOUNCE_S}
    value = (f"{stats.fmt(s, 's', 3)} with no package manager; with dpkg's lock held no build "
             f"started, and it started {locked['release_to_build_start_s']:.2f} s after the release")
    return stats.Figure(10, P10, value, stats.ratio(s.median, DEBOUNCE_S),
                        f"the configured quiet period (daemon.debounce_s) {DEBOUNCE_S:g} s", data)
