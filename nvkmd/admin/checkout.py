"""A git checkout of NVIDIA's open-gpu-kernel-modules, as nvkmd's driver
source: its layout and version, its tags, current tag and remote (through
the real ``git`` in a subprocess), and the OS-agnostic objects a clone
must build once before Kbuild or DKMS can use its ``kernel-open/``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Sequence

from nvkmd.config import Config
from nvkmd.errors import ErrorCode, NvkmdError, source_invalid
from nvkmd.paths import Paths
from nvkmd.procenv import child_env
from nvkmd.system.kernels import release_key
from nvkmd.system.source import Source, check_ownership, discover, version_of

_TAG_RE = re.compile(r"^v?\d+(\.\d+)+$")


def newest_tag(tags: Sequence[str]) -> str:
    versions = [t for t in tags if _TAG_RE.match(t)]
    return max(versions, key=lambda t: release_key(t.lstrip("v")), default="")


# -- git ---------------------------------------------------------------------

def git(top: Path, *args: str, check: bool = True, timeout: float = 300) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(top), *args], capture_output=True, text=True,
                              env=child_env(GIT_TERMINAL_PROMPT="0"), stdin=subprocess.DEVNULL,
                              timeout=timeout, check=False)
    except FileNotFoundError:
        raise NvkmdError(ErrorCode.NOT_SUPPORTED, "git is not installed") from None
    except subprocess.TimeoutExpired:
        raise source_invalid(f"git {' '.join(args)} in {top} did not finish in {timeout:g}s") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise source_invalid(f"git {' '.join(args)} in {top} failed"
                            f"{': ' + detail[-1] if detail else ''}")
    return proc.stdout.strip() if proc.returncode == 0 else ""


def is_git(top: Path) -> bool:
    return (top / ".git").exists()


def tags(top: Path) -> list[str]:
    return git(top, "tag", "--list").split()


def current_tag(top: Path) -> str:
    return git(top, "describe", "--tags", "--exact-match", "HEAD", check=False)


def remote_url(top: Path) -> str:
    return git(top, "remote", "get-url", "origin", check=False)


def tracked(top: Path, rel: str) -> bool:
    return bool(git(top, "ls-files", "--", rel, check=False))


# -- locating the checkout ---------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Checkout:
    top: Path          # the clone (version.mk, kernel-open/)
    tree: Path         # top/kernel-open
    version: str


def checkout_at(path: Path) -> Checkout:
    """PATH must be laid out like open-gpu-kernel-modules."""
    if not path.is_dir():
        raise source_invalid(f"{path}: no such directory")
    tree = path / "kernel-open"
    if not (path / "version.mk").is_file() or not (tree / "Kbuild").is_file() \
            or not (tree / "Makefile").is_file():
        raise source_invalid(f"{path}: not an open-gpu-kernel-modules clone "
                            "(expected version.mk and kernel-open/ with Kbuild and Makefile)")
    return Checkout(path, tree, version_of(tree, path))


def checkout_of(source: Source) -> Checkout | None:
    """The clone a discovered source lives in (through a /usr/src link too)."""
    tree = source.tree.resolve()
    for top in (tree, tree.parent):
        if (top / "version.mk").is_file() and (top / "kernel-open").resolve() == tree:
            try:
                return checkout_at(top)
            except NvkmdError:
                return None
    return None


def current_checkout(paths: Paths, config: Config) -> tuple[Source, Checkout]:
    src = discover(paths, config)
    co = checkout_of(src)
    if co is None:
        raise source_invalid(f"the source nvkmd uses, {src.origin} ({src.kind}), is not an "
                            "open-gpu-kernel-modules checkout; `nvkmctl source init PATH` sets one up")
    return src, co


# -- the OS-agnostic objects ------------------------------------------------

def binary_targets(top: Path) -> list[str]:
    """The ``kernel-open/*/*.o_binary`` files the checkout's top-level Makefile
    makes from ``src/`` (``nv_kernel_o_binary = kernel-open/nvidia/nv-kernel.o_binary``
    in NVIDIA's Makefile); none for a tree that ships them (.run, Debian)."""
    try:
        text = (top / "Makefile").read_text(errors="replace")
    except OSError:
        return []
    return re.findall(r"^\s*\w+_binary\s*=\s*(kernel-open/\S+\.o_binary)\s*$", text, re.M)


def prepare_binaries(co: Checkout, jobs: int, log: Callable[[str], None]) -> list[str]:
    """Build the OS-agnostic objects a git checkout lacks, once per version.

    In a clone, ``kernel-open/nvidia/nv-kernel.o_binary`` is a symlink that
    ``make`` at the top creates into ``src/nvidia/_out/``; it does not depend
    on any kernel.  Kbuild (nvkmd's private copy) and DKMS (its copy of the
    registered directory) copy ``kernel-open/`` alone, where such a relative
    link would dangle, so the objects are made regular files.
    """
    targets = binary_targets(co.top)
    done = [t for t in targets if (co.top / t).is_file() and not (co.top / t).is_symlink()]
    if not targets or len(done) == len(targets):
        return []
    check_ownership(co.top)      # the whole checkout's Makefiles run as root now
    cmd = ["make", "-C", str(co.top), f"-j{jobs}", *targets]
    log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=child_env(), stdin=subprocess.DEVNULL, check=False)
    for line in proc.stdout.splitlines():
        log(line)
    if proc.returncode != 0:
        tail = [line for line in proc.stdout.splitlines() if line.strip()][-1:]
        raise source_invalid(f"building the OS-agnostic objects in {co.top} failed (make exited "
                            f"{proc.returncode}){': ' + tail[0] if tail else ''}")
    made = []
    for t in targets:
        p = co.top / t
        if p.is_symlink():
            tmp = p.with_name(f".{p.name}.nvkmd-tmp")
            shutil.copyfile(p.resolve(strict=True), tmp)
            os.replace(tmp, p)
        made.append(t)
    return made

