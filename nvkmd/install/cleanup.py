"""``cleanup``: remove the nvidia modules nvkmd or DKMS built for kernels
that are gone (and, with ``keep``, for all but the newest kernels).

What counts as installed: a kernel is installed while its image or its
package's own files are there (``/boot/vmlinuz-<K>``, ``<modules>/<K>/vmlinuz``
on Arch and Fedora, ``<K>/kernel/``, ``<K>/modules.order`` or
``modules.builtin``, which come with the image and are never written by
depmod), or while its headers are (``build`` leads to a tree with a Makefile
and .config): nvkmd builds for every kernel with headers, so removing
those modules would only start a rebuild.  A directory holding nothing
but nvkmd's ``updates/nvkmd``, DKMS's ``updates/dkms``, depmod's output or
dangling ``build``/``source`` links is a kernel that is gone.

What is removed: nvkmd's ``updates/nvkmd`` (and our leftovers), and DKMS's
installs through ``dkms remove -m <name> -v <ver> -k <K>`` (real system
only: dkms has no --root).  Modules other packages own are never touched.
For a kernel that is gone, depmod's own output files go too and the
directory is removed once empty; for an installed one, depmod runs.

``keep = 0`` keeps every installed kernel; ``keep = N`` keeps the modules of
the N newest installed kernels that have nvkmd's or DKMS's modules.  The running kernel is always kept.  Nothing changes
unless ``execute`` is true.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Sequence

from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.install.modules import depmod
from nvkmd.paths import Paths
from nvkmd.system import dkms
from nvkmd.system.kernels import (
    Kernel,
    list_kernels,
    release_key,
)

# Files depmod writes into <modules>/<K>; everything else there is someone's.
DEPMOD_OUTPUTS = ("modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin",
                  "modules.softdep", "modules.symbols", "modules.symbols.bin",
                  "modules.builtin.bin", "modules.builtin.alias.bin", "modules.devname",
                  "modules.weakdep")
IMAGE_MARKERS = ("vmlinuz", "kernel", "modules.order", "modules.builtin")


def kernel_installed(paths: Paths, release: str) -> bool:
    kdir = paths.kernel_dir(release)
    if (paths.boot_dir / f"vmlinuz-{release}").exists():
        return True
    if any((kdir / m).exists() for m in IMAGE_MARKERS):
        return True
    return Kernel(paths, release).headers is not None


@dataclasses.dataclass(frozen=True)
class Facts:
    """What cleanup needs to know about one kernel (gathered by ``facts``)."""
    release: str
    installed: bool
    nvkmd: bool                          # has updates/nvkmd
    dkms: tuple[tuple[str, str], ...]    # (name, version) DKMS has installed


@dataclasses.dataclass(frozen=True)
class Item:
    release: str
    action: str            # "keep" | "remove"
    reason: str            # running | building | newest N | installed | not installed | older than the N newest
    nvkmd: bool
    dkms: tuple[tuple[str, str], ...]
    done: str = ""         # after execute: "removed" or the error

    @property
    def what(self) -> str:
        parts = (["nvkmd"] if self.nvkmd else []) + [f"dkms {n}/{v}" for n, v in self.dkms]
        return ", ".join(parts)


def decide(facts: Sequence[Facts], running: str, keep: int, busy: str | None = None) -> list[Item]:
    """Pure: which kernels' modules go.  Newest first, like ``list_kernels``.
    ``busy`` (the kernel being built right now) is kept like the running one."""
    ordered = sorted(facts, key=lambda f: release_key(f.release), reverse=True)
    # Counted among kernels that have modules to lose: a newer kernel without
    # one (no headers, failed build) must not cost an older one its driver.
    newest = [f.release for f in ordered if f.installed and (f.nvkmd or f.dkms)
              and f.release != running][:keep] if keep > 0 else []
    items = []
    for f in ordered:
        if not (f.nvkmd or f.dkms) and f.release != running:
            continue
        if f.release == running:
            action, reason = "keep", "running"
        elif f.release == busy:
            action, reason = "keep", "building"
        elif not f.installed:
            action, reason = "remove", "not installed"
        elif keep <= 0:
            action, reason = "keep", "installed"
        elif f.release in newest:
            action, reason = "keep", f"newest {keep}"
        else:
            action, reason = "remove", f"older than the {keep} newest"
        items.append(Item(f.release, action, reason, f.nvkmd, f.dkms))
    return items


def facts(paths: Paths) -> list[Facts]:
    out = []
    for k in list_kernels(paths, include_leftovers=True):
        out.append(Facts(k.release, kernel_installed(paths, k.release), k.nvkmd_dir.exists(),
                         tuple(dkms.installed(paths, k.release))))
    return out


@dataclasses.dataclass(frozen=True)
class Plan:
    running: str
    keep: int
    executed: bool
    items: tuple[Item, ...]

    @property
    def to_remove(self) -> list[Item]:
        return [i for i in self.items if i.action == "remove"]

    @property
    def kept(self) -> list[Item]:
        return [i for i in self.items if i.action == "keep"]

    def lines(self) -> list[str]:
        title = "nvkmd cleanup" + ("" if self.executed else " (dry run)")
        out = [title, f"Running kernel: {self.running}",
               f"Keeping: {f'the {self.keep} newest kernels' if self.keep else 'every installed kernel'}"
               " (plus the running one)", ""]
        out.append(f"Keeping ({len(self.kept)}):")
        for i in self.kept:
            out.append(f"  ✓ {i.release} ({i.reason}){': ' + i.what if i.what else ''}")
        verb = "Removed" if self.executed else "To remove"
        out.append(f"{verb} ({len(self.to_remove)}):")
        for i in self.to_remove:
            done = f" -> {i.done}" if i.done else ""
            out.append(f"  ✗ {i.release} ({i.reason}): {i.what}{done}")
        if not self.executed:
            out += ["", "Dry run - no changes made.", "Run with --execute to actually remove."]
        return out

    def paths(self, paths: Paths) -> list[str]:
        """The module paths removed (or to remove): the D-Bus Cleanup reply."""
        out = []
        for i in self.to_remove:
            kernel = Kernel(paths, i.release)
            if i.nvkmd:
                out.append(str(kernel.nvkmd_dir))
            if i.dkms:
                files = [str(f) for f in dkms.installed_files(paths, kernel)] \
                    if not self.executed else []
                out += files or [f"dkms:{n}/{v}:{i.release}" for n, v in i.dkms]
        return out

    def summary(self) -> list[str]:
        """One line per kernel, for the D-Bus Cleanup reply."""
        return [f"{'removed' if self.executed else 'would remove'} {i.release}: {i.what}"
                f"{' (' + i.done + ')' if i.done and i.done != 'removed' else ''}"
                for i in self.to_remove]


def cleanup(paths: Paths, keep: int = 0, execute: bool = False, busy: str | None = None) -> Plan:
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise NvkmdError(ErrorCode.INVALID_ARGUMENT, f"keep: expected an integer >= 0, got {keep!r}")
    running = paths.running_kernel()
    items = decide(facts(paths), running, keep, busy)
    if execute:
        items = [dataclasses.replace(i, done=_remove(paths, i)) if i.action == "remove" else i
                 for i in items]
    return Plan(running, keep, execute, tuple(items))


def _remove(paths: Paths, item: Item) -> str:
    if item.release == paths.running_kernel():      # decide() never does this; belt and braces
        return "skipped: running kernel"
    kernel = Kernel(paths, item.release)
    problems = []
    for name, version in item.dkms:
        if not dkms.usable(paths):
            problems.append(f"dkms {name}/{version} left: dkms works on the real system only")
            continue
        proc = dkms.remove(name, version, item.release)
        if proc.returncode != 0:
            tail = proc.stdout.strip().splitlines()
            problems.append(f"dkms remove exited {proc.returncode}{': ' + tail[-1] if tail else ''}")
    if item.nvkmd:
        shutil.rmtree(kernel.nvkmd_dir, ignore_errors=True)
        if kernel.nvkmd_dir.exists():
            problems.append(f"cannot remove {kernel.nvkmd_dir}")
    for stale in kernel.dir.parent.glob(f".nvkmd-handover-{item.release}"):
        shutil.rmtree(stale, ignore_errors=True)
    if kernel_installed(paths, item.release):
        try:
            depmod(kernel, lambda line: None)
        except NvkmdError as e:
            problems.append(e.message)
    else:
        _tidy_gone(kernel.dir)
    return "; ".join(problems) or "removed"


def _tidy_gone(kdir: Path) -> None:
    """A removed kernel's directory: drop depmod's output and empty directories."""
    for name in DEPMOD_OUTPUTS:
        (kdir / name).unlink(missing_ok=True)
    for top, dirs, files in os.walk(kdir, topdown=False):
        p = Path(top)
        if p.is_symlink():
            continue
        try:
            p.rmdir()              # only succeeds when empty
        except OSError:
            pass


def logs_and_cache(paths: Paths, installed: set[str], logs_keep: int, busy: str | None) -> list[Path]:
    """What ``cleanup`` removes besides modules: build logs beyond
    ``logs_keep`` (the configured logs.keep) per kernel, and all the logs,
    cached builds and their recorded digests of kernels that are gone (not
    in ``installed``)."""
    out: list[Path] = []
    try:
        kernels = sorted(p for p in paths.log_dir.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        kernels = []
    for kdir in kernels:
        if kdir.name == busy:
            continue
        logs = sorted(kdir.glob("build-*.log"))
        gone = kdir.name not in installed
        out.extend(logs if gone else logs[:max(0, len(logs) - logs_keep)])
        if gone and (kdir / "latest.log").is_symlink():
            out.append(kdir / "latest.log")
    # Per kernel: products/<K> and its digests, product-digests/<K> in the
    # state dir (without the products, records would only pile up there).
    per_kernel = (paths.products_root, paths.product_digests)
    for root in (*per_kernel, paths.build_root):
        try:
            entries = sorted(root.iterdir())
        except OSError:
            continue
        for e in entries:
            if root in per_kernel and e.name not in installed and e.name != busy:
                out.append(e)
            elif root == paths.build_root and e.is_dir():
                out.extend(k for k in sorted(e.iterdir()) if k.name not in installed and k.name != busy)
    return out
