"""Which installed kernel boots next, where the boot loader's files say.

GRUB boots its first entry (the newest kernel) unless ``GRUB_DEFAULT`` names
another one, or is ``saved`` and ``grubenv`` holds a ``saved_entry``;
systemd-boot reads ``default`` from ``loader.conf`` (a glob over entry
ids).  When none of that names a kernel the answer is "unknown", and the
queue falls back to "newest first", which is what GRUB does by default.
The parsers are pure; ``default_boot_kernel`` reads the files.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

from nvkmd.paths import Paths


def _mentioned(text: str, releases: list[str]) -> str | None:
    """The longest release spelled inside ``text`` (6.1.0-47-amd64 wins
    over a 6.1.0-4 that would also match)."""
    hits = [r for r in releases if r and r in text]
    return max(hits, key=len) if hits else None


def parse_grub_default(default_grub: str) -> str:
    """``GRUB_DEFAULT`` from /etc/default/grub (shell syntax), "0" if unset."""
    value = "0"
    for line in default_grub.splitlines():
        m = re.match(r"""^\s*GRUB_DEFAULT=(["']?)(.*)\1\s*$""", line)
        if m:
            value = m.group(2)
    return value


def parse_grubenv(grubenv: str) -> str:
    m = re.search(r"^saved_entry=(.*)$", grubenv, re.M)
    return m.group(1).strip() if m else ""


def grub_choice(default_grub: str, grubenv: str, releases: list[str]) -> str | None:
    value = parse_grub_default(default_grub)
    if value == "saved":
        value = parse_grubenv(grubenv)
    return _mentioned(value, releases)


def systemd_boot_choice(loader_conf: str, entries: dict[str, str], releases: list[str]) -> str | None:
    """``entries``: entry file name (without .conf) -> its text."""
    m = re.search(r"^\s*default\s+(\S+)", loader_conf, re.M)
    if not m:
        return None
    pattern = m.group(1).removesuffix(".conf")
    for name in sorted(entries, reverse=True):
        if fnmatch.fnmatchcase(name, pattern):
            return _mentioned(entries[name], releases) or _mentioned(name, releases)
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def default_boot_kernel(paths: Paths, releases: list[str]) -> str | None:
    """The release the boot loader will start next, or None if not knowable."""
    for loader in (paths.at("boot/efi/loader"), paths.at("efi/loader"), paths.at("boot/loader")):
        conf = _read(loader / "loader.conf")
        if conf:
            entries = {}
            try:
                for e in (loader / "entries").glob("*.conf"):
                    entries[e.name[:-5]] = _read(e)
            except OSError:
                pass
            choice = systemd_boot_choice(conf, entries, releases)
            if choice:
                return choice
    grub = _read(paths.at("etc/default/grub"))
    if grub:
        env = _read(paths.boot_dir / "grub" / "grubenv") or _read(paths.boot_dir / "grub2" / "grubenv")
        return grub_choice(grub, env, releases)
    return None
