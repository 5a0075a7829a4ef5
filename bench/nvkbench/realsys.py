"""Figures that need the real system (DKMS has no --root; apt installs into
/): what was there is recorded first and put back afterwards.

The bench registers its own DKMS module, ``nvkmd-bench``, so it never
touches a registration that something else made (the test suite's
``nvidia/9.9.*``, a real driver): its dkms.conf is NVIDIA's own template,
rendered the way ``nvkmctl source init`` renders it, with that name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

from .env import SYSTEM_MODULES, BenchError, SourceTree, log, timed

DKMS_NAME = "nvkmd-bench"
DKMS_TREE = Path("/var/lib/dkms")
SRC = Path("/usr/src")


def dkms(*args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
    return timed(["dkms", *args], timeout=timeout, check=check)[1]


def dkms_entries() -> list:
    from nvkmd.system import dkms as nd
    return nd.parse_status(dkms("status", check=False).stdout)


def foreign_pending(kernel: str) -> list[str]:
    """Registrations not ours that ``dkms autoinstall -k kernel`` would build."""
    entries = [e for e in dkms_entries() if e.name != DKMS_NAME]
    done = {(e.name, e.version) for e in entries if e.kernel == kernel and e.state.startswith("installed")}
    return sorted({f"{e.name}/{e.version}" for e in entries if (e.name, e.version) not in done})


class SystemGuard:
    """Records the real system's kernel directories and DKMS state, and puts
    back what the bench changed: nvkmd's and the bench's modules, the links
    a headers reinstall rewrites, DKMS's generated signing key."""

    def __init__(self) -> None:
        self.kernels: dict[str, set[str]] = {}
        self.links: dict[Path, str] = {}
        for d in SYSTEM_MODULES.iterdir():
            if not d.is_dir():
                continue
            self.kernels[d.name] = set(os.listdir(d))
            for name in ("build", "source"):
                if (d / name).is_symlink():
                    self.links[d / name] = os.readlink(d / name)
        self.had_mok = (DKMS_TREE / "mok.key").exists()
        self.had_nvkmd = {k for k in self.kernels if (SYSTEM_MODULES / k / "updates" / "nvkmd").exists()}
        if self.had_nvkmd:
            raise BenchError("nvkmd modules are already installed on this machine "
                             f"({', '.join(sorted(self.had_nvkmd))}); the bench would replace them")

    def restore_links(self) -> None:
        for link, target in self.links.items():
            if not link.is_symlink() and link.parent.is_dir():
                with contextlib.suppress(OSError):
                    os.symlink(target, link)

    def restore(self) -> None:
        self.restore_links()
        unregister()
        for k, before in self.kernels.items():
            d = SYSTEM_MODULES / k
            if not d.is_dir():
                continue
            shutil.rmtree(d / "updates" / "nvkmd", ignore_errors=True)
            for stray in (d / "updates").glob(".nvkmd*") if (d / "updates").is_dir() else []:
                shutil.rmtree(stray, ignore_errors=True)
            if "updates" not in before:
                with contextlib.suppress(OSError):
                    (d / "updates" / "dkms").rmdir()
                with contextlib.suppress(OSError):
                    (d / "updates").rmdir()
            now = set(os.listdir(d))
            if not any(n.startswith("modules.") for n in before):
                # depmod's files appeared because of our installs: they go
                # once nothing but the headers links and them are left.
                if all(n in before or n.startswith("modules.") for n in now):
                    for n in now - before:
                        with contextlib.suppress(OSError):
                            (d / n).unlink()
            else:
                subprocess.run(["depmod", "-a", k], capture_output=True)
        if not self.had_mok:
            for f in ("mok.key", "mok.pub"):
                (DKMS_TREE / f).unlink(missing_ok=True)


def unregister() -> None:
    """Every version of the bench's DKMS module removed, its sources gone."""
    for e in {(e.name, e.version) for e in dkms_entries() if e.name == DKMS_NAME}:
        dkms("remove", "-m", e[0], "-v", e[1], "--all", check=False)
    shutil.rmtree(DKMS_TREE / DKMS_NAME, ignore_errors=True)
    for p in SRC.glob(f"{DKMS_NAME}-*"):
        if p.is_symlink() or p.is_file():
            p.unlink()
        else:
            shutil.rmtree(p, ignore_errors=True)


class BenchModule:
    """The source registered with the real DKMS as ``nvkmd-bench/<version>``."""

    def __init__(self, source: SourceTree, jobs: int):
        from nvkmd.admin.dkmsconf import NVIDIA_TEMPLATE, render_dkms_conf
        self.version = source.version
        self.spec = ["-m", DKMS_NAME, "-v", self.version]
        self.dir = SRC / f"{DKMS_NAME}-{self.version}"
        unregister()
        source.copy_tree_into(self.dir)
        own = self.dir / "dkms.conf"
        template = own.read_text() if own.is_file() and "__DKMS_MODULES" in own.read_text() \
            else NVIDIA_TEMPLATE
        text = render_dkms_conf(template, version=self.version, jobs=jobs, modules=source.modules)
        own.write_text(text.replace('PACKAGE_NAME="nvidia"', f'PACKAGE_NAME="{DKMS_NAME}"'))

    def state(self, kernel: str = "") -> str:
        """'absent', 'added', or DKMS's state for ``kernel`` ('built', 'installed', ...)."""
        mine = [e for e in dkms_entries() if e.name == DKMS_NAME and e.version == self.version]
        if not mine:
            return "absent"
        for e in mine:
            if kernel and e.kernel == kernel:
                return e.state
        return "added"

    def add(self) -> None:
        if self.state() == "absent":
            dkms("add", *self.spec)

    def unbuild(self, kernel: str) -> None:
        """Registered, but neither built nor installed for ``kernel``."""
        self.add()
        if self.state(kernel) != "added":
            dkms("remove", *self.spec, "-k", kernel, check=False)
            self.add()

    def remove(self) -> None:
        """Unregistered (installed files removed by DKMS); the source stays."""
        if self.state() != "absent":
            dkms("remove", *self.spec, "--all", check=False)

    def build_install(self, kernel: str) -> float:
        t1, _ = timed(["dkms", "build", *self.spec, "-k", kernel], timeout=3600)
        t2, _ = timed(["dkms", "install", *self.spec, "-k", kernel], timeout=600)
        return t1 + t2

    def close(self) -> None:
        log("removing the bench's DKMS module")
        unregister()
