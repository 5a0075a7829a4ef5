"""nvkmd's .deb for the system tests, built the way README says.

NVKMD_DEB names one built beforehand (.ci/run builds it once); otherwise
the tree is copied (tracked and untracked files, not ignored ones) and
`dpkg-buildpackage -us -uc -b` runs in the copy, so the checkout stays
clean.  ``next_version`` builds the same tree with a version above it for
the upgrade test: a new debian/changelog entry in the copy, like a new
upload would have.
"""

from __future__ import annotations

import email.utils
import os
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class DebError(RuntimeError):
    pass


def _copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "-co", "--exclude-standard"],
                           check=True, capture_output=True).stdout.split(b"\0")
    for name in filter(None, files):
        rel = name.decode()
        src = REPO / rel
        if not src.exists() and not src.is_symlink():
            continue              # deleted in the work tree, still in the index
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)


def changelog_version(changelog: Path) -> str:
    m = re.match(r"\S+ \(([^)]+)\)", changelog.read_text())
    if not m:
        raise DebError(f"{changelog}: no version in its first line")
    return m.group(1)


def _bump(tree: Path, suffix: str) -> str:
    cl = tree / "debian" / "changelog"
    text = cl.read_text()
    version = f"{changelog_version(cl)}{suffix}"
    entry = (f"nvkmd ({version}) UNRELEASED; urgency=medium\n\n"
             "  * System test: the next upload, for the upgrade test.\n\n"
             f" -- nvkmd system tests <root@localhost>  {email.utils.formatdate(localtime=True)}\n\n")
    cl.write_text(entry + text)
    return version


def build(workdir: Path, suffix: str = "", timeout: float = 900.0) -> Path:
    """Build the .deb from a copy of the checkout in ``workdir``; its path."""
    if not (REPO / "debian" / "control").exists():
        raise DebError("debian/control is missing: the package recipe is not in this tree")
    if shutil.which("dpkg-buildpackage") is None:
        raise DebError("dpkg-buildpackage missing: scripts/setup installs dpkg-dev and debhelper")
    tree = workdir / "nvkmd"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    _copy_tree(tree)
    if suffix:
        _bump(tree, suffix)
    log = workdir / f"dpkg-buildpackage{suffix}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    # Debian's tools, not the test venv's python on PATH.
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    with log.open("w") as f:
        try:
            p = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=tree, env=env,
                               stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DebError(f"dpkg-buildpackage took more than {timeout:.0f}s; see {log}") from None
    if p.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-30:])
        raise DebError(f"dpkg-buildpackage failed ({p.returncode}); see {log}:\n{tail}")
    version = changelog_version(tree / "debian" / "changelog")
    upstream = version.split(":", 1)[-1]
    debs = sorted(workdir.glob(f"nvkmd_{upstream}_*.deb"))
    if not debs:
        raise DebError(f"dpkg-buildpackage made no nvkmd_{upstream}_*.deb in {workdir}")
    return debs[0]


def deb_version(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True,
                          capture_output=True, text=True).stdout.strip()
