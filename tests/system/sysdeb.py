"""nvkmd's .deb for the system tests, built the way README says.

NVKMD_DEB names one built beforehand (.ci/run builds it once); otherwise
scripts/build-deb makes it from this checkout (a clean copy; tracked and
new files).  The upgrade test's "next" package is the same tree with a
higher version, as the next upload would be.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_DEB = REPO / "scripts" / "build-deb"


class DebError(RuntimeError):
    pass


def changelog_version() -> str:
    m = re.match(r"\S+ \(([^)]+)\)", (REPO / "debian" / "changelog").read_text())
    if not m:
        raise DebError("debian/changelog: no version in its first line")
    return m.group(1)


def build(outdir: Path, version: str = "", timeout: float = 900.0) -> Path:
    """scripts/build-deb into ``outdir`` (as ``version`` if given); the .deb."""
    if not BUILD_DEB.exists():
        raise DebError(f"{BUILD_DEB} is missing")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
    if version:
        env["NVKMD_DEB_VERSION"] = version
    try:
        p = subprocess.run(["bash", str(BUILD_DEB), str(outdir)], env=env, capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DebError(f"scripts/build-deb took more than {timeout:.0f}s") from None
    if p.returncode != 0:
        raise DebError(f"scripts/build-deb failed ({p.returncode}):\n{p.stdout[-2000:]}{p.stderr[-4000:]}")
    deb = Path(p.stdout.strip().splitlines()[-1])
    if not deb.is_file():
        raise DebError(f"scripts/build-deb printed {deb}, which is not a file")
    return deb


def deb_version(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True,
                          capture_output=True, text=True).stdout.strip()
