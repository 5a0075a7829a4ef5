"""What changed on the system, and what to do about it.

Filesystem events are only hints: a package manager creates, renames and
deletes hundreds of entries per transaction, and inotify can overflow.  So
events pass through a pure debouncer, and then the whole system is
rescanned and the new ``Snapshot`` diffed against the previous one.  The
diff names what happened (kernel or headers added/removed, source version
changed); ``plan`` decides which jobs to add and drop.  Only ``scan`` does
I/O.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Iterable

from . import dkms
from . import origin as origins
from . import pkgdb
from . import source as sources
from .cache import build_key
from .config import Config
from .engine import module_is_current
from .errors import NvkmdError
from .kernels import RELEASE_RE, Kernel, list_kernels, release_key
from .modinfo import modinfo, module_name
from .paths import Paths
from .source import Source
from .versions import NVIDIA_MODULE_NAMES


# -- events -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class WatchEvent:
    """One inotify event, as plain data (the watcher builds these)."""
    tag: str                    # what the watched directory is, see Watcher
    path: str                   # the entry the event is about
    name: str                   # its name in the watched directory ("" for the dir itself)
    flags: frozenset[str]       # create delete moved_from moved_to close_write attrib isdir self_gone overflow

    @property
    def overflow(self) -> bool:
        return "overflow" in self.flags


LOCK_NAMES = {"dpkg": set(pkgdb.DPKG_LOCKS), "pacman": {pkgdb.PACMAN_LOCK}, "rpm": {pkgdb.RPM_LOCK}}


def lock_event(ev: WatchEvent) -> bool:
    """A package manager's lock was released (or may have been)."""
    names = LOCK_NAMES.get(ev.tag)
    if not names or ev.name not in names:
        return False
    if ev.tag == "pacman":
        return bool(ev.flags & {"delete", "moved_from"})
    return "close_write" in ev.flags or "delete" in ev.flags


def relevant(ev: WatchEvent) -> bool:
    """Whether ``ev`` can change what a rescan finds.

    Our own work must not count, or every install would trigger a rescan:
    depmod writes ``modules.*`` and the installer ``updates/`` inside kernel
    directories, and ``rpm -q`` writes rpm's sqlite WAL.
    """
    if ev.overflow or "self_gone" in ev.flags and ev.tag in ("modules", "kernel"):
        return True
    if ev.tag == "modules":
        return "isdir" in ev.flags or bool(RELEASE_RE.match(ev.name))
    if ev.tag == "kernel":
        return ev.name in ("build", "source")
    if ev.tag in ("dpkg", "pacman", "rpm"):
        return lock_event(ev) or (ev.tag == "dpkg" and ev.name == "status"
                                  and bool(ev.flags & {"moved_to", "close_write"}))
    if ev.tag == "pacman-local":
        return True
    if ev.tag in ("src", "source"):
        return not ev.name.startswith(".#")      # editors' lock files
    return False


# -- debouncing -----------------------------------------------------------------

