"""Build products kept per (kernel, source content, toolchain, headers).

A forced rebuild whose inputs did not change reinstalls from here without
running the compiler.  What is installed from here must be what was built:
when an entry is stored, the SHA-256 of each of its files is recorded in
the state directory (root's alone, trust.py), and an entry whose files do
not match the record is not used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class ProductCache:
    def __init__(self, root: Path, keep: int, digests: Path | None = None):
        self.root = root
        self.keep = keep
        # Beside the products by default; the engine puts it in the state dir.
        self.digests = digests or root.parent / "product-digests"
        self.rejected = ""          # why the last lookup refused an entry

    def _dir(self, kernel: str, key: str) -> Path:
        return self.root / kernel / key

    def _record(self, kernel: str, key: str) -> Path:
        return self.digests / kernel / f"{key}.json"

    def lookup(self, kernel: str, key: str) -> Path | None:
        """The entry, if it is complete and its files are what was built."""
        self.rejected = ""
        d = self._dir(kernel, key)
        if not ((d / ".complete").exists() and any(d.glob("*.ko"))):
            return None
        problem = self._verify(d, self._record(kernel, key))
        if problem:
            self.rejected = f"{d}: {problem}"
            shutil.rmtree(d, ignore_errors=True)
            return None
        return d

    def _verify(self, d: Path, record: Path) -> str | None:
        try:
            want = json.loads(record.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"no digest was recorded for it in {self.digests}"
        try:
            have = {p.name: _sha256(p) for p in d.glob("*.ko") if p.is_file() and not p.is_symlink()}
        except OSError as e:
            return f"cannot read it: {e}"
        names = set(os.listdir(d)) - {".complete"}
        if names != set(want):
            return f"its files ({', '.join(sorted(names))}) are not those recorded " \
                   f"({', '.join(sorted(want))})"
        for name, digest in sorted(want.items()):
            if have.get(name) != digest:
                return f"{name} does not match the SHA-256 recorded when it was built"
        return None

    def store(self, kernel: str, key: str, build_dir: Path) -> Path:
        """Copy the top-level ``*.ko`` of a finished build; returns the entry."""
        dest = self._dir(kernel, key)
        tmp = dest.with_name(f".{key}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        record = self._record(kernel, key)
        try:
            files = {}
            for ko in build_dir.glob("*.ko"):
                shutil.copy2(ko, tmp / ko.name)
                files[ko.name] = _sha256(tmp / ko.name)
            record.parent.mkdir(parents=True, exist_ok=True)
            rtmp = record.with_name(f".{record.name}.tmp")
            rtmp.write_text(json.dumps({"files": files}, sort_keys=True) + "\n")
            os.replace(rtmp, record)
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
                with contextlib.suppress(OSError):
                    self._record(kernel, old.name).unlink()
