"""Scratch system roots whose kernels link to the machine's real Debian
kernel headers (no imitation of Kbuild: the real headers build)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "data" / "tiny-open"
SYSTEM_MODULES = Path("/lib/modules")


def header_kernels() -> list[str]:
    """Releases with real headers on this machine, oldest first."""
    from nvkmd.system.kernels import release_key
    found = []
    if SYSTEM_MODULES.is_dir():
        for d in SYSTEM_MODULES.iterdir():
            if (d / "build" / "Makefile").is_file() and (d / "build" / ".config").is_file():
                found.append(d.name)
    return sorted(found, key=release_key)


class Root:
    """<path>/lib/modules/<K> and <path>/etc/nvkmd/nvkmd.toml."""

    def __init__(self, path: Path):
        self.path = path
        self.modules = path / "lib" / "modules"
        self.modules.mkdir(parents=True, exist_ok=True)
        (path / "etc" / "nvkmd").mkdir(parents=True, exist_ok=True)

    def write_config(self, text: str) -> None:
        (self.path / "etc" / "nvkmd" / "nvkmd.toml").write_text(text)

    def link_headers(self, release: str, headers_of: str | None = None) -> None:
        """build/ and source/ of ``release`` point at the real headers of
        ``headers_of`` (default: the same release)."""
        d = self.modules / release
        real = SYSTEM_MODULES / (headers_of or release)
        for name in ("build", "source"):
            if not (d / name).is_symlink():
                os.symlink((real / name).resolve(), d / name)

    def unlink_headers(self, release: str) -> None:
        for name in ("build", "source"):
            p = self.modules / release / name
            if p.is_symlink():
                p.unlink()

    def nvkmd_dir(self, release: str) -> Path:
        return self.modules / release / "updates" / "nvkmd"
