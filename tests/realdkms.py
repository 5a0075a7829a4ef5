"""Test support for the real DKMS and real git repositories.

DKMS has no --root, so DKMS tests register the tiny tree on the real
system (/usr/src, /var/lib/dkms) and install into the real /lib/modules of
the header kernels.  ``RealDkms`` records what was there before and puts
the system back afterwards: every nvidia/9.9.* registration removed, our
/usr/src links removed, the kernel directories restored to their previous
entries, DKMS's generated signing key removed if it was not there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import TINY, set_tiny_version
from nvkmd.system import dkms

SYSTEM_MODULES = Path("/lib/modules")
SRC = Path("/usr/src")
DKMS_TREE = Path("/var/lib/dkms")
TEST_NAME = "nvidia"
TEST_VERSION_PREFIX = "9.9."          # the tiny tree's versions; never a real driver
FAKE_KERNELS = ("0.0.1-nvkmdtest", "0.0.2-nvkmdtest")


def git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="nvkmd tests", GIT_AUTHOR_EMAIL="tests@nvkmd.invalid",
               GIT_COMMITTER_NAME="nvkmd tests", GIT_COMMITTER_EMAIL="tests@nvkmd.invalid")
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# Like NVIDIA's top-level Makefile: the OS-agnostic object is built in src/
# and linked into kernel-open/ (same variable names and rules, one object).
TOP_MAKEFILE = """\
OUTPUTDIR := _out/Linux_x86_64
nv_kernel_o                = src/nvidia/$(OUTPUTDIR)/nv-kernel.o
nv_kernel_o_binary         = kernel-open/nvidia/nv-kernel.o_binary

.PHONY: $(nv_kernel_o) modules

$(nv_kernel_o):
\t$(MAKE) -C src/nvidia

$(nv_kernel_o_binary): $(nv_kernel_o)
\tcd $(dir $@) && ln -sf ../../$^ $(notdir $@)

modules: $(nv_kernel_o_binary)
\t$(MAKE) -C kernel-open modules
"""
SRC_MAKEFILE = """\
OUTPUTDIR := _out/Linux_x86_64
$(OUTPUTDIR)/nv-kernel.o: core.c
\tmkdir -p $(OUTPUTDIR)
\t$(CC) -c -o $@ core.c
"""


def make_repo(path: Path, versions: tuple[str, ...] = ("9.9.1", "9.9.2"),
              checkout: str | None = None, os_agnostic: bool = False) -> Path:
    """A git repository laid out like open-gpu-kernel-modules: one commit and
    one tag per version (NVIDIA's snapshot model), HEAD at ``checkout``.
    ``os_agnostic``: with a top-level Makefile and src/ that build the
    kernel-independent object, as a real clone has."""
    shutil.copytree(TINY, path, symlinks=True)
    # Real clones have the full src/ tree beside kernel-open/; a marker stands in.
    (path / "README.md").write_text("NVIDIA Linux Open GPU Kernel Module Source (test copy)\n")
    if os_agnostic:
        (path / "Makefile").write_text(TOP_MAKEFILE)
        (path / "src/nvidia").mkdir(parents=True)
        (path / "src/nvidia/Makefile").write_text(SRC_MAKEFILE)
        (path / ".gitignore").write_text("_out/\n*.o_binary\n")
    git(path, "init", "-q", "-b", "main")
    for v in versions:
        set_tiny_version(path, v)
        if os_agnostic:
            (path / "src/nvidia/core.c").write_text(
                f'const char nv_os_agnostic_version[] = "nv-kernel.o {v}";\n')
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", f"{v}")
        git(path, "tag", v)
    if checkout:
        git(path, "checkout", "-q", checkout)
    return path


class RealDkms:
    def __init__(self) -> None:
        if not dkms.available():
            pytest.fail("dkms is not installed (scripts/setup installs it)")
        self.kernels = {d.name: set(os.listdir(d)) for d in SYSTEM_MODULES.iterdir() if d.is_dir()}
        self.had_mok = (DKMS_TREE / "mok.key").exists()
        self.cleanup()

    def ours(self) -> list[tuple[str, str]]:
        # From DKMS's tree, not `dkms status`: one broken registration makes
        # dkms status print nothing at all.
        return sorted((TEST_NAME, d.name) for d in (DKMS_TREE / TEST_NAME).glob(f"{TEST_VERSION_PREFIX}*"))

    def cleanup(self) -> None:
        for name, version in self.ours():
            subprocess.run(["dkms", "remove", "-m", name, "-v", version, "--all"],
                           capture_output=True, text=True)
        mine = DKMS_TREE / TEST_NAME
        for p in list(mine.glob("*")) if mine.is_dir() else []:
            if p.name.startswith(TEST_VERSION_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
            elif p.is_symlink() and os.readlink(p).startswith(TEST_VERSION_PREFIX):
                p.unlink()
        if mine.is_dir() and not any(mine.iterdir()):
            mine.rmdir()
        for link in SRC.glob(f"{TEST_NAME}-{TEST_VERSION_PREFIX}*"):
            if link.is_symlink():
                link.unlink()
            elif link.is_dir():
                shutil.rmtree(link)

    def restore(self) -> None:
        self.cleanup()
        for d in SYSTEM_MODULES.iterdir():
            before = self.kernels.get(d.name)
            if before is None:
                if d.name in FAKE_KERNELS:
                    shutil.rmtree(d, ignore_errors=True)
                continue
            for entry in set(os.listdir(d)) - before:
                p = d / entry
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        if not self.had_mok:
            for f in ("mok.key", "mok.pub"):
                (DKMS_TREE / f).unlink(missing_ok=True)
