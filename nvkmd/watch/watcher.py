"""inotify, through pyinotify, on the asyncio loop.  The only module that
imports pyinotify.

The watcher turns raw events into ``detect.WatchEvent`` values tagged with
what the watched directory is (``modules``, ``kernel``, ``dpkg``, ...) and
hands them to one callback.  It decides nothing: relevance, debouncing and
rescans are ``detect``'s and the core's business.  An ``IN_Q_OVERFLOW``
(the kernel dropped events) is reported as an event with the ``overflow``
flag; the core answers it with a full rescan.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable

import pyinotify
import structlog

from nvkmd.watch.events import WatchEvent

log = structlog.get_logger()

# pyinotify logs its own warnings (an overflow, a vanished watch) through
# logging; we report those ourselves, once, in our own format.
logging.getLogger("pyinotify").setLevel(logging.CRITICAL)

_M = pyinotify
_DIR_EVENTS = _M.IN_CREATE | _M.IN_DELETE | _M.IN_MOVED_FROM | _M.IN_MOVED_TO
_SELF = _M.IN_DELETE_SELF | _M.IN_MOVE_SELF
# Only what each directory can tell us.  No IN_CLOSE_NOWRITE and no IN_OPEN
# anywhere: our own reads (lock probes, scans) must not wake us up.
MASKS = {
    "modules": _DIR_EVENTS | _SELF,
    "kernel": _DIR_EVENTS | _SELF,
    "dpkg": _DIR_EVENTS | _M.IN_CLOSE_WRITE,
    "pacman": _M.IN_CREATE | _M.IN_DELETE | _M.IN_MOVED_FROM,
    "pacman-local": _DIR_EVENTS,
    "rpm": _DIR_EVENTS | _M.IN_CLOSE_WRITE,
    "src": _DIR_EVENTS | _M.IN_CLOSE_WRITE | _M.IN_ATTRIB,
    "source": _DIR_EVENTS | _M.IN_CLOSE_WRITE | _M.IN_ATTRIB,
    # The preflight's triggers: `apt update` renames new lists into place and
    # closes its lock file; `pacman -Sy` writes the sync databases.
    "apt-lists": _M.IN_MOVED_TO | _M.IN_DELETE | _M.IN_CLOSE_WRITE,
    "pacman-sync": _M.IN_MOVED_TO | _M.IN_CLOSE_WRITE,
    # The boot loader's files (grubenv, grub.cfg, /etc/default/grub,
    # loader.conf, BLS entries): rewritten in place or renamed into place.
    "boot": _M.IN_CLOSE_WRITE | _M.IN_MOVED_TO | _M.IN_MOVED_FROM | _M.IN_DELETE,
}

_FLAGS = (
    (_M.IN_CREATE, "create"), (_M.IN_DELETE, "delete"), (_M.IN_MOVED_FROM, "moved_from"),
    (_M.IN_MOVED_TO, "moved_to"), (_M.IN_CLOSE_WRITE, "close_write"), (_M.IN_ATTRIB, "attrib"),
    (_M.IN_ISDIR, "isdir"), (_M.IN_DELETE_SELF | _M.IN_MOVE_SELF, "self_gone"),
    (_M.IN_Q_OVERFLOW, "overflow"),
)


def _flags(mask: int) -> frozenset[str]:
    return frozenset(name for bit, name in _FLAGS if mask & bit)


class _Handler(pyinotify.ProcessEvent):
    def my_init(self, watcher: "Watcher") -> None:   # pyinotify's constructor hook
        self.watcher = watcher

    def process_IN_Q_OVERFLOW(self, event) -> None:
        self.watcher._emit(WatchEvent("overflow", "", "", frozenset({"overflow"})))

    def process_default(self, event) -> None:
        self.watcher._raw(event)


class Watcher:
    """Watches a set of directories, each under a tag; see ``update``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[WatchEvent], None]):
        self.callback = callback
        self.wm = pyinotify.WatchManager()
        self.handler = _Handler(watcher=self)
        self.notifier = pyinotify.AsyncioNotifier(self.wm, loop, default_proc_fun=self.handler)
        self.watched: dict[Path, tuple[str, bool]] = {}
        self._tags: dict[str, str] = {}       # watched path (str) -> tag, subdirs of recursive too

    def close(self) -> None:
        try:
            self.notifier.stop()
        except (OSError, KeyError):
            pass

    def _emit(self, ev: WatchEvent) -> None:
        try:
            self.callback(ev)
        except Exception:      # one bad event must not stop the watcher
            log.exception("watch event handler failed", path=ev.path)

    def _raw(self, event) -> None:
        if event.mask & _M.IN_IGNORED:
            # The directory is gone (or was unwatched): forget it, so that
            # the next update watches a new directory of that name again.
            self._tags.pop(event.path, None)
            for p in [p for p in self.watched if str(p) == event.path]:
                del self.watched[p]
            return
        tag = self._tags.get(event.path)
        if tag is None:
            # A subdirectory pyinotify added by itself under a recursive watch.
            parent = next((t for p, t in self._tags.items() if event.path.startswith(p + "/")), None)
            if parent is None:
                return
            tag = self._tags[event.path] = parent
        name = event.name or ""
        path = event.pathname if name else event.path
        self._emit(WatchEvent(tag, path, name, _flags(event.mask)))

    def add(self, path: Path, tag: str, recursive: bool = False) -> bool:
        """Watch ``path`` (a directory) under ``tag``; False if it cannot be."""
        if self.watched.get(path) == (tag, recursive):
            return True
        self.remove(path)
        result = self.wm.add_watch(str(path), MASKS[tag], rec=recursive, auto_add=recursive,
                                   quiet=True)
        ok = {p: wd for p, wd in result.items() if wd >= 0}
        if str(path) not in ok:
            for wd in ok.values():
                self.wm.rm_watch(wd, quiet=True)
            log.debug("cannot watch", path=str(path), tag=tag)
            return False
        for p in ok:
            self._tags[p] = tag
        self.watched[path] = (tag, recursive)
        return True

    def remove(self, path: Path) -> None:
        if path not in self.watched:
            return
        del self.watched[path]
        prefix = str(path)
        wds = []
        for p in [p for p in self._tags if p == prefix or p.startswith(prefix + "/")]:
            if any(str(other) == p for other in self.watched):
                continue      # watched in its own right too
            wd = self.wm.get_wd(p)
            if wd is not None:
                wds.append(wd)
            self._tags.pop(p, None)
        if wds:
            self.wm.rm_watch(wds, quiet=True)

    def update(self, spec: dict[Path, tuple[str, bool]]) -> None:
        """Make the watched set exactly ``spec`` (path -> (tag, recursive))."""
        for path in [p for p in self.watched if p not in spec]:
            self.remove(path)
        for path, (tag, recursive) in spec.items():
            self.add(path, tag, recursive)
