"""What a filesystem event means: plain data built by the watcher, and the
rules that say whether it can change what a rescan finds."""

from __future__ import annotations

import dataclasses

from nvkmd.system import pkgdb
from nvkmd.limits import RELEASE_RE


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    """One inotify event, as plain data (the watcher builds these)."""
    tag: str                    # what the watched directory is, see Watcher
    path: str                   # the entry the event is about
    name: str                   # its name in the watched directory ("" for the dir itself)
    flags: frozenset[str]       # create delete moved_from moved_to close_write attrib isdir self_gone overflow

    @property
    def overflow(self) -> bool:
        return "overflow" in self.flags


LOCK_NAMES = {"dpkg": set(pkgdb.DPKG_LOCKS), "pacman": {pkgdb.PACMAN_LOCK}, "rpm": {pkgdb.RPM_LOCK}}


def lock_event(ev: WatchEvent) -> bool:
    """A package manager's lock was released (or may have been)."""
    names = LOCK_NAMES.get(ev.tag)
    if not names or ev.name not in names:
        return False
    if ev.tag == "pacman":
        return bool(ev.flags & {"delete", "moved_from"})
    return "close_write" in ev.flags or "delete" in ev.flags


def relevant(ev: WatchEvent) -> bool:
    """Whether ``ev`` can change what a rescan finds.

    Our own work must not count, or every install would trigger a rescan:
    depmod writes ``modules.*`` and the installer ``updates/`` inside kernel
    directories, and ``rpm -q`` writes rpm's sqlite WAL.
    """
    if ev.overflow or "self_gone" in ev.flags and ev.tag in ("modules", "kernel"):
        return True
    if ev.tag == "modules":
        return "isdir" in ev.flags or bool(RELEASE_RE.match(ev.name))
    if ev.tag == "kernel":
        return ev.name in ("build", "source")
    if ev.tag in ("dpkg", "pacman", "rpm"):
        return lock_event(ev) or (ev.tag == "dpkg" and ev.name == "status"
                                  and bool(ev.flags & {"moved_to", "close_write"}))
    if ev.tag == "pacman-local":
        return True
    if ev.tag in ("src", "source"):
        return not ev.name.startswith(".#")      # editors' lock files
    if ev.tag == "boot":
        # a finished write or rename of a file the boot loader reads
        return bool(ev.flags & {"close_write", "moved_to", "delete", "moved_from"}) and (
            ev.name in ("grubenv", "grub.cfg", "grub", "loader.conf") or ev.name.endswith((".conf", ".cfg")))
    return False
