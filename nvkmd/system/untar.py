"""Unpacking a source tarball without letting it write outside its directory.

nvkmd unpacks Debian's nvidia-open-kernel-source tarball as root, so a
member must not land outside the destination (absolute names, ``..``,
links leading out), create device files or FIFOs, or keep set-id bits.
Python 3.11.4 and later do that with ``extractall(filter="data")``;
Debian 12's Python is 3.11.2, which has no ``filter`` argument (a
TypeError), so there the same rules are applied here, member by member.

The daemon runs this file as a short-lived child (system/unpack.py), so it
imports the standard library only: xz's 64 MiB dictionary and a TarInfo
per member then live and die with the child, not in the daemon.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path


class UnsafeMember(tarfile.TarError):
    """A member the data filter's rules refuse (the stdlib raises its own
    FilterError, also a TarError, for the same members)."""


def extract(tarball: Path, dest: Path) -> None:
    with tarfile.open(tarball) as tf:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, filter="data")
        else:
            extract_checked(tf, dest)


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top + os.sep)


def _check(m: tarfile.TarInfo, dest: str) -> None:
    name = m.name
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        raise UnsafeMember(f"member {name!r}: absolute path")
    if ".." in Path(name).parts:
        raise UnsafeMember(f"member {name!r}: contains '..'")
    if m.ischr() or m.isblk() or m.isfifo():
        raise UnsafeMember(f"member {name!r}: device or FIFO")
    if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
        raise UnsafeMember(f"member {name!r}: unsupported type {m.type!r}")
    # realpath follows the links already extracted, so a chain of links
    # that each look harmless cannot lead a later member out either.
    target = os.path.realpath(os.path.join(dest, name))
    if not _inside(target, dest):
        raise UnsafeMember(f"member {name!r}: would be written outside the tree")
    if m.issym() or m.islnk():
        if os.path.isabs(m.linkname):
            raise UnsafeMember(f"member {name!r}: link to an absolute path {m.linkname!r}")
        base = os.path.dirname(target) if m.issym() else dest
        if not _inside(os.path.realpath(os.path.join(base, m.linkname)), dest):
            raise UnsafeMember(f"member {name!r}: link {m.linkname!r} points outside the tree")


def _sanitized(m: tarfile.TarInfo) -> tarfile.TarInfo:
    """The member as the data filter would extract it: no set-id or sticky
    bits, not group/world-writable, owned by whoever unpacks it."""
    m = _copy(m)
    mode = m.mode & 0o755
    if m.isreg():
        if not mode & stat.S_IXUSR:
            mode &= ~0o111
        mode |= 0o600
    m.mode = mode
    m.uid, m.gid = os.getuid(), os.getgid()
    m.uname = m.gname = ""
    return m


def _copy(m: tarfile.TarInfo) -> tarfile.TarInfo:
    import copy
    return copy.copy(m)


def extract_checked(tf: tarfile.TarFile, dest: Path) -> None:
    """Extract member by member, refusing what the data filter refuses.

    Directories get their final mode last (as extractall does), so a
    read-only directory in the archive does not stop its own contents."""
    top = os.path.realpath(dest)
    dirs: list[tarfile.TarInfo] = []
    for member in tf:
        _check(member, top)
        m = _sanitized(member)
        if m.isdir():
            os.makedirs(os.path.join(top, m.name), mode=0o700, exist_ok=True)
            dirs.append(m)
            continue
        tf.extract(m, top, set_attrs=not m.issym(), numeric_owner=True)
    for d in sorted(dirs, key=lambda d: d.name, reverse=True):
        path = os.path.join(top, d.name)
        os.chmod(path, d.mode)
        os.utime(path, (d.mtime, d.mtime))


def main(argv: list[str]) -> int:
    """``untar.py TARBALL DEST``: 0 when unpacked; else 1, and on stdout
    one JSON line {"errno": ..., "message": ...} for the parent."""
    import json
    tarball, dest = argv
    try:
        extract(Path(tarball), Path(dest))
    except (OSError, tarfile.TarError) as e:
        print(json.dumps({"errno": getattr(e, "errno", None), "message": str(e)}), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))
