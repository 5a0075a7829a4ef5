"""Where a kernel's nvidia module came from: ``origin.of(paths, release)``.

* ``nvkmd``: ``updates/nvkmd`` with nvkmd's manifest;
* ``dkms``: DKMS's tree marks an nvidia module installed for the kernel, or
  modules lie in DKMS's install directory ``updates/dkms``;
* ``distro``: a module elsewhere (``kernel/``, ``extra/``, ``updates/``) that
  the package manager says a package owns;
* ``manual``: a module nobody owns (copied by hand, ``make modules_install``);
* ``none``: no nvidia module at all.

When several are present, the first in that order is reported (and the
conflict is for ``fix``/``dkms`` to resolve).  ``of`` is cheap: a few stats
for the usual answers; the package database is asked (in a subprocess,
memoised per file and mtime) only for a module outside nvkmd's and DKMS's
directories.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from nvkmd.paths import USR, Paths
from nvkmd.procenv import child_env
from nvkmd.system import dkms
from nvkmd.system.installed import MANIFEST
from nvkmd.system.kernels import NVKMD_SUBDIR, Kernel, check_release
from nvkmd.system.modinfo import MODULE_SUFFIXES

_owner_cache: dict[tuple[str, int], str] = {}


def of(paths: Paths, release: str) -> str:
    """One of model.ORIGINS for the kernel ``release``."""
    return details(paths, release)[0]


def details(paths: Paths, release: str) -> tuple[str, list[Path], str]:
    """(origin, the module files that decided it, owning package or DKMS module)."""
    kernel = Kernel(paths, check_release(release))
    ours = kernel.nvkmd_dir
    if (ours / MANIFEST).is_file():
        return "nvkmd", _modules_in(ours), "nvkmd"
    owned = dkms.installed(paths, release)
    files = dkms.installed_files(paths, kernel)
    if owned or files:
        return "dkms", files, ", ".join(f"{n}/{v}" for n, v in owned)
    others = [p for p in dkms.nvidia_module_files(kernel.dir)
              if not _under(p, kernel.dir / NVKMD_SUBDIR)]
    if not others:
        return "none", [], ""
    for p in others:
        pkg = package_owner(paths, p)
        if pkg:
            return "distro", others, pkg
    return "manual", others, ""


def _under(p: Path, d: Path) -> bool:
    return d in p.parents


def _modules_in(d: Path) -> list[Path]:
    try:
        return sorted(p for p in d.iterdir() if p.name.endswith(MODULE_SUFFIXES))
    except OSError:
        return []


def package_owner(paths: Paths, path: Path) -> str:
    """The package that owns ``path`` according to dpkg, pacman or rpm, or ""."""
    try:
        key = (str(path), path.stat().st_mtime_ns)
    except OSError:
        return ""
    if key not in _owner_cache:
        _owner_cache[key] = _ask_owner(paths, path)
    return _owner_cache[key]


def _ask_owner(paths: Paths, path: Path) -> str:
    sys_path = paths.system_path(path)
    # dpkg's file lists may spell either side of the merged-/usr link.
    alt = sys_path.removeprefix(USR) if sys_path.startswith(USR + "/") else USR + sys_path
    if (paths.dpkg_dir / "status").is_file() and shutil.which("dpkg-query"):
        for p in (sys_path, alt):
            out = _run(["dpkg-query", f"--admindir={paths.dpkg_dir}", "-S", p])
            if out:
                return out.split(":", 1)[0].split(",")[0].strip()
    if (paths.pacman_dir / "local").is_dir() and shutil.which("pacman"):
        out = _run(["pacman", "--root", str(paths.root), "--dbpath", str(paths.pacman_dir),
                    "-Qqo", str(path)])
        if out:
            return out.split()[0]
    if shutil.which("rpm"):
        for db in paths.rpm_dirs:
            if db.is_dir():
                out = _run(["rpm", "--root", str(paths.root), "--dbpath",
                            paths.system_path(db), "-qf", "--qf", "%{NAME}\n", sys_path])
                if out and "not owned" not in out:
                    return out.split()[0]
    return ""


def _run(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(),
                              stdin=subprocess.DEVNULL, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""
