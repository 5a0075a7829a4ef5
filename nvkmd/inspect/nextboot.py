"""Which installed kernel boots next, and how nvkmd knows.

The boot loader is recognised from what it left behind: systemd-boot says
so in the ``LoaderInfo`` EFI variable when it booted this system; otherwise
a generated ``grub.cfg`` means GRUB, and a ``loader`` directory on an ESP
means systemd-boot.  With none of these the answer is "newest first",
which is what GRUB and systemd-boot do by default, marked as a guess.
"""

from __future__ import annotations

import dataclasses

from nvkmd.inspect import grub, sdboot
from nvkmd.paths import Paths
from nvkmd.system.kernels import release_key

GRUB = "grub"
SYSTEMD_BOOT = "systemd-boot"
UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True)
class NextBootChoice:
    kernel: str             # the release that boots next, "" when not knowable
    loader: str             # grub | systemd-boot | unknown
    source: str             # where the choice was read
    one_shot: bool = False  # only the next boot (grub-reboot, bootctl set-oneshot)
    guess: bool = False     # no boot loader read: newest first
    entry: str = ""         # the menu entry: a GRUB path of ids, a BLS entry id
    value: str = ""         # the setting as written (GRUB's default, the glob, ...)
    note: str = ""          # anything odd the user should know

    def describe(self) -> str:
        how = "a guess: newest first" if self.guess else f"{self.loader}, {self.source}"
        return f"{how}{', one-shot' if self.one_shot else ''}"


def _newest(releases: list[str]) -> str:
    return max(releases, key=release_key) if releases else ""


def from_grub(paths: Paths, releases: list[str]) -> NextBootChoice | None:
    cfg = grub.read_config(paths)
    if cfg is None:
        return None
    env = grub.read_env(paths.grubenv)
    settings = grub.read_settings(paths)
    note = ""
    wanted = settings.get("GRUB_DEFAULT", "0") or "0"
    if (wanted == "saved") != cfg.saved:
        note = (f"grub.cfg does not follow GRUB_DEFAULT={wanted} of /etc/default/grub yet: "
                "run update-grub")
    if env.get("next_entry"):
        spec, source, one_shot = env["next_entry"], "next_entry in grubenv", True
    elif cfg.saved:
        spec, source, one_shot = env.get("saved_entry") or None, "saved_entry in grubenv", False
    else:
        spec, source, one_shot = cfg.default, "default in grub.cfg", False
    path, matched = grub.resolve(cfg.menu, spec)
    if not path:
        return NextBootChoice("", GRUB, "grub.cfg has no menu entries", note=note)
    if spec is None and cfg.saved:
        source = "first menu entry (GRUB_DEFAULT=saved, no saved_entry yet)"
    elif not matched:
        note = note or f"{spec!r} names no menu entry: GRUB boots the first one"
        source = f"first menu entry ({source} names none)"
    leaf = path[-1]
    kernel = leaf.release if leaf.release else _mentioned(leaf.title + " " + leaf.id, releases)
    return NextBootChoice(kernel, GRUB, source, one_shot, entry=grub.path_spec(path),
                          value=spec or "", note=note)


def from_sdboot(paths: Paths, releases: list[str]) -> NextBootChoice | None:
    found = sdboot.read_choice(paths)
    if found is None:
        return None
    choice, _esp = found
    if choice.entry is None:
        return NextBootChoice("", SYSTEMD_BOOT, "no boot loader entries")
    note = "" if choice.matched else f"{choice.pattern!r} names no entry: systemd-boot boots the first"
    return NextBootChoice(choice.entry.release, SYSTEMD_BOOT, choice.source, choice.one_shot,
                          entry=choice.entry.id, value=choice.pattern, note=note)


def _mentioned(text: str, releases: list[str]) -> str:
    hits = [r for r in releases if r and r in text]
    return max(hits, key=len) if hits else ""


def next_boot(paths: Paths, releases: list[str]) -> NextBootChoice:
    """The kernel the boot loader starts next, among ``releases`` (installed)."""
    order = ([from_sdboot, from_grub] if sdboot.booted_by_systemd_boot(paths)
             else [from_grub, from_sdboot])
    for reader in order:
        try:
            found = reader(paths, releases)
        except (OSError, ValueError, UnicodeError):
            found = None
        if found is not None:
            return found
    return NextBootChoice(_newest(releases), UNKNOWN, "no boot loader configuration found",
                          guess=True)
