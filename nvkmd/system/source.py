"""Finding the NVIDIA kernel interface source, reading its version, and
refusing trees that anyone but root could have changed."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path

from nvkmd.config import Config
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.paths import Paths
from nvkmd.system import trust
from nvkmd.system.kernels import release_key

KINDS = ("git", "dkms", "debian", "run", "path")

_VERSION_RE = re.compile(r"^\d+(\.\d+)+$")


@dataclasses.dataclass(frozen=True)
class Source:
    kind: str          # one of KINDS
    origin: Path       # what was found: a checkout, a DKMS dir, a tarball
    tree: Path         # the kernel-open tree `make` runs in
    version: str
    modules: tuple[str, ...]   # as the tree declares them (never hard-coded)
    digest: str                # content_hash(tree) when it was loaded

    def has_count_lines(self) -> bool:
        return (self.tree / "count-lines.mk").is_file()


def _source_error(message: str) -> NvkmdError:
    return NvkmdError(ErrorCode.SOURCE, message)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def version_of(tree: Path, top: Path | None = None) -> str:
    """The driver version, from version.mk, dkms.conf, .manifest or Kbuild."""
    for base in filter(None, (top, tree)):
        m = re.search(r"^\s*NVIDIA_VERSION\s*[:?]?=\s*(\S+)", _read(base / "version.mk"), re.M)
        if m and _VERSION_RE.match(m.group(1)):
            return m.group(1)
        m = re.search(r'^\s*PACKAGE_VERSION\s*=\s*"?([^"\s]+)', _read(base / "dkms.conf"), re.M)
        if m and _VERSION_RE.match(m.group(1)):
            return m.group(1)
        lines = _read(base / ".manifest").splitlines()
        if len(lines) > 1 and _VERSION_RE.match(lines[1].strip()):
            return lines[1].strip()
    m = re.search(r'NV_VERSION_STRING=\\?"([0-9.]+)\\?"', _read(tree / "Kbuild"))
    if m:
        return m.group(1)
    raise _source_error(f"{tree}: cannot read the driver version "
                        "(no version.mk, dkms.conf, .manifest or NV_VERSION_STRING in Kbuild)")


def modules_of(tree: Path, top: Path | None = None) -> tuple[str, ...]:
    """The modules a tree builds: .manifest line 4, else every ``<m>/<m>.Kbuild``."""
    if top is not None:
        lines = _read(top / ".manifest").splitlines()
        if len(lines) > 3 and lines[3].split():
            return tuple(lines[3].split())
    found = [d.name for d in sorted(tree.iterdir())
             if d.is_dir() and (d / f"{d.name}.Kbuild").is_file()]
    return tuple(found)


def _is_tree(d: Path) -> bool:
    return (d / "Kbuild").is_file() and (d / "Makefile").is_file()


def classify(path: Path) -> tuple[str, Path]:
    """(kind, kernel-open tree) for a directory given by a person."""
    if (path / "version.mk").is_file() and _is_tree(path / "kernel-open"):
        return ("run" if (path / ".manifest").is_file() else "git"), path / "kernel-open"
    if (path / ".manifest").is_file() and _is_tree(path / "kernel-open"):
        return "run", path / "kernel-open"
    if (path / "dkms.conf").is_file() and _is_tree(path):
        return "dkms", path
    if _is_tree(path):
        return "path", path
    if path.is_file() and path.name.endswith((".tar.xz", ".tar.gz", ".tar")):
        return "debian", path
    raise _source_error(f"{path}: not an NVIDIA kernel module source "
                        "(expected version.mk with kernel-open/, dkms.conf, or a Kbuild tree)")


def check_ownership(path: Path) -> None:
    """Refuse ``path`` (a tree, or a tarball) unless only root could have
    written it, everything in it and every parent: nvkmd runs the tree's
    Makefiles as root.  The rules are trust.py's."""
    if path.is_dir():
        trust.check_tree(path)
    else:
        trust.check_path(path, "source")


def content_hash(tree: Path) -> str:
    """A fingerprint of the tree: every file's path, size, mode and mtime.

    Cheap enough to compute on every build request (a few thousand stat
    calls) and changes whenever an unpack or a checkout changes a file.
    """
    h = hashlib.sha256()
    top = os.fspath(tree)
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        # The same text as Path(dirpath, name).relative_to(tree) gave (the
        # digests in installed manifests stay valid), without a Path per file:
        # this runs on every boot (wait-ready) and every rescan.
        rel = os.path.relpath(dirpath, top)
        prefix = "" if rel == "." else rel + "/"
        for name in sorted(filenames):
            st = os.lstat(os.path.join(dirpath, name))
            h.update(f"{prefix}{name}\0{st.st_size}\0{st.st_mode}\0{st.st_mtime_ns}\n"
                     .encode(errors="surrogateescape"))
    return h.hexdigest()[:16]


