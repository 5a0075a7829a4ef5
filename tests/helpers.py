"""Shared test helpers: real test roots with real Debian kernel headers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "data" / "tiny-open"
SYSTEM_MODULES = Path("/lib/modules")
T = TypeVar("T")


def header_kernels() -> list[str]:
    """Releases with real Debian headers on this machine, oldest first."""
    from nvkmd.system.kernels import release_key
    found = []
    if SYSTEM_MODULES.is_dir():
        for d in SYSTEM_MODULES.iterdir():
            if (d / "build" / "Makefile").is_file() and (d / "build" / ".config").is_file():
                found.append(d.name)
    return sorted(found, key=release_key)


def need_kernels(n: int) -> list[str]:
    ks = header_kernels()
    if len(ks) < n:
        pytest.fail(f"this test needs {n} kernels with Debian headers installed "
                    f"(scripts/setup installs them); found {ks}")
    return ks


def wait_for(cond: Callable[[], T], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.05) -> T:
    """Poll ``cond`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class TestRoot:
    """A scratch system root: <root>/lib/modules/<K> with build/source links
    to the real headers, an NVIDIA-like source under usr/src, a config."""

    def __init__(self, path: Path):
        self.path = path
        self.modules = path / "lib" / "modules"
        self.modules.mkdir(parents=True, exist_ok=True)
        (path / "usr" / "src").mkdir(parents=True, exist_ok=True)
        (path / "etc" / "nvkmd").mkdir(parents=True, exist_ok=True)
        self.config_text = ""

    def add_kernel(self, release: str, headers: bool = True) -> Path:
        d = self.modules / release
        d.mkdir(parents=True, exist_ok=True)
        if headers:
            self.link_headers(release)
        return d

    def link_headers(self, release: str) -> None:
        d = self.modules / release
        build = (SYSTEM_MODULES / release / "build").resolve()
        source = (SYSTEM_MODULES / release / "source").resolve()
        for name, target in (("build", build), ("source", source)):
            if not (d / name).is_symlink():
                os.symlink(target, d / name)

    def unlink_headers(self, release: str) -> None:
        for name in ("build", "source"):
            p = self.modules / release / name
            if p.is_symlink():
                p.unlink()

    def add_tiny_source(self, name: str = "nvidia-tiny", version: str | None = None) -> Path:
        dest = self.path / "usr" / "src" / name
        shutil.copytree(TINY, dest, symlinks=True)
        if version:
            set_tiny_version(dest, version)
        self.configure(f'[source]\npath = "/usr/src/{name}"\n')
        return dest

    def configure(self, text: str) -> None:
        self.config_text = text
        (self.path / "etc" / "nvkmd" / "nvkmd.toml").write_text(text)

    def nvkmd_dir(self, release: str) -> Path:
        return self.modules / release / "updates" / "nvkmd"


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
