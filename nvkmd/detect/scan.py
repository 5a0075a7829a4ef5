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

import time
from pathlib import Path

from nvkmd.config import Config
from nvkmd.detect.keys import build_key
from nvkmd.detect.snapshot import KernelScan, Snapshot, SourceScan
from nvkmd.errors import NvkmdError
from nvkmd.inspect import origin as origins
from nvkmd.inspect.versions import NVIDIA_MODULE_NAMES
from nvkmd.paths import Paths
from nvkmd.system import dkms, pkgdb
from nvkmd.system import source as sources
from nvkmd.system.installed import module_is_current
from nvkmd.limits import RELEASE_RE
from nvkmd.system.kernels import Kernel, list_kernels
from nvkmd.system.modinfo import modinfo, module_name
from nvkmd.system.source import Source

# -- events -------------------------------------------------------------------


# -- debouncing -----------------------------------------------------------------


# -- snapshots ------------------------------------------------------------------


# -- what changed ---------------------------------------------------------------


# -- what to do about it --------------------------------------------------------


# -- the scan (I/O) ---------------------------------------------------------------

def installed_releases(paths: Paths) -> list[str]:
    return [k.release for k in list_kernels(paths)]


def _kernel_scan(paths: Paths, release: str, src: Source | None, package: str,
                 reg: dkms.Registration | None = None) -> KernelScan:
    k = Kernel(paths, release)
    headers = k.headers is not None
    # Built through DKMS (dkms.choose), current means DKMS has it installed.
    current = bool(src) and (dkms.is_current(paths, k, src, reg) if reg  # type: ignore[arg-type]
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
    from nvkmd.inspect.nextboot import next_boot
    src_scan, src = scan_source(paths, config)
    releases = installed_releases(paths)
    packages = pkgdb.headers_packages(paths, releases)
    reg = dkms.choose(config.build_backend, paths, src).registration if src else None
    kernels = {r: _kernel_scan(paths, r, src, packages.get(r, ""), reg) for r in releases}
    nb = next_boot(paths, releases)
    return Snapshot(kernels, src_scan, src, nb.kernel if nb.kernel and not nb.guess else None,
                    time.time(), nb)


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
    # What the boot loader starts next: grubenv, grub.cfg, /etc/default/grub,
    # loader.conf and the BLS entries (EFI variables cannot be watched).
    boot = [paths.grub_dir, paths.grub_default_file.parent, paths.grub_default_dropins,
            *paths.bls_entries_dirs, *(c / "loader" for c in paths.esp_candidates)]
    for d in boot:
        if d.is_dir() and not d.is_symlink():
            spec.setdefault(d, ("boot", False))
    return spec
