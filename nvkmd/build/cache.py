"""Build products kept per (kernel, source content, toolchain, headers).

A forced rebuild whose inputs did not change reinstalls from here without
running the compiler.
"""

from __future__ import annotations

import shutil
from pathlib import Path


class ProductCache:
    def __init__(self, root: Path, keep: int):
        self.root = root
        self.keep = keep

    def _dir(self, kernel: str, key: str) -> Path:
        return self.root / kernel / key

    def lookup(self, kernel: str, key: str) -> Path | None:
        d = self._dir(kernel, key)
        return d if (d / ".complete").exists() and any(d.glob("*.ko")) else None

    def store(self, kernel: str, key: str, build_dir: Path) -> Path:
        """Copy the top-level ``*.ko`` of a finished build; returns the entry."""
        dest = self._dir(kernel, key)
        tmp = dest.with_name(f".{key}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for ko in build_dir.glob("*.ko"):
                shutil.copy2(ko, tmp / ko.name)
            (tmp / ".complete").touch()
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.prune(kernel, keep_also=dest)
        return dest

    def prune(self, kernel: str, keep_also: Path | None = None) -> None:
        d = self.root / kernel
        entries = sorted((e for e in d.iterdir() if e.is_dir() and not e.name.startswith(".")),
                         key=lambda e: e.stat().st_mtime, reverse=True) if d.is_dir() else []
        for old in entries[self.keep:]:
            if old != keep_also:
                shutil.rmtree(old, ignore_errors=True)

    def drop_kernel(self, kernel: str) -> None:
        shutil.rmtree(self.root / kernel, ignore_errors=True)
