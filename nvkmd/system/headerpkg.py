"""Kernel headers packages that are not installed: checked, unpacked into a
private directory, and found again as a headers tree.

The members of every archive are read and checked before anything is
unpacked: an absolute name, a ``..`` component, a link that leads out of
the unpacked root, a device file or a FIFO refuses the whole package.  The
unpacking itself is done by the package format's own tool (``dpkg-deb
-x``; ``bsdtar`` for Arch's ``.pkg.tar.zst`` and, after ``rpm2cpio``, for
``.rpm``).  Any failure removes the private directory again.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.paths import Paths
from nvkmd.procenv import child_env
from nvkmd.limits import RELEASE_RE
from nvkmd.system import tarcheck
from nvkmd.system.kernels import Kernel, release_key

FORMATS = {".deb": "deb", ".pkg.tar.zst": "pacman", ".pkg.tar.xz": "pacman", ".rpm": "rpm"}
# Where a headers package puts the kernel's build tree (Debian: a link in
# lib/modules; Arch and Fedora: a directory or link under usr/lib/modules).
MODULE_DIRS = ("lib/modules", "usr/lib/modules")
# Unpacking a multi-megabyte headers package takes seconds; minutes means a
# stuck tool.
TOOL_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class Unpacked:
    """A private root holding one kernel's headers as its packages lay them out."""
    root: Path
    release: str
    packages: tuple[str, ...]     # file names of the archives unpacked into it
    owned: bool = True            # the root is ours to remove afterwards

    def remove(self) -> None:
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def kernel(self) -> Kernel:
        # A Paths rooted at the private directory: Kernel reads Debian's
        # absolute build/source links inside it, never on the real system.
        return Kernel(Paths.build(self.root), self.release)


def refuse(message: str) -> NvkmdError:
    return NvkmdError(ErrorCode.INVALID_ARGUMENT, message)


def format_of(path: Path) -> str:
    for suffix, fmt in FORMATS.items():
        if path.name.endswith(suffix):
            return fmt
    raise refuse(f"{path}: not a kernel headers package (expected .deb, .pkg.tar.zst or .rpm)")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, env=child_env(), timeout=TOOL_TIMEOUT_S, check=False, **kw)
    except FileNotFoundError:
        raise NvkmdError(ErrorCode.NOT_SUPPORTED, f"{cmd[0]} is not installed; it is needed "
                         "to read this package") from None
    except subprocess.TimeoutExpired:
        raise NvkmdError(ErrorCode.TIMEOUT, f"{cmd[0]} did not finish in {TOOL_TIMEOUT_S}s") from None


