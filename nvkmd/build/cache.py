"""Build products kept per (kernel, source content, toolchain, headers).

A forced rebuild whose inputs did not change reinstalls from here without
running the compiler.  What is installed from here must be what was built:
when an entry is stored, the SHA-256 of each of its files is recorded in
the state directory (root's alone, trust.py), and an entry whose files do
not match the record is not used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# The digests are taken by a child Python: the daemon does not load
# OpenSSL's libcrypto (3.6 MiB of its resident memory, daemon/main.py), and
# Python's builtin SHA-256 is 3.5x slower on the 200 MB of an NVIDIA build.
_DIGESTS = ("import hashlib, sys\n"
            "for p in sys.argv[1:]:\n"
            "    with open(p, 'rb') as f:\n"
            "        print(hashlib.file_digest(f, 'sha256').hexdigest())\n")
DIGEST_TIMEOUT_S = 300


def sha256_files(paths: list[Path]) -> list[str]:
    """The SHA-256 of each file, in order; OSError when one cannot be read."""
    if not paths:
        return []
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", _DIGESTS, *map(str, paths)],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=DIGEST_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise OSError(f"SHA-256 of {len(paths)} files took over {DIGEST_TIMEOUT_S}s") from None
    out = proc.stdout.split()
    if proc.returncode != 0 or len(out) != len(paths):
        why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise OSError(f"cannot take the SHA-256 of {', '.join(p.name for p in paths)}: {why}")
    return out


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
            kos = sorted(p for p in d.glob("*.ko") if p.is_file() and not p.is_symlink())
            have = dict(zip((p.name for p in kos), sha256_files(kos)))
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
            copies = []
            for ko in build_dir.glob("*.ko"):
                shutil.copy2(ko, tmp / ko.name)
                copies.append(tmp / ko.name)
            files = dict(zip((c.name for c in copies), sha256_files(copies)))
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
