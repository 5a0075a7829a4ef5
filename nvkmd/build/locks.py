"""Per-kernel build locks, so a one-shot run and the daemon never build the
same kernel at once.  A held lock is a transient condition: retried with
backoff, then reported as Busy."""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import AsyncIterator

import structlog
import tenacity

from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.paths import Paths

log = structlog.get_logger()


def _try_lock(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    return fd


@contextlib.asynccontextmanager
async def kernel_lock(paths: Paths, release: str, wait_s: float = 60.0) -> AsyncIterator[None]:
    lock_dir = paths.state_dir / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = str(lock_dir / f"{release}.lock")
    try:
        async for attempt in tenacity.AsyncRetrying(
                retry=tenacity.retry_if_exception_type(BlockingIOError),
                wait=tenacity.wait_exponential(multiplier=0.2, max=5),
                stop=tenacity.stop_after_delay(wait_s),
                before_sleep=lambda rs: log.info("waiting for build lock", kernel=release,
                                                  attempt=rs.attempt_number),
                reraise=True):
            with attempt:
                fd = _try_lock(path)
    except BlockingIOError:
        raise NvkmdError(ErrorCode.BUSY, f"{release}: another nvkmd process is building "
                         "this kernel") from None
    try:
        yield
    finally:
        os.close(fd)
