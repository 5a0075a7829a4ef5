"""The package managers' databases: are they in a transaction, and which
package provides a kernel's headers.

nvkmd never builds while a package manager is in a transaction: the headers
it would build against may be half unpacked, and a build would slow the
transaction down.  Each manager announces its transaction differently:

- dpkg/apt hold an fcntl write lock on ``lock-frontend`` (and dpkg on
  ``lock``) for the whole transaction.  We *probe* it with ``F_GETLK`` on a
  read-only descriptor and never take it: taking it, even briefly, could
  make a starting apt fail with "could not get lock".
- pacman creates ``db.lck`` with O_EXCL and unlinks it at the end.
- rpm holds an fcntl write lock on ``<dbpath>/.rpm.lock``.

The rpm database is only ever read through ``rpm -q`` in a subprocess: the
library's on-disk format and locking are rpm's business.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import os
import re
import struct
import subprocess
import time
from pathlib import Path
from typing import Awaitable, Callable

import structlog
import tenacity

from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.paths import PACKAGED_MODULES_DIR, USR, Paths
from nvkmd.procenv import child_env

log = structlog.get_logger()

# struct flock on Linux (x86_64 and aarch64): short l_type, short l_whence,
# off_t l_start, off_t l_len, pid_t l_pid, padded to 32 bytes.
_FLOCK = "hhqqi4x"

DPKG_LOCKS = ("lock-frontend", "lock")
PACMAN_LOCK = "db.lck"
RPM_LOCK = ".rpm.lock"
RPM_DB_FILES = ("rpmdb.sqlite", "Packages", "Packages.db")


@dataclasses.dataclass(frozen=True)
class Holder:
    """A package manager in a transaction."""
    manager: str        # dpkg | pacman | rpm
    lock: Path
    pid: int            # 0 when the lock does not say

    def describe(self) -> str:
        who = f" (pid {self.pid})" if self.pid > 0 else ""
        return f"{self.manager} lock {self.lock}{who}"


def probe_fcntl(path: Path) -> int | None:
    """The pid holding a conflicting fcntl lock on ``path`` (-1 for an OFD
    lock, which has no pid), or None when nobody holds one.

    O_RDONLY: a probe must not create the file, and its close is an
    IN_CLOSE_NOWRITE, which the watcher ignores, so probing never wakes us.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        l_type, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))
    except OSError:
        return None
    finally:
        os.close(fd)
    return None if l_type == fcntl.F_UNLCK else pid


def rpm_dirs(paths: Paths) -> list[Path]:
    """rpm databases that exist in the root (``var/lib/rpm`` or the newer
    ``usr/lib/sysimage/rpm``)."""
    return [d for d in paths.rpm_dirs if d.is_dir() and
            (any((d / f).exists() for f in RPM_DB_FILES) or (d / RPM_LOCK).exists())]


def holders(paths: Paths) -> list[Holder]:
    """Every package manager currently in a transaction on this root."""
    found = []
    for name in DPKG_LOCKS:
        lock = paths.dpkg_dir / name
        pid = probe_fcntl(lock)
        if pid is not None:
            found.append(Holder("dpkg", lock, pid))
            break
    lck = paths.pacman_dir / PACMAN_LOCK
    if lck.exists():
        found.append(Holder("pacman", lck, 0))
    for d in rpm_dirs(paths):
        pid = probe_fcntl(d / RPM_LOCK)
        if pid is not None:
            found.append(Holder("rpm", d / RPM_LOCK, pid))
    return found


class Locked(Exception):
    def __init__(self, held: list[Holder]):
        super().__init__("; ".join(h.describe() for h in held))
        self.held = held


async def wait_until_free(paths: Paths, max_wait_s: float,
                          sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                          on_wait: Callable[[list[Holder]], None] = lambda held: None,
                          cap_s: float = 10.0) -> float:
    """Return once no package manager holds its lock; the seconds waited.

    Backs off exponentially up to ``cap_s`` between probes; ``sleep`` may
    return early (the daemon wakes it when the watcher sees a lock file
    close).  After ``max_wait_s`` it gives up with Busy: a stale lock must
    not wedge the daemon for ever, and the next event tries again.
    """
    started = time.monotonic()

    def probe() -> None:
        held = holders(paths)
        if held:
            raise Locked(held)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        held = exc.held if isinstance(exc, Locked) else []
        on_wait(held)
        log.info("waiting for package manager", locks="; ".join(h.describe() for h in held),
                 attempt=state.attempt_number,
                 next_probe_s=round(state.next_action.sleep, 2) if state.next_action else 0)

    try:
        async for attempt in tenacity.AsyncRetrying(
                retry=tenacity.retry_if_exception_type(Locked),
                wait=tenacity.wait_exponential(multiplier=0.1, min=0.1, max=cap_s),
                stop=tenacity.stop_after_delay(max_wait_s),
                sleep=sleep, before_sleep=before_sleep, reraise=True):
            with attempt:
                probe()
    except Locked as e:
        raise NvkmdError(ErrorCode.BUSY, f"package manager still busy after {max_wait_s:g}s "
                         f"(daemon.lock_wait_max_s): {e}") from None
    waited = time.monotonic() - started
    return waited