def _as_tar(archive: Path, fmt: str, out: Path) -> None:
    """The archive's file system as one plain tar file, for the check."""
    with open(out, "wb") as f:
        if fmt == "deb":
            proc = _run(["dpkg-deb", "--fsys-tarfile", str(archive)], stdout=f, stderr=subprocess.PIPE)
        elif fmt == "pacman":
            proc = _run(["bsdtar", "-cf", "-", "--format=pax", f"@{archive}"], stdout=f,
                        stderr=subprocess.PIPE)
        else:
            cpio = subprocess.Popen(["rpm2cpio", str(archive)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=child_env())
            try:
                proc = _run(["bsdtar", "-cf", "-", "--format=pax", "@-"], stdin=cpio.stdout,
                            stdout=f, stderr=subprocess.PIPE)
            finally:
                assert cpio.stdout is not None
                cpio.stdout.close()
                cpio_err = cpio.stderr.read().decode(errors="replace") if cpio.stderr else ""
                if cpio.wait() != 0:
                    raise refuse(f"{archive}: rpm2cpio cannot read it: {cpio_err.strip()[:300]}")
    if proc.returncode != 0:
        raise refuse(f"{archive}: not a readable {fmt} package: "
                     f"{proc.stderr.decode(errors='replace').strip()[:300]}")


def check_archive(archive: Path, fmt: str, scratch: Path) -> int:
    """Refuse the archive unless every member is safe; returns the member count.
    The members are listed by a child (tarcheck.py), not in the daemon."""
    tar = scratch / f".{archive.name}.tar"
    try:
        _as_tar(archive, fmt, tar)
        answer = tarcheck.in_child(tar)
    finally:
        tar.unlink(missing_ok=True)
    if "error" in answer:
        raise refuse(f"{archive}: cannot list its files: {answer['error']}")
    if "refused" in answer:
        raise refuse(f"{archive.name}: refused: {answer['refused']}")
    return int(answer["count"])


def _extract(archive: Path, fmt: str, dest: Path) -> None:
    if fmt == "deb":
        proc = _run(["dpkg-deb", "-x", str(archive), str(dest)], capture_output=True)
    elif fmt == "pacman":
        proc = _run(["bsdtar", "-xf", str(archive), "-C", str(dest), "--no-same-owner",
                     "--exclude", ".PKGINFO", "--exclude", ".BUILDINFO", "--exclude", ".MTREE",
                     "--exclude", ".INSTALL"], capture_output=True)
    else:
        cpio = subprocess.Popen(["rpm2cpio", str(archive)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=child_env())
        try:
            proc = _run(["bsdtar", "-xf", "-", "-C", str(dest), "--no-same-owner"],
                        stdin=cpio.stdout, capture_output=True)
        finally:
            assert cpio.stdout is not None
            cpio.stdout.close()
            cpio.wait()
    if proc.returncode != 0:
        raise refuse(f"{archive.name}: unpacking failed: "
                     f"{proc.stderr.decode(errors='replace').strip()[:300]}")


def _relink(root: Path) -> None:
    """Turn absolute links into relative ones inside ``root``.

    make and gcc follow links through the real file system: an absolute
    link such as Debian's ``lib/modules/<K>/build -> /usr/src/linux-headers-<K>``
    would lead them to the installed system, which may hold another
    release of the same tree or nothing at all.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                continue
            target = os.readlink(p)
            if target.startswith("/"):
                inside = root / target.lstrip("/")
                p.unlink()
                os.symlink(os.path.relpath(inside, p.parent), p)
    _rewrite_includes(root)


_INCLUDE_RE = re.compile(r"^include\s+(/\S+)\s*$", re.M)


def _rewrite_includes(root: Path) -> None:
    """Debian's arch headers Makefile is one line, ``include /usr/src/
    linux-headers-<ver>-common/Makefile``: point it into the private root."""
    for d in ("usr/src", "usr/lib/modules", "lib/modules"):
        base = root / d
        if not base.is_dir():
            continue
        for mk in base.glob("*/Makefile"):
            if mk.is_symlink() or not mk.is_file() or mk.stat().st_size > 4096:
                continue
            text = mk.read_text(errors="replace")

            def inside(m: re.Match) -> str:
                target = root / m.group(1).lstrip("/")
                return f"include {target}" if target.is_file() else m.group(0)
            new = _INCLUDE_RE.sub(inside, text)
            if new != text:
                mk.write_text(new)


def releases_in(root: Path) -> list[str]:
    """Kernel releases whose headers tree (Makefile and .config) the root holds."""
    found = []
    paths = Paths.build(root)
    for d in MODULE_DIRS:
        base = root / d
        if not base.is_dir():
            continue
        for e in base.iterdir():
            if RELEASE_RE.match(e.name) and Kernel(paths, e.name).headers is not None:
                found.append(e.name)
    return sorted(set(found), key=release_key, reverse=True)


def unpack(archives: list[Path], work: Path, release: str | None = None) -> Unpacked:
    """Check, then unpack ``archives`` into one new private directory under
    ``work``, and find the kernel headers in it."""
    for a in archives:
        if not a.is_file():
            raise refuse(f"{a}: no such package file")
    fmts = [format_of(a) for a in archives]
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    root = Path(tempfile.mkdtemp(prefix="headers-", dir=work))
    try:
        for a, fmt in zip(archives, fmts):
            check_archive(a, fmt, work)
        for a, fmt in zip(archives, fmts):
            _extract(a, fmt, root)
        _relink(root)
        found = releases_in(root)
        if release and release not in found:
            raise refuse(f"{', '.join(a.name for a in archives)}: no headers for {release} "
                         f"in the package{'s' if len(archives) > 1 else ''} "
                         f"(found: {', '.join(found) or 'none'})")
        if not found:
            raise refuse(f"{', '.join(a.name for a in archives)}: holds no kernel headers "
                         "(no lib/modules/<release>/build with a Makefile and .config)")
        return Unpacked(root, release or found[0], tuple(a.name for a in archives))
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def from_directory(path: Path, work: Path) -> Unpacked:
    """An already unpacked headers directory given by a person: a kernel
    build tree (Makefile, .config) or a root holding lib/modules/<K>/build.
    The tree is used where it is (nothing is copied); a private root with a
    ``build`` (and ``source``) link gives it the shape of an installed kernel."""
    path = path.resolve()
    if not path.is_dir():
        raise refuse(f"{path}: no such directory")
    if not ((path / "Makefile").is_file() and (path / ".config").is_file()):
        found = releases_in(path)
        if not found:
            raise refuse(f"{path}: not a kernel headers tree (no Makefile and .config, "
                         "no lib/modules/<release>/build)")
        return Unpacked(path, found[0], (), owned=False)
    release = _release_of_tree(path)
    src = path
    # Debian's arch tree names the common tree in its one-line Makefile.
    m = _INCLUDE_RE.search((path / "Makefile").read_text(errors="replace")[:4096])
    if m and (Path(m.group(1)).parent / "Makefile").is_file():
        src = Path(m.group(1)).parent
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    root = Path(tempfile.mkdtemp(prefix="headers-", dir=work))
    kdir = root / MODULE_DIRS[0] / release
    kdir.mkdir(parents=True)
    os.symlink(path, kdir / "build")
    if src != path:
        os.symlink(src, kdir / "source")
    return Unpacked(root, release, (), owned=True)


def _release_of_tree(tree: Path) -> str:
    # utsrelease.h first: Debian's kernel.release holds the upstream version only.
    for rel in ("include/generated/utsrelease.h", "include/config/kernel.release"):
        try:
            text = (tree / rel).read_text(errors="replace")
        except OSError:
            continue
        m = re.search(r'"([^"]+)"', text) if rel.endswith(".h") else None
        release = m.group(1) if m else text.strip()
        if RELEASE_RE.match(release):
            return release
    raise refuse(f"{tree}: cannot tell the kernel release (no include/config/kernel.release)")
