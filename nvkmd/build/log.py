"""One log file per build, with ``latest.log`` links and rotation.

``<logdir>/<K>/build-YYYYMMDD-HHMMSS.log``; ``<logdir>/<K>/latest.log`` and
``<logdir>/latest.log`` are relative symlinks, replaced with rename(2) so a
reader never sees them missing.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
from pathlib import Path
from typing import Callable

from nvkmd.errors import ErrorCode, NvkmdError

LATEST = "latest.log"


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


class BuildLog:
    def __init__(self, log_dir: Path, kernel: str, keep: int,
                 now: Callable[[], dt.datetime] = dt.datetime.now):
        self.log_dir = log_dir
        self.kernel = kernel
        self.keep = keep
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
        try:
            self._file.write(line.rstrip("\n") + "\n")
        except OSError as e:
            # Keep building: the build's result matters more than its log,
            # but remember why the log is short.
            self.failed_write = _enospc(self.path, e)

    def close(self, result: str, elapsed_s: float, extra: dict[str, str] | None = None) -> None:
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
        try:
            return self.path.read_text(errors="replace")
        except OSError:
            return ""


def latest_log(log_dir: Path, kernel: str | None = None) -> Path | None:
    link = (log_dir / kernel / LATEST) if kernel else (log_dir / LATEST)
    return link.resolve() if link.exists() else None


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path`` without reading all of a big log."""
    if lines <= 0:
        return []
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        block, data = 65536, b""
        while end > 0 and data.count(b"\n") <= lines:
            start = max(0, end - block)
            f.seek(start)
            data = f.read(end - start) + data
            end = start
    return data.decode(errors="replace").splitlines()[-lines:]
