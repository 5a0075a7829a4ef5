"""One daemon per root: an exclusive lock on a file in the state directory.

Taken before any other start-up work, before all the orphan sweep above:
a second daemon on the same root would otherwise kill the first one's
build and build the same jobs beside it.  The lock is an flock(2) on an
open file description nobody else shares (O_CLOEXEC: no build inherits
it), so it goes away with the process however it dies.  The file holds
the holder's PID, for the one line the second instance prints.
``--once`` takes no such lock: it and the daemon share the per-kernel
build locks (build/locks.py) and may run side by side.
"""

from __future__ import annotations

import fcntl
import os

from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.paths import Paths

LOCK_NAME = "nvkmd.lock"


class AlreadyRunning(NvkmdError):
    def __init__(self, message: str):
        super().__init__(ErrorCode.BUSY, message)


def hold(paths: Paths) -> int:
    """The lock's file descriptor, to keep open for the process's life; or
    AlreadyRunning naming the holder's PID."""
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    path = paths.state_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise AlreadyRunning(f"another nvkmd (pid {holder}) is already running for "
                             f"{paths.root} (it holds {path})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
