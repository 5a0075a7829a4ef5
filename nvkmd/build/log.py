"""One log file per build, with ``latest.log`` links and rotation.

``<logdir>/<K>/build-YYYYMMDD-HHMMSS.log``; ``<logdir>/<K>/latest.log`` and
``<logdir>/latest.log`` are relative symlinks, replaced with rename(2) so a
reader never sees them missing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import errno
import os
from pathlib import Path
from typing import Callable, Iterator

from nvkmd.errors import ErrorCode, NvkmdError

LATEST = "latest.log"
DEFAULT_MAX_BYTES = 64 << 20
# Past the size cap, the build's last lines are still worth having: the
# final error of a noisy build comes at its end.
KEEP_LAST_LINES = 200
TRUNCATED = "nvkmd: log truncated"
DIAGNOSE_HEAD = 16 << 20
DIAGNOSE_TAIL = 1 << 20
# GetLog: at most this much of a log per call.  Building one answer holds
# a few times this (bytes, text, lines, the marshalled reply) on top of the
# daemon's 30 MiB: at 8 MiB one GetLog(100000) raised its peak by 36 MiB
# (issue 16, P4).  A client that wants more reads the file at @path.
MAX_TAIL_BYTES = 2 << 20
TAIL_BLOCK = 1 << 16


def _enospc(path: Path, e: OSError) -> NvkmdError:
    if e.errno == errno.ENOSPC:
        return NvkmdError(ErrorCode.DISK_FULL, f"no space left on device for the build log {path}")
    return NvkmdError(ErrorCode.INTERNAL, f"cannot write the build log {path}: {e.strerror or e}")


def replace_symlink(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(target, tmp)
    os.replace(tmp, link)


class Attempt:
    """What became of the work in ``with log.attempt() as a:``.  The block
    sets ``a.result``; an NvkmdError out of it leaves "failed" (its message
    goes into the log and no further), a cancellation makes it "cancelled"
    (and goes on)."""

    def __init__(self) -> None:
        self.result = "failed"


class BuildLog:
    def __init__(self, log_dir: Path, kernel: str, keep: int,
                 now: Callable[[], dt.datetime] = dt.datetime.now,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        self.log_dir = log_dir
        self.kernel = kernel
        self.keep = keep
        self.max_bytes = max_bytes
        self._size = 0
        self._dropped = 0
        self._last: collections.deque[str] | None = None     # set once truncated
        self._closing = False
        self.started = now()
        self.dir = log_dir / kernel
        stamp = self.started.strftime("%Y%m%d-%H%M%S")
        self.path = self.dir / f"build-{stamp}.log"
        n = 1
        while self.path.exists():
            n += 1
            self.path = self.dir / f"build-{stamp}-{n}.log"
        self._file = None
        self.failed_write: NvkmdError | None = None

    def open(self, header: dict[str, str]) -> "BuildLog":
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "x", encoding="utf-8", errors="replace", buffering=1)
            # Point the links at the running build, so `tail -f latest.log` follows it.
            replace_symlink(self.dir / LATEST, self.path.name)
            replace_symlink(self.log_dir / LATEST, f"{self.kernel}/{self.path.name}")
        except OSError as e:
            raise _enospc(self.path, e) from None
        self.write(f"# nvkmd build log for {self.kernel}")
        for key, value in header.items():
            self.write(f"# {key}: {value}")
        self.write(f"# started: {self.started.isoformat(timespec='seconds')}")
        self.write("")
        return self

    def write(self, line: str) -> None:
        if self._file is None or self.failed_write:
            return
        line = line.rstrip("\n") + "\n"
        if self._last is not None:
            self._last.append(line)
            self._dropped += 1
            return
        size = len(line.encode(errors="replace"))
        if self._size + size > self.max_bytes and not self._closing:
            self._last = collections.deque([line], maxlen=KEEP_LAST_LINES)
            self._dropped = 1
            self._put(f"{TRUNCATED} at {self.max_bytes // (1 << 20)} MiB (logs.max_mib); "
                      f"the rest of the output is dropped except its last {KEEP_LAST_LINES} lines\n")
            return
        self._size += size
        self._put(line)

    def _put(self, line: str) -> None:
        assert self._file is not None
        try:
            self._file.write(line)
        except OSError as e:
            # Keep building: the build's result matters more than its log,
            # but remember why the log is short.
            self.failed_write = _enospc(self.path, e)

    @contextlib.contextmanager
    def attempt(self) -> Iterator[Attempt]:
        a = Attempt()
        try:
            yield a
        except asyncio.CancelledError:
            a.result = "cancelled"
            raise
        except NvkmdError as e:
            a.result = "failed"
            self.write(e.message if e.message.startswith("nvkmd:") else f"nvkmd: {e.message}")

    def close(self, result: str, elapsed_s: float, extra: dict[str, str] | None = None) -> None:
        if self._last is not None and self._file is not None and not self.failed_write:
            last, self._last = self._last, None
            self._put(f"{TRUNCATED}: {self._dropped - len(last)} lines dropped; "
                      f"the last {len(last)}:\n")
            for line in last:
                self._put(line)
        self._closing = True      # the trailer always goes in
        self.write("")
        for key, value in (extra or {}).items():
            self.write(f"# {key}: {value}")
        self.write(f"# result: {result}")
        self.write(f"# elapsed: {elapsed_s:.1f}s")
        if self._file is not None:
            try:
                self._file.close()
            except OSError as e:
                self.failed_write = self.failed_write or _enospc(self.path, e)
            self._file = None
        self.prune()

    def prune(self) -> None:
        # By age, not name: two builds in one second are build-X.log, build-X-2.log,
        # and "-2" sorts before ".log".
        logs = sorted(self.dir.glob("build-*.log"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        for old in logs[: max(0, len(logs) - self.keep)]:
            try:
                old.unlink()
            except OSError:
                pass

    def text(self) -> str:
        """The log for diagnosis: all of it, or its head and its end when it
        is big (the first errors and the last lines are what count)."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(DIAGNOSE_HEAD)
                size = os.fstat(f.fileno()).st_size
                if size <= DIAGNOSE_HEAD:
                    return head.decode(errors="replace")
                f.seek(max(DIAGNOSE_HEAD, size - DIAGNOSE_TAIL))
                return (head + b"\n" + f.read(DIAGNOSE_TAIL)).decode(errors="replace")
        except OSError:
            return ""


def latest_log(log_dir: Path, kernel: str | None = None) -> Path | None:
    link = (log_dir / kernel / LATEST) if kernel else (log_dir / LATEST)
    return link.resolve() if link.exists() else None


def tail(path: Path, lines: int, max_bytes: int = MAX_TAIL_BYTES) -> list[str]:
    """The last ``lines`` lines of ``path``, read backwards from its end in
    blocks: never more than what is returned (plus one block), and never
    more than ``max_bytes`` whatever the lines' length, so any number of
    concurrent callers on a huge log cost bounded memory."""
    if lines <= 0:
        return []
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        chunks: list[bytes] = []
        newlines = got = 0
        while end > 0 and newlines <= lines and got < max_bytes:
            start = max(0, end - min(TAIL_BLOCK, max_bytes - got))
            f.seek(start)
            chunk = f.read(end - start)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
            got += len(chunk)
            end = start
    data = b"".join(reversed(chunks))
    del chunks                  # each copy is let go as soon as the next is made
    text = data.decode(errors="replace")
    del data
    out = text.splitlines()
    del text
    if end > 0 and out:
        out = out[1:]           # cut in the middle of a line: drop the fragment
    return out[-lines:]
