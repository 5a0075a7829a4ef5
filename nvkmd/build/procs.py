"""Every process a build started, found and killed, ``setsid`` or not.

A build is make (or dkms) and whatever its recipes start.  Killing make's
process group is not enough: a recipe can call ``setsid`` (a new session
and group) and outlive the build, outside systemd's cgroup kill.  So each
build runs with ``NVKMD_BUILD=<token>`` in its environment, which every
descendant inherits through fork, exec and setsid, and the build's members
are found in ``/proc`` by that token, by its process group and by parent
links.  Only a process that both clears its environment and leaves the
group and the parent chain escapes; nothing nvkmd runs does that.

A record per running build (token, leader pid and its start time) is kept
in the state directory, so that the next daemon, after a crash, kills the
builds nvkmd started and nothing else (reaper.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import time
from pathlib import Path

from nvkmd.paths import PROC

BUILD_ENV = "NVKMD_BUILD"
BUILDS_SUBDIR = "builds"      # the Registry's records, in the state dir


def new_token() -> str:
    return secrets.token_hex(8)


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgid, start time in clock ticks) of a live process."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces or ")".
    fields = raw[raw.rfind(b")") + 2:].split()
    try:
        return fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[19])
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    st = _stat(pid)
    return st[3] if st else None


def _has_token(pid: int, marker: bytes) -> bool:
    try:
        return marker in (PROC / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return False


def members(token: str, leader: int | None = None) -> set[int]:
    """The live (not zombie) processes of the build with ``token``; with
    ``leader``, also its process group (the leader itself included: it runs
    in a session of its own) and their descendants."""
    marker = f"{BUILD_ENV}={token}".encode()
    me = os.getpid()
    table: dict[int, tuple[str, int, int, int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))):
            table[int(entry.name)] = st
    found = {pid for pid, st in table.items() if st[0] != "Z" and pid != me and
             ((leader is not None and st[2] == leader) or _has_token(pid, marker))}
    # Parent links: whatever found processes started, however they cleared their env.
    grew = True
    while grew:
        grew = False
        for pid, st in table.items():
            if pid not in found and st[1] in found and st[0] != "Z" and pid != me:
                found.add(pid)
                grew = True
    return {p for p in found if table.get(p, ("Z",))[0] != "Z"}


def kill(token: str, leader: int | None, sig: int) -> set[int]:
    pids = members(token, leader)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
    return pids


def kill_all(token: str, leader: int | None, timeout: float = 5.0) -> bool:
    """SIGKILL every member until none is left (True) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while kill(token, leader, signal.SIGKILL):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Registry:
    """The running builds' records, one small JSON file per build."""

    def __init__(self, directory: Path):
        self.dir = directory

    def add(self, token: str, pid: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        rec = {"token": token, "pid": pid, "start": start_time(pid)}
        tmp = self.dir / f".{token}.tmp"
        tmp.write_text(json.dumps(rec) + "\n")
        os.replace(tmp, self.dir / f"{token}.json")

    def remove(self, token: str) -> None:
        with contextlib.suppress(OSError):
            (self.dir / f"{token}.json").unlink()

    def records(self) -> list[dict]:
        out = []
        try:
            files = sorted(self.dir.glob("*.json"))
        except OSError:
            return out
        for f in files:
            try:
                rec = json.loads(f.read_text())
                if isinstance(rec, dict) and isinstance(rec.get("token"), str) and \
                        isinstance(rec.get("pid"), int):
                    out.append(rec)
                    continue
            except (OSError, ValueError):
                pass
            with contextlib.suppress(OSError):
                f.unlink()      # unreadable: nothing to act on
        return out