# -- which package provides a kernel's headers ------------------------------

def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _packaged(release: str, leaf: str) -> str:
    """``<modules>/<release>/<leaf>`` as the owner maps below key it (without /usr)."""
    return f"{PACKAGED_MODULES_DIR}/{release}/{leaf}"


class _Cache:
    """Remembers answers per file mtime: a rescan costs a few stat calls."""

    def __init__(self) -> None:
        self._data: dict[tuple, object] = {}

    def get(self, key: tuple, compute: Callable[[], object]) -> object:
        if key not in self._data:
            if len(self._data) > 4096:
                self._data.clear()
            self._data[key] = compute()
        return self._data[key]


_cache = _Cache()


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def dpkg_owners(paths: Paths) -> dict[str, str]:
    """``/lib/modules/<K>/<leaf>`` -> package, for the files that name a
    kernel's headers (``build``) or the kernel itself (``modules.order``),
    read from dpkg's ``info/*.list`` files."""
    info = paths.dpkg_dir / "info"
    owners: dict[str, str] = {}
    try:
        lists = [p for p in info.iterdir() if p.name.endswith(".list")
                 and ("headers" in p.name or "image" in p.name or "linux" in p.name)]
    except OSError:
        return owners
    want = re.compile(r"^(/usr)?/lib/modules/[^/]+/(build|modules\.order)$")

    for lst in lists:
        def compute(lst: Path = lst) -> list[str]:
            return [line for line in _read(lst).splitlines() if want.match(line)]
        pkg = lst.name[:-len(".list")].split(":")[0]   # drop a multiarch qualifier
        for line in _cache.get(("dpkg", str(lst), _mtime(lst)), compute):   # type: ignore[union-attr]
            owners[line.removeprefix(USR)] = pkg
    return owners


def pacman_owners(paths: Paths) -> dict[str, str]:
    """The same, from pacman's ``local/<name>-<ver>-<rel>/{desc,files}``."""
    local = paths.pacman_dir / "local"
    owners: dict[str, str] = {}
    try:
        entries = [d for d in local.iterdir() if d.is_dir()]
    except OSError:
        return owners
    want = re.compile(r"^(usr/)?lib/modules/[^/]+/(build|modules\.order)$")
    for d in entries:
        def compute(d: Path = d) -> tuple[str, list[str]]:
            m = re.search(r"^%NAME%\n(\S+)", _read(d / "desc"), re.M)
            files = [line for line in _read(d / "files").splitlines() if want.match(line)]
            return (m.group(1) if m else "", files)
        name, files = _cache.get(("pacman", str(d), _mtime(d / "files")), compute)  # type: ignore[misc]
        for line in files if name else ():
            owners["/" + line.removeprefix("usr/")] = name
    return owners


def rpm_owner(paths: Paths, db: Path, path: str) -> str:
    """``rpm -qf`` in a subprocess: the package owning ``path``, "" if none."""
    dbpath = paths.system_path(db)
    try:
        proc = subprocess.run(["rpm", "--root", str(paths.root), "--dbpath", dbpath, "-qf",
                               "--qf", "%{NAME}\n", path], capture_output=True, text=True,
                              env=child_env(), timeout=60, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    out = proc.stdout.strip().splitlines()
    return out[0] if proc.returncode == 0 and out and " " not in out[0] else ""


def _headers_name_from_image(manager: str, image_pkg: str, release: str) -> str:
    """The headers package a distribution pairs with a kernel image package."""
    if manager == "dpkg" and image_pkg.startswith("linux-image-"):
        return "linux-headers-" + image_pkg[len("linux-image-"):].removesuffix("-unsigned")
    if manager == "pacman":
        return image_pkg + "-headers"
    if manager == "rpm" and image_pkg in ("kernel", "kernel-core", "kernel-modules-core"):
        return f"kernel-devel-{release}"
    return ""


def headers_packages(paths: Paths, releases: list[str]) -> dict[str, str]:
    """release -> the package providing (or that would provide) its headers,
    where a package database says; releases it cannot name are left out."""
    out: dict[str, str] = {}
    for manager, owners in (("dpkg", dpkg_owners(paths)), ("pacman", pacman_owners(paths))):
        for r in releases:
            if r in out:
                continue
            pkg = owners.get(_packaged(r, "build"))
            image = owners.get(_packaged(r, "modules.order"))
            name = pkg or (image and _headers_name_from_image(manager, image, r))
            if name:
                out[r] = name
    for db in rpm_dirs(paths):
        # sqlite's WAL takes writes first: its mtime moves when the main file's does not.
        stamp = max((_mtime(db / f) for f in (*RPM_DB_FILES, "rpmdb.sqlite-wal")), default=0)
        for r in releases:
            if r in out:
                continue
            def compute(r: str = r, db: Path = db) -> str:
                pkg = rpm_owner(paths, db, _packaged(r, "build"))
                if pkg:
                    return pkg
                image = rpm_owner(paths, db, _packaged(r, "modules.order"))
                return _headers_name_from_image("rpm", image, r) if image else ""
            name = _cache.get(("rpm", str(db), stamp, r), compute)
            if name:
                out[r] = name  # type: ignore[assignment]
    return out
