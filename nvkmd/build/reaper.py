"""Builds left running by a killed predecessor."""

from __future__ import annotations

from pathlib import Path

import structlog

from nvkmd.build import procs

log = structlog.get_logger()


def reap_orphan_builds(registry_dir: Path) -> list[int]:
    """Kill what a killed predecessor left building; returns the PIDs killed.

    make runs in its own session, so a daemon killed with SIGKILL (outside
    systemd, which would kill the whole cgroup) leaves it running, writing
    into the build tree the next attempt is about to replace.  Only builds
    nvkmd recorded when it started them (procs.Registry: token, leader PID
    and its start time) are killed: never a process that merely sits in the
    cache (an admin's shell cd'd there), and never another process that
    reused a recorded PID.  The caller holds the daemon's instance lock, so
    no live daemon owns these records.
    """
    registry = procs.Registry(registry_dir)
    killed: set[int] = set()
    for rec in registry.records():
        token, pid = rec["token"], rec["pid"]
        # The leader's group and descendants only if it is the process recorded.
        leader = pid if rec.get("start") is not None and procs.start_time(pid) == rec["start"] \
            else None
        found = procs.members(token, leader)
        if found:
            log.warning("killing a build left over by a previous nvkmd", pids=sorted(found))
            procs.kill_all(token, leader)
            killed |= found
        registry.remove(token)
    return sorted(killed)
