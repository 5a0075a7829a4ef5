"""Builds left running by a killed predecessor."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import structlog

log = structlog.get_logger()


def reap_orphan_builds(build_root: Path, proc: Path) -> list[int]:
    """Kill what a killed predecessor left building; returns the process groups.

    make runs in its own session, so a daemon killed with SIGKILL (outside
    systemd, which would kill the whole cgroup) leaves it running, writing
    into the build tree the next attempt is about to replace.  Anything whose
    working directory is inside nvkmd's private build root is such a leftover.
    ``proc`` is the process table (``Paths.proc``).
    """
    root = str(build_root.resolve()) + "/"
    own = os.getpgrp()
    groups: set[int] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            if (cwd + "/").startswith(root):
                groups.add(os.getpgid(int(entry.name)))
        except OSError:
            continue
    groups.discard(own)
    for pgid in sorted(groups):
        log.warning("killing a build left over by a previous nvkmd", pgid=pgid)
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
    killed = sorted(groups)
    # Zombies count as alive here; a PID 1 that never reaps them only costs the 5 s.
    deadline = time.monotonic() + 5
    while groups and time.monotonic() < deadline:
        for pgid in list(groups):
            try:
                os.killpg(pgid, 0)
            except OSError:
                groups.discard(pgid)
        time.sleep(0.05)
    return killed
