"""The boot default as the queue's ordering needs it: one release or None.

``nextboot`` reads the boot loader; here only its answer is narrowed to "a
kernel the loader names", because a guess must not reorder the queue.  The
small pure helpers stay for callers that hold the file texts, not a root.
"""

from __future__ import annotations

from nvkmd.inspect import grub, sdboot
from nvkmd.inspect.bls import parse_entry, sort_entries
from nvkmd.inspect.nextboot import next_boot
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
        if line.strip().startswith("GRUB_DEFAULT="):
            toks = grub._tokens(line.strip()[len("GRUB_DEFAULT="):])
            value = toks[0] if toks else ""
    return value


def grub_choice(default_grub: str, grubenv: str, releases: list[str]) -> str | None:
    """Without a grub.cfg only a default that spells a release names one."""
    value = parse_grub_default(default_grub)
    if value == "saved":
        env = dict(line.partition("=")[::2] for line in grubenv.splitlines() if "=" in line)
        value = env.get("saved_entry", "")
    return _mentioned(value, releases)


def systemd_boot_choice(loader_conf: str, entries: dict[str, str], releases: list[str]) -> str | None:
    """``entries``: entry file name (without .conf) -> its text."""
    pattern = next((line.split(None, 1)[1].strip() for line in loader_conf.splitlines()
                    if line.split(None, 1)[:1] == ["default"] and len(line.split(None, 1)) > 1), None)
    if not pattern:
        return None
    listed = sort_entries([parse_entry(name + ".conf", text) for name, text in entries.items()])
    hit = sdboot.find(listed, pattern) or sdboot.find(listed, pattern + ".conf")
    if hit is None:
        return None
    return _mentioned(hit.release, releases) or _mentioned(hit.id, releases)


def default_boot_kernel(paths: Paths, releases: list[str]) -> str | None:
    """The release the boot loader will start next, or None if not knowable."""
    choice = next_boot(paths, releases)
    return choice.kernel if choice.kernel and not choice.guess else None
