"""Do the kernel module, the user-space driver and the GSP firmware agree?

NVIDIA's open modules only work with user-space libraries and GSP firmware
of exactly the same release.  This reads:

* the installed module's version (``.modinfo`` of ``nvidia.ko*``);
* the user-space driver's version from the library file names
  (``libnvidia-*.so.<ver>``, ``libcuda.so.<ver>``) in the library
  directories, else from the package database (dpkg, pacman, rpm);
* whether ``<firmware>/nvidia/<ver>/gsp_*.bin`` exists for the module's version;

and says what to do when they disagree.  ``compare`` is the pure part.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from nvkmd.errors import NvkmdError
from nvkmd.paths import Paths
from nvkmd.procenv import child_env
from nvkmd.system.kernels import Kernel, release_key
from nvkmd.system.modinfo import modinfo

if TYPE_CHECKING:
    from nvkmd.config import Config
    from nvkmd.model import DriverInfo

_LIB_RE = re.compile(r"^(?:libcuda|libnvidia-[A-Za-z0-9_-]+)\.so\.(\d+\.\d+(?:\.\d+)?)$")
# Packages whose version is the user-space driver's, per package manager.
DPKG_PACKAGES = ("libnvidia-glcore", "libcuda1", "nvidia-driver-libs", "libnvidia-eglcore")
PACMAN_PACKAGES = ("nvidia-utils",)
RPM_PACKAGES = ("nvidia-driver-libs", "xorg-x11-drv-nvidia-libs", "nvidia-driver-cuda-libs")


@dataclasses.dataclass(frozen=True)
class Versions:
    module: str                # "" when no nvidia module is installed
    userspace: str             # "" when no user-space driver is found
    userspace_from: str        # "libraries" | "dpkg" | "pacman" | "rpm" | ""
    firmware: str              # "present" | "missing" | "" (no module version to look for)
    firmware_dir: str
    consistent: bool
    hint: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def compare(module: str, userspace: str, firmware_present: bool | None) -> tuple[bool, str]:
    """(consistent, hint) — pure."""
    if not module:
        return True, ""
    problems = []
    if userspace and userspace != module:
        newer = "module" if release_key(module) > release_key(userspace) else "user-space driver"
        problems.append(f"the kernel module is {module} but the user-space driver is {userspace} "
                        f"(the {newer} is newer): install the same release of both, or the "
                        "driver will refuse to load (API mismatch)")
    if firmware_present is False:
        problems.append(f"the GSP firmware for {module} is missing: install it "
                        f"(e.g. firmware-nvidia-gsp {module}), or the GPU will not initialise")
    return not problems, "; ".join(problems)


NVIDIA_MODULE_NAMES = ("nvidia", "nvidia-current", "nvidia-current-open")   # Debian renames it


def nvidia_module(paths: Paths, release: str) -> Path | None:
    """The ``nvidia`` module modprobe would load for ``release``: ``updates/``
    before everything else, as depmod's default search order."""
    from nvkmd.system.dkms import nvidia_module_files
    kernel = Kernel(paths, release)
    found = [p for p in nvidia_module_files(kernel.dir)
             if p.name.split(".ko")[0] in NVIDIA_MODULE_NAMES]
    found.sort(key=lambda p: (0 if "/updates/" in str(p) else 1, str(p)))
    return found[0] if found else None


def module_version(paths: Paths, release: str) -> str:
    p = nvidia_module(paths, release)
    if p is None:
        return ""
    try:
        return modinfo(p).get("version", "")
    except NvkmdError:
        return ""


def relevant_kernel(paths: Paths) -> str:
    """The kernel whose module matters: the running one if it has a module,
    else the newest kernel that has one, else the running one."""
    from nvkmd.system.kernels import list_kernels
    running = paths.running_kernel()
    for r in [running] + [k.release for k in list_kernels(paths)]:
        try:
            if nvidia_module(paths, r) is not None:
                return r
        except NvkmdError:
            continue
    return running


