"""Checking every member of a headers package before it is unpacked, in a
short-lived child process.

tarfile keeps a TarInfo per member while the archive is open: listing
linux-headers-6.1.0-47-common (10,000 members) raised the daemon's peak
memory by 6.6 MiB at every preflight (issue 16, P4).  The child runs this
file as a script with ``-I``, so it imports the standard library only.
"""

from __future__ import annotations

import json
import posixpath
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tarfile

TIMEOUT_S = 300


def _inside(path: str) -> bool:
    return path != ".." and not path.startswith("../")


def check_member(m: tarfile.TarInfo) -> str | None:
    """Why this member must not be unpacked, or None."""
    name = m.name
    if name.startswith("/"):
        return f"absolute path {name!r}"
    parts = name.split("/")
    if ".." in parts:
        return f"'..' in {name!r}"
    if m.ischr() or m.isblk() or m.isfifo() or m.isdev():
        return f"device or FIFO {name!r}"
    if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
        return f"unsupported member type of {name!r}"
    rel = posixpath.normpath(name)
    if m.issym():
        target = m.linkname
        # An absolute target is read inside the unpacked root, as the
        # system the package is for would read it.
        resolved = posixpath.normpath(target.lstrip("/")) if target.startswith("/") \
            else posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
        if target.startswith("/") and ".." in target.split("/"):
            return f"link {name!r} -> {target!r} leads out of the package"
        if not _inside(resolved):
            return f"link {name!r} -> {target!r} leads out of the package"
    if m.islnk():
        target = posixpath.normpath(m.linkname.lstrip("./") if m.linkname.startswith("./")
                                    else m.linkname)
        if m.linkname.startswith("/") or not _inside(target):
            return f"hard link {name!r} -> {m.linkname!r} leads out of the package"
    if m.mode & 0o6000 and m.isfile():
        return f"set-user/group-ID file {name!r}"
    return None


def check_tar(tar: Path) -> dict:
    """{"count": members} when every member is safe, {"refused": why} at the
    first that is not, {"error": why} when the archive cannot be listed."""
    import tarfile
    count = 0
    try:
        with tarfile.open(tar) as tf:
            for m in tf:
                count += 1
                # tar members of a .deb read "./usr/...": the leading "./" is the root.
                if m.name in (".", "./"):
                    continue
                m.name = m.name[2:] if m.name.startswith("./") else m.name
                why = check_member(m)
                if why:
                    return {"refused": why}
    except tarfile.TarError as e:
        return {"error": str(e)}
    return {"count": count}


def in_child(tar: Path, timeout: float = TIMEOUT_S) -> dict:
    """check_tar(tar), run in a child; an {"error": ...} when the child fails."""
    try:
        proc = subprocess.run([sys.executable, "-I", str(Path(__file__)), str(tar)],
                              capture_output=True, text=True, errors="replace",
                              stdin=subprocess.DEVNULL, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"listing it took over {timeout:g}s"}
    try:
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
        if isinstance(answer, dict) and answer.keys() & {"count", "refused", "error"}:
            return answer
    except (ValueError, IndexError):
        pass
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
    return {"error": f"the checker exited with {proc.returncode}: {' '.join(tail) or 'no output'}"}


if __name__ == "__main__":
    print(json.dumps(check_tar(Path(sys.argv[1]))))
