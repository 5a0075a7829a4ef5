"""Put built modules in place for a kernel, all at once or not at all.

Stage the finished ``.ko`` files (stripped, signed, compressed as the
kernel's config asks) in a hidden directory beside ``updates/nvkmd``, swap
the two directories with one ``renameat2(RENAME_EXCHANGE)``, run depmod,
and only then drop the old set.  If depmod fails the swap is undone, so
every failure leaves the previous modules exactly as they were.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

from nvkmd.build import diagnose
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.procenv import child_env
from nvkmd.system.installed import MANIFEST
from nvkmd.system.kernels import Kernel
from nvkmd.system.modinfo import module_name

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
# The C library Python itself runs on: find_library("c") would run `ldconfig -p`
# on every import, and the boot check imports this module.
_libc = ctypes.CDLL(None, use_errno=True)


def exchange(a: Path, b: Path) -> None:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE)."""
    rc = _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


STAGE_PREFIX = ".nvkmd-stage-"


class InstallError(NvkmdError):
    def __init__(self, marker: str, message: str, code: ErrorCode = ErrorCode.BUILD_FAILED):
        super().__init__(code, message)
        self.marker = marker


def _run(cmd: list[str], log: Callable[[str], None], marker: str) -> None:
    log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), check=False)
    for line in (proc.stdout + proc.stderr).splitlines():
        log(line)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise InstallError(marker, f"{marker} {cmd[0]} exited {proc.returncode}"
                                   f"{': ' + detail[-1] if detail else ''}")


def _prepare(kernel: Kernel, built: Path, stage: Path, *, strip: bool,
             signing: tuple[str, str] | None, log: Callable[[str], None]) -> list[str]:
    names = []
    for ko in sorted(built.glob("*.ko")):
        dest = stage / ko.name
        shutil.copy2(ko, dest)
        if strip:
            _run(["strip", "--strip-debug", str(dest)], log, diagnose.MARK_INSTALL)
        if signing:
            tool = kernel.sign_file
            if tool is None:
                raise InstallError(diagnose.MARK_SIGN, f"{diagnose.MARK_SIGN} the kernel's "
                                   "scripts/sign-file is missing from its headers")
            _run([str(tool), kernel.sig_hash, signing[0], signing[1], str(dest)], log,
                 diagnose.MARK_SIGN)
        suffix = kernel.compression
        if suffix:
            tool = {".zst": ["zstd", "-q", "-T0", "--rm", "-f"], ".xz": ["xz", "-f", "--check=crc32",
                    "--lzma2=dict=1MiB"], ".gz": ["gzip", "-n", "-f"]}[suffix]
            _run(tool + [str(dest)], log, diagnose.MARK_INSTALL)
            dest = dest.with_name(dest.name + suffix)
        names.append(module_name(dest))
    if not names:
        raise InstallError(diagnose.MARK_INSTALL, f"{diagnose.MARK_INSTALL} the build produced no .ko files")
    return names


def depmod(kernel: Kernel, log: Callable[[str], None]) -> None:
    _run(["depmod", "-a", "-b", str(kernel.paths.root), kernel.release], log, diagnose.MARK_DEPMOD)


def _refuse_links_out(kernel: Kernel) -> None:
    """``updates/`` or ``updates/nvkmd`` as a symlink out of the kernel's
    directory would send root's install (and its rmtree of the old set)
    wherever the link points."""
    home = kernel.dir.resolve()
    for p in (kernel.dir / "updates", kernel.nvkmd_dir):
        if p.is_symlink() and not p.resolve().is_relative_to(home):
            raise InstallError(diagnose.MARK_INSTALL, f"{diagnose.MARK_INSTALL} {p} is a symlink "
                               f"to {p.resolve()}, outside {kernel.dir}; refusing to install there")


def install(kernel: Kernel, built: Path, manifest: dict, *, strip: bool = True,
            signing: tuple[str, str] | None = None,
            log: Callable[[str], None] = lambda line: None,
            on_critical: Callable[[bool], None] = lambda entering: None) -> list[Path]:
    """Install every ``*.ko`` of ``built`` into ``<K>/updates/nvkmd``.

    ``on_critical(True)`` is called just before the live directory changes
    and ``on_critical(False)`` once depmod is done (the shutdown inhibitor
    hangs on these).  Returns the installed paths.
    """
    target = kernel.nvkmd_dir
    parent = target.parent
    # The stage lives beside the kernel's directory, not in it: after the
    # exchange it holds the old set while depmod runs, and depmod indexes
    # every module under <modules>/<K>, so a stage inside would have
    # modules.dep name files that are about to be deleted.
    stage = _stage_dir(kernel)
    _refuse_links_out(kernel)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        names = _prepare(kernel, built, stage, strip=strip, signing=signing, log=log)
        (stage / MANIFEST).write_text(json.dumps(
            {**manifest, "modules": names, "installed_at": time.time()}, indent=1) + "\n")
        for f in stage.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except OSError as e:
        shutil.rmtree(stage, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise InstallError(diagnose.MARK_NOSPACE, f"{diagnose.MARK_NOSPACE} staging the "
                               f"modules under {parent}", ErrorCode.DISK_FULL) from None
        raise InstallError(diagnose.MARK_INSTALL, f"{diagnose.MARK_INSTALL} {e}") from None
    except InstallError:
        shutil.rmtree(stage, ignore_errors=True)
        raise

    on_critical(True)
    try:
        had_old = target.exists()
        if had_old:
            exchange(stage, target)          # stage now holds the old set
        else:
            stage.rename(target)
        try:
            depmod(kernel, log)
        except InstallError:
            if had_old:
                exchange(stage, target)      # put the old set back
            else:
                target.rename(stage)
            try:
                depmod(kernel, log)
            except InstallError as again:
                log(f"nvkmd: depmod failed again after restoring the old modules: {again}")
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    finally:
        on_critical(False)
    log(f"installed {', '.join(names)} into {target}")
    return sorted(p for p in target.iterdir() if p.name != MANIFEST)


def _stage_dir(kernel: Kernel) -> Path:
    return kernel.dir.parent / f"{STAGE_PREFIX}{kernel.release}-{os.getpid()}"


def stale_stages(kernel: Kernel) -> list[Path]:
    """Staging directories of interrupted installs for ``kernel``: beside its
    directory, and inside ``updates/`` where older versions put them."""
    found = sorted(kernel.dir.parent.glob(f"{STAGE_PREFIX}{kernel.release}-*"))
    old = kernel.nvkmd_dir.parent
    return found + (sorted(old.glob(f"{STAGE_PREFIX}*")) if old.is_dir() else [])


def recover(kernel: Kernel) -> None:
    """Drop staging directories a killed install left behind.

    The live directory is only ever changed by one atomic exchange, so a
    leftover stage never holds the only copy of anything that was live.
    """
    for stale in stale_stages(kernel):
        shutil.rmtree(stale, ignore_errors=True)