def _unpack_debian(paths: Paths, tarball: Path, unpack: bool = True) -> Path:
    """Unpack Debian's nvidia-open-kernel.tar.xz into the cache, once per tarball.

    With ``unpack=False`` only an existing copy is used (the boot check reads,
    never writes), and a missing one is a SourceInvalid error."""
    st = tarball.stat()
    key = hashlib.sha256(f"{tarball}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
    dest = paths.unpacked_sources / f"debian-{key}"
    done = dest / ".nvkmd-unpacked"
    if not done.exists() and not unpack:
        raise _source_error(f"{tarball}: not unpacked under {paths.unpacked_sources} yet")
    if not done.exists():
        # Unpacking only: the boot check (already unpacked) loads neither.
        import shutil

        from nvkmd.system import unpack as unpacker
        tmp = paths.unpacked_sources / f".debian-{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            # untar's data-filter rules, also on 3.11.2, in a child process
            unpacker.extract(tarball, tmp)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if getattr(e, "errno", None) == 28:
                raise NvkmdError(ErrorCode.DISK_FULL, f"no space left unpacking {tarball} "
                                 f"into {paths.unpacked_sources}") from None
            raise _source_error(f"{tarball}: cannot unpack: {e}") from None
        (tmp / ".nvkmd-unpacked").write_text(str(tarball) + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        # Only one unpacked copy per tarball is worth keeping.
        for old in paths.unpacked_sources.glob("debian-*"):
            if old != dest:
                shutil.rmtree(old, ignore_errors=True)
    trees = [p.parent for p in dest.rglob("Kbuild") if _is_tree(p.parent)
             and (p.parent / "conftest.sh").exists()]
    if not trees:
        raise _source_error(f"{tarball}: no kernel module tree inside")
    return min(trees, key=lambda p: len(p.parts))


def load(paths: Paths, kind: str, origin: Path, tree: Path | None = None, *,
         unpack: bool = True) -> Source:
    if kind == "debian":
        tree = _unpack_debian(paths, origin, unpack)
        check_ownership(origin)
    tree = tree or origin
    check_ownership(tree)
    top = origin if origin.is_dir() else None
    return Source(kind, origin, tree, version_of(tree, top), modules_of(tree, top),
                  content_hash(tree))


def candidates(paths: Paths) -> list[tuple[str, Path, Path]]:
    """(kind, origin, tree) for every source found in the usual places."""
    found = []
    src = paths.src_dir
    try:
        entries = sorted(src.iterdir())
    except OSError:
        entries = []
    for d in entries:
        if d.name.startswith("nvidia") and d.is_dir() and (d / "dkms.conf").is_file() \
                and _is_tree(d):
            found.append(("dkms", d, d))
        elif d.name.startswith("nvidia") and d.is_dir() and (d / "version.mk").is_file() \
                and _is_tree(d / "kernel-open"):
            found.append(classify(d)[:1] + (d, d / "kernel-open"))
    if paths.debian_source_tarball.is_file():
        found.append(("debian", paths.debian_source_tarball, paths.debian_source_tarball))
    return found


def discover(paths: Paths, config: Config, *, unpack: bool = True) -> Source:
    """The source to build: ``source.path`` if set, else the newest found.
    ``unpack=False``: never write, use only what is already unpacked."""
    if config.source_path != "auto":
        origin = paths.at(config.source_path)
        if not origin.exists():
            raise _source_error(f"source.path {config.source_path}: no such file or directory")
        kind, tree = classify(origin)
        return load(paths, kind, origin, tree, unpack=unpack)
    found = candidates(paths)
    if not found:
        raise _source_error(f"no NVIDIA kernel module source found under {paths.src_dir} "
                            "(install nvidia-open-kernel-source, or set source.path)")
    loaded: list[Source] = []
    errors: list[NvkmdError] = []
    for kind, origin, tree in found:
        try:
            loaded.append(load(paths, kind, origin, None if kind == "debian" else tree,
                               unpack=unpack))
        except NvkmdError as e:
            errors.append(e)
    if not loaded:
        raise errors[0]
    preference = {k: i for i, k in enumerate(("dkms", "git", "run", "path", "debian"))}
    return max(loaded, key=lambda s: (release_key(s.version), -preference[s.kind]))