def userspace_from_libraries(paths: Paths) -> str:
    counts: collections.Counter[str] = collections.Counter()
    for d in paths.library_dirs:
        try:
            names = [e.name for e in d.iterdir()]
        except OSError:
            continue
        for n in names:
            m = _LIB_RE.match(n)
            if m:
                counts[m.group(1)] += 1
    if not counts:
        return ""
    # The release with the most libraries; ties go to the newest.
    return max(counts, key=lambda v: (counts[v], release_key(v)))


def _run(cmd: list[str]) -> str:
    """The command's output; package queries exit 1 when some names are not
    installed but still print the ones that are."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=child_env(),
                           stdin=subprocess.DEVNULL, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return p.stdout if p.returncode in (0, 1) else ""


def _upstream(version: str) -> str:
    """``535.261.03-1`` / ``1:535.261.03-1~deb12u1`` -> ``535.261.03``."""
    v = version.split(":", 1)[-1]
    m = re.match(r"^(\d+(?:\.\d+)+)", v)
    return m.group(1) if m else ""


def userspace_from_packages(paths: Paths) -> tuple[str, str]:
    if (paths.dpkg_dir / "status").is_file() and shutil.which("dpkg-query"):
        out = _run(["dpkg-query", f"--admindir={paths.dpkg_dir}", "-W",
                    "-f", "${db:Status-Abbrev} ${Version}\\n", *DPKG_PACKAGES])
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith("ii") and _upstream(parts[-1]):
                return _upstream(parts[-1]), "dpkg"
    if (paths.pacman_dir / "local").is_dir() and shutil.which("pacman"):
        out = _run(["pacman", "--root", str(paths.root), "--dbpath", str(paths.pacman_dir),
                    "-Q", *PACMAN_PACKAGES])
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and _upstream(parts[1]):
                return _upstream(parts[1]), "pacman"
    if shutil.which("rpm"):
        for db in paths.rpm_dirs:
            if not db.is_dir():
                continue
            dbpath = paths.system_path(db)
            out = _run(["rpm", "--root", str(paths.root), "--dbpath", dbpath, "-q",
                        "--qf", "%{VERSION}\\n", *RPM_PACKAGES])
            for line in out.splitlines():
                if _upstream(line.strip()):
                    return _upstream(line.strip()), "rpm"
    return "", ""


def gsp_firmware(paths: Paths, version: str) -> list[Path]:
    d = paths.firmware_dir / "nvidia" / version
    try:
        return sorted(p for p in d.iterdir() if p.name.startswith("gsp_") and ".bin" in p.name)
    except OSError:
        return []


def check(paths: Paths, module: str) -> Versions:
    """The report for a module version (``module_version`` of the kernel that matters)."""
    userspace, where = userspace_from_libraries(paths), "libraries"
    if not userspace:
        userspace, where = userspace_from_packages(paths)
    present = bool(gsp_firmware(paths, module)) if module else None
    ok, hint = compare(module, userspace, present)
    return Versions(module, userspace, where if userspace else "",
                    "" if present is None else "present" if present else "missing",
                    str(paths.firmware_dir / "nvidia" / module) if module else "", ok, hint)


def driver_info(paths: Paths, config: "Config") -> "DriverInfo":
    """Versions and Secure Boot in one record, for ``status`` (a few
    subprocesses: call it once per rescan, not per request)."""
    from nvkmd.inspect import secureboot
    from nvkmd.model import DriverInfo
    release = relevant_kernel(paths)
    try:
        module = nvidia_module(paths, release)
    except NvkmdError:
        module = None
    v = check(paths, module_version(paths, release) if module else "")
    sb = secureboot.check(paths, config, module)
    keys = {c.enrolled for c in sb.certs}
    signing = "" if not keys else "not enrolled" if "no" in keys else \
        "unknown" if "unknown" in keys else "enrolled"
    if sb.module is None:
        signature = ""
    elif not sb.module.signed:
        signature = "unsigned"
    else:
        signature = {"yes": "signed, key enrolled", "no": "signed, key not enrolled"}.get(
            sb.module.enrolled, "signed")
    hint = "; ".join(h for h in (v.hint, sb.hint) if h)
    return DriverInfo(release if module else "", v.module, v.userspace, v.userspace_from,
                      v.firmware, sb.state, signing, signature, hint)
