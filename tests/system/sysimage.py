"""A Debian 12 root for the system tests: bootstrapped once, cached.

debootstrap makes a minimal bookworm with systemd, dbus, logind and polkitd;
then apt inside it installs what nvkmd's package and a kernel build need,
so that each test session only installs nvkmd itself.  Headers for GOOD are
installed; the .debs of the kernel the apt test installs (OTHER) and of
NVIDIA's source are only downloaded, so those tests time apt, not the
network.

The cache is a directory, the lower layer of each container's overlay
(sysnspawn.py), named by a hash of everything that goes into it: changing
a package list makes a new image instead of reusing a stale one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

CACHE = Path(os.environ.get("NVKMD_TEST_CACHE", "/var/cache/nvkmd-test"))
MIRROR = os.environ.get("NVKMD_TEST_MIRROR", "http://deb.debian.org/debian")
SECURITY = os.environ.get("NVKMD_TEST_SECURITY_MIRROR", "http://deb.debian.org/debian-security")

GOOD = "6.1.0-47-amd64"       # headers in the image; NVIDIA 535 builds for it
OTHER = "6.1.0-56-amd64"      # installed by the tests through apt
USER = "alice"                # an unprivileged user with a home

# debootstrap does not resolve virtual packages: polkitd needs a logind,
# which libpam-systemd provides.
BOOTSTRAP = ["systemd", "systemd-sysv", "dbus", "libpam-systemd", "polkitd"]
# What nvkmd's Depends are likely to pull, plus the build tools and GOOD's
# headers; apt installs anything the .deb adds on top.
PROVISION = [
    "python3", "python3-dbus-fast", "python3-structlog", "python3-sdnotify",
    "python3-tenacity", "python3-pyinotify", "python3-systemd",
    "make", "gcc", "libc6-dev", "kmod", "xz-utils", "zstd", "procps",
    f"linux-headers-{GOOD}",
]
DOWNLOAD_ONLY = [f"linux-headers-{OTHER}", "nvidia-open-kernel-source"]
FORMAT = 3                    # bump when the recipe below changes

SOURCES = f"""\
Types: deb
URIs: {MIRROR}
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {SECURITY}
Suites: bookworm-security
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


class ImageError(RuntimeError):
    pass


def image_key() -> str:
    recipe = repr((FORMAT, BOOTSTRAP, PROVISION, DOWNLOAD_ONLY, SOURCES, USER))
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def missing_tools() -> list[str]:
    return [t for t in ("debootstrap", "systemd-nspawn", "nsenter") if shutil.which(t) is None]


def _run(cmd: list[str], log: Path, timeout: float) -> None:
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        try:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ImageError(f"{cmd[0]} took more than {timeout:.0f}s; see {log}") from None
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise ImageError(f"{' '.join(cmd[:3])}... failed with status {proc.returncode}; "
                         f"see {log}:\n{tail}")


def _in_root(root: Path, *argv: str) -> list[str]:
    # Not booted: one command in the root, with the host's network.
    return ["systemd-nspawn", "-q", "-D", str(root), "--register=no", "--keep-unit",
            "--resolv-conf=copy-host", "-E", "DEBIAN_FRONTEND=noninteractive", *argv]


def _build(root: Path, log: Path) -> None:
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(BOOTSTRAP)}",
          "bookworm", str(root), MIRROR], log, timeout=1200)
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(SOURCES)
    apt = ["apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=600", "--no-install-recommends"]
    _run(_in_root(root, "apt-get", "-q", "update"), log, timeout=600)
    _run(_in_root(root, *apt, "install", *PROVISION), log, timeout=1800)
    _run(_in_root(root, *apt, "install", "--download-only", *DOWNLOAD_ONLY), log, timeout=1800)
    _run(_in_root(root, "useradd", "--create-home", "--shell", "/bin/bash", USER), log, timeout=60)
    # A container must not inherit the machine-id of the image (journald
    # and D-Bus key on it); systemd makes a fresh one at each boot.
    (root / "etc/machine-id").write_text("")
    (root / "etc/hostname").write_text("nvkmd-test\n")


def ensure_image() -> Path:
    """The cached root, building it first if needed (minutes, once)."""
    if os.geteuid() != 0:
        raise ImageError("the system tests need root (debootstrap, systemd-nspawn)")
    missing = missing_tools()
    if missing:
        raise ImageError(f"{', '.join(missing)} missing: scripts/setup installs "
                         "debootstrap and systemd-container")
    CACHE.mkdir(parents=True, exist_ok=True)
    final = CACHE / f"bookworm-{image_key()}"
    with open(CACHE / ".lock", "w") as lock:
        # Another session may be building the same image: wait for it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".complete").exists():
            return final
        tmp = CACHE / f"{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        log = CACHE / f"{final.name}.log"
        log.write_text(f"# building {final} at {time.ctime()}\n")
        _build(tmp, log)
        (tmp / ".complete").write_text(f"{time.ctime()}\n")
        tmp.rename(final)
        mounts = Path("/proc/mounts").read_text()
        for old in CACHE.glob("bookworm-*"):
            # Older recipes go, but never one a running container sits on.
            if old.is_dir() and old != final and not old.name.endswith(".tmp") \
                    and f"lowerdir={old}" not in mounts:
                shutil.rmtree(old, ignore_errors=True)
        return final
