"""Test roots with the tiny source and real Debian kernel headers, and
``nvkmd --once`` runs; the rest of the harness is in tests/harness/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.roots import REPO, SYSTEM_MODULES, TINY, Root, header_kernels
from harness.waiting import wait_for

# The harness's names that tests have always taken from here.
__all__ = ["REPO", "SYSTEM_MODULES", "TINY", "TestRoot", "header_kernels", "need_kernels",
           "run_nvkmd", "set_tiny_version", "wait_for"]


def need_kernels(n: int) -> list[str]:
    ks = header_kernels()
    if len(ks) < n:
        pytest.fail(f"this test needs {n} kernels with Debian headers installed "
                    f"(scripts/setup installs them); found {ks}")
    return ks


class TestRoot(Root):
    """A scratch system root: <root>/lib/modules/<K> with build/source links
    to the real headers, an NVIDIA-like source under usr/src, a config."""

    def __init__(self, path: Path):
        super().__init__(path)
        (path / "usr" / "src").mkdir(parents=True, exist_ok=True)
        self.config_text = ""

    def add_kernel(self, release: str, headers: bool = True) -> Path:
        d = self.modules / release
        d.mkdir(parents=True, exist_ok=True)
        if headers:
            self.link_headers(release)
        return d

    def add_tiny_source(self, name: str = "nvidia-tiny", version: str | None = None) -> Path:
        dest = self.path / "usr" / "src" / name
        shutil.copytree(TINY, dest, symlinks=True)
        if version:
            set_tiny_version(dest, version)
        self.configure(f'[source]\npath = "/usr/src/{name}"\n')
        return dest

    def configure(self, text: str) -> None:
        self.config_text = text
        self.write_config(text)


def set_tiny_version(tree: Path, version: str) -> None:
    """Change the tiny tree's version everywhere it is spelled."""
    (tree / "version.mk").write_text(f"NVIDIA_VERSION = {version}\n")
    kbuild = tree / "kernel-open" / "Kbuild"
    text = kbuild.read_text()
    import re
    kbuild.write_text(re.sub(r'NV_VERSION_STRING=\\"[0-9.]+\\"',
                             f'NV_VERSION_STRING=\\\\"{version}\\\\"', text))


def run_nvkmd(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
              **kw) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "nvkmd.daemon", *args], capture_output=True,
                          text=True, env=e, timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL, **kw)