class Debouncer:
    """Collapses a burst of events into one rescan.

    Each event pushes the deadline ``quiet_s`` into the future, but never
    past ``max_delay_s`` after the first event of the burst, so a steady
    stream of events cannot postpone the rescan for ever.  ``full`` (inotify
    overflowed: events were lost) is remembered until the rescan is taken.
    The clock is injected, so this is tested without waiting.
    """

    def __init__(self, quiet_s: float, max_delay_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.quiet_s = quiet_s
        self.max_delay_s = max(max_delay_s if max_delay_s is not None else quiet_s * 5, quiet_s)
        self.clock = clock
        self._first: float | None = None
        self._last: float | None = None
        self._full = False
        self._now = False

    def poke(self, *, full: bool = False, now: bool = False) -> None:
        t = self.clock()
        if self._first is None:
            self._first = t
        self._last = t
        self._full |= full
        self._now |= now

    @property
    def pending(self) -> bool:
        return self._first is not None

    def deadline(self) -> float | None:
        """When the rescan is due (clock time), None when nothing is pending."""
        if self._first is None or self._last is None:
            return None
        if self._now:
            return self._first
        return min(self._last + self.quiet_s, self._first + self.max_delay_s)

    def due(self) -> bool:
        d = self.deadline()
        return d is not None and self.clock() >= d

    def take(self) -> bool | None:
        """If due: reset and return whether a full rescan was asked for
        (False for an ordinary one); None when not due."""
        if not self.due():
            return None
        full = self._full
        self._first = self._last = None
        self._full = self._now = False
        return full


# -- snapshots ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class KernelScan:
    release: str
    headers: bool
    headers_package: str        # "" when no package database names it
    current: bool               # nvkmd's module was built from the current source
    build_key: str              # inputs fingerprint, "" without headers or source
    origin: str                 # where the installed nvidia module came from
    module_version: str


@dataclasses.dataclass(frozen=True)
class SourceScan:
    path: str = ""
    version: str = ""
    digest: str = ""
    kind: str = ""
    error: str = ""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    kernels: dict[str, KernelScan]
    source: SourceScan
    source_obj: Source | None = dataclasses.field(default=None, compare=False)
    boot_kernel: str | None = None
    taken_at: float = 0.0

    def releases(self) -> list[str]:
        return sorted(self.kernels, key=release_key, reverse=True)


# -- what changed ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Change:
    kind: str        # kernel-added kernel-removed headers-added headers-removed source-changed
    kernel: str = ""
    old: str = ""    # source-changed: the old and new "version (digest)"
    new: str = ""

    def describe(self) -> str:
        if self.kind == "source-changed":
            return f"source changed from {self.old or 'none'} to {self.new or 'none'}"
        return f"{self.kind.replace('-', ' ')}: {self.kernel}"


def _source_id(s: SourceScan) -> str:
    return f"{s.version} ({s.digest})" if s.version else ""


def diff(old: Snapshot | None, new: Snapshot) -> list[Change]:
    """Pure: the changes from ``old`` (None: nothing known yet) to ``new``."""
    before = old.kernels if old else {}
    out: list[Change] = []
    for r in sorted(set(before) | set(new.kernels), key=release_key):
        a, b = before.get(r), new.kernels.get(r)
        if a is None and b is not None:
            out.append(Change("kernel-added", r))
            if b.headers:
                out.append(Change("headers-added", r))
        elif a is not None and b is None:
            out.append(Change("kernel-removed", r))
        elif a is not None and b is not None and a.headers != b.headers:
            out.append(Change("headers-added" if b.headers else "headers-removed", r))
    old_id = _source_id(old.source) if old else ""
    new_id = _source_id(new.source)
    if old is not None and old_id != new_id:
        out.append(Change("source-changed", old=old_id, new=new_id))
    return out


# -- what to do about it --------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ActiveJob:
    id: int
    kernel: str
    source_version: str
    running: bool


@dataclasses.dataclass(frozen=True)
class PastJob:
    """The newest finished job for a (kernel, source version) pair."""
    result: str
    build_key: str              # "" when the job does not hold back a retry


@dataclasses.dataclass(frozen=True)
class Plan:
    add: list[tuple[str, str]]          # (kernel, reason)
    drop: list[tuple[int, str]]         # (job id, cause)


def plan(snap: Snapshot, active: Iterable[ActiveJob], past: dict[tuple[str, str], PastJob],
         changes: list[Change], initial: bool = False) -> Plan:
    """Pure: which jobs to drop and which kernels to queue.

    A kernel is queued when it has headers, its module is not current and
    no job for it with this source version is active; unless the last job
    for exactly these inputs (``build_key``) already ran: a failed pair is
    not retried in a loop, only when the headers or the source change (the
    key changes), when the kernel or its headers come back (removed and
    installed again, perhaps with its modules cleaned up meanwhile), or on
    request.  ``initial``: the changes are the first scan's, where every
    kernel is "added"; that is no reason to retry anything.
    """
    version = snap.source.version
    drop: list[tuple[int, str]] = []
    kept: set[tuple[str, str]] = set()
    for job in active:
        k = snap.kernels.get(job.kernel)
        if k is None:
            drop.append((job.id, "kernel removed"))
        elif not k.headers:
            drop.append((job.id, "headers removed"))
        elif not version:
            drop.append((job.id, f"no driver source: {snap.source.error}"))
        elif job.source_version != version:
            drop.append((job.id, f"superseded by source version {version}"))
        else:
            kept.add((job.kernel, job.source_version))
    add: list[tuple[str, str]] = []
    if not version:
        return Plan(add, drop)
    why: dict[str, str] = {}
    for c in changes:
        if c.kernel and c.kind.endswith("-added"):
            why.setdefault(c.kernel, c.describe())      # "kernel added" over "headers added"
    source_change = next((c.describe() for c in changes if c.kind == "source-changed"), "")
    for r in snap.releases():
        k = snap.kernels[r]
        if not k.headers or k.current or (r, version) in kept:
            continue
        last = past.get((r, version))
        came_back = r in why and not initial
        if last is not None and last.build_key and last.build_key == k.build_key and not came_back:
            continue
        add.append((r, why.get(r) or source_change or "module missing or out of date"))
    return Plan(add, drop)


# -- the scan (I/O) ---------------------------------------------------------------

def installed_releases(paths: Paths) -> list[str]:
    return [k.release for k in list_kernels(paths)]


def _kernel_scan(paths: Paths, release: str, src: Source | None, package: str,
                 backend: dkms.DkmsBackend | None = None,
                 reg: dkms.Registration | None = None) -> KernelScan:
    k = Kernel(paths, release)
    headers = k.headers is not None
    # Built through DKMS (dkms.choose), current means DKMS has it installed.
    current = bool(src) and (backend.is_current(k, src, reg) if backend and reg  # type: ignore[arg-type]
                             else module_is_current(k, src))                     # type: ignore[arg-type]
    key = ""
    if headers and src is not None:
        try:
            key = build_key(k, src)
        except (OSError, NvkmdError):
            key = ""
    origin, files, _ = origins.details(paths, release)
    version = ""
    for f in files:
        if module_name(f) in NVIDIA_MODULE_NAMES:    # Debian's DKMS renames it
            try:
                version = modinfo(f).get("version", "")
            except NvkmdError:
                pass
            break
    return KernelScan(release, headers, package, current, key, origin, version)


def scan_source(paths: Paths, config: Config) -> tuple[SourceScan, Source | None]:
    try:
        src = sources.discover(paths, config)
    except NvkmdError as e:
        return SourceScan(error=e.message), None
    return SourceScan(str(src.origin), src.version, src.digest, src.kind), src


def scan(paths: Paths, config: Config) -> Snapshot:
    """Look at everything once (in a worker thread: it reads many files)."""
    from .boot import default_boot_kernel
    src_scan, src = scan_source(paths, config)
    releases = installed_releases(paths)
    packages = pkgdb.headers_packages(paths, releases)
    reg = dkms.choose(config.build_backend, paths, src).registration if src else None
    backend = dkms.DkmsBackend(paths, config.build_timeout_s) if reg else None
    kernels = {r: _kernel_scan(paths, r, src, packages.get(r, ""), backend, reg) for r in releases}
    return Snapshot(kernels, src_scan, src, default_boot_kernel(paths, releases), time.time())


def watch_spec(paths: Paths, config: Config, snap: Snapshot | None) -> dict[Path, tuple[str, bool]]:
    """Directory -> (tag, recursive) for everything the watcher should watch."""
    spec: dict[Path, tuple[str, bool]] = {}
    for d in paths.modules_dirs:
        if d.is_dir() and not d.is_symlink():
            spec[d] = ("modules", False)
            try:
                for e in d.iterdir():
                    if RELEASE_RE.match(e.name) and e.is_dir() and not e.is_symlink():
                        spec[e] = ("kernel", False)
            except OSError:
                pass
    if paths.dpkg_dir.is_dir():
        spec[paths.dpkg_dir] = ("dpkg", False)
    if paths.pacman_dir.is_dir():
        spec[paths.pacman_dir] = ("pacman", False)
        if (paths.pacman_dir / "local").is_dir():
            spec[paths.pacman_dir / "local"] = ("pacman-local", False)
    for d in paths.rpm_dirs:
        if d.is_dir():
            spec[d] = ("rpm", False)
    if paths.src_dir.is_dir():
        spec[paths.src_dir] = ("src", False)
    # The source in use, and whatever the configuration names: an upgrade
    # rewrites files inside the tree (a git pull, a new DKMS tree).
    targets = []
    if config.source_path != "auto":
        targets.append(paths.at(config.source_path))
    if snap and snap.source_obj is not None:
        targets.append(snap.source_obj.origin)
    for t in targets:
        if t.is_dir():
            spec.setdefault(t, ("source", True))
        if t.parent.is_dir():
            spec.setdefault(t.parent, ("src", False))
    return spec
