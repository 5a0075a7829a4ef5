"""The daemon's preflights: kernels the next upgrade would install,
test-built in the background before they arrive.

- **When**: apt's lists or pacman's sync databases changed (the watcher's
  ``apt-lists`` / ``pacman-sync`` events, after the package manager let go
  of its lock), at start and every ``preflight.interval_s`` in "auto" mode;
  on request (D-Bus ``Preflight``) in "auto" and "manual".
- **Cost**: one at a time; a background preflight waits while a real build
  is queued or running and is cancelled (and queued again) when one is
  needed; each build is bounded by ``build.timeout_s``; a result is kept per
  (kernel package version, driver version) in the state directory and not
  computed again.
- **Hold**: with ``preflight.hold = true`` a "will break" apt kernel is held
  with ``apt-mark hold``, and released once a later driver source builds it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import re
import shutil
from pathlib import Path
from typing import Callable

import structlog

from nvkmd.build.preflight import Runner
from nvkmd.config import Config
from nvkmd.daemon.preflightstore import ResultStore
from nvkmd.daemon.tasks import cancel_tasks
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.paths import Paths
from nvkmd.system import candidates as cands
from nvkmd.system import pkgdb
from nvkmd.system.candidates import Candidate
from nvkmd.system.source import Source
from nvkmd.verdict import READY, UNKNOWN, WILL_BREAK, PreflightResult
from nvkmd.watch.events import WatchEvent

log = structlog.get_logger()

APT_LISTS_TAG, PACMAN_SYNC_TAG = "apt-lists", "pacman-sync"
MAX_QUEUE = 32               # requests waiting; more is Busy
IDLE_POLL_S = 2.0
LOCK_RETRY_S = 1.0

Emit = Callable[[int, list[PreflightResult]], None]   # (request id, results): PreflightFinished


@dataclasses.dataclass
class Item:
    target: str | Candidate
    request_id: int             # 0: the daemon's own, in the background
    results: list[PreflightResult] = dataclasses.field(default_factory=list)

    @property
    def background(self) -> bool:
        return self.request_id == 0


# A package as apt spells it (name, optionally =version) or a kernel release.
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]{0,127}(=[A-Za-z0-9.+~:-]{1,128})?\Z")


def preflight_target(target: object) -> str:
    """A D-Bus Preflight target, checked before anything looks at it: "",
    an absolute path (the daemon's working directory is not the caller's,
    so a relative one would name some other file), or a package name."""
    what = ("a preflight target is a package name or kernel release, or the absolute path "
            "of a package file or headers directory")
    if not isinstance(target, str) or len(target) > 4096 or "\0" in target:
        raise NvkmdError(ErrorCode.INVALID_ARGUMENT, what)
    if target == "" or target.startswith("/"):
        return target
    if not _PACKAGE_RE.match(target):
        raise NvkmdError(ErrorCode.INVALID_ARGUMENT, f"{what}, not {target[:80]!r}")
    return target


class Preflights:
    def __init__(self, paths: Paths, config: Config, *, source: Callable[[], Source | None],
                 build_needed: Callable[[], bool], emit: Emit):
        self.paths = paths
        self.source = source
        self.build_needed = build_needed
        self.emit = emit
        self.store = ResultStore(paths.preflight_results)
        self.queue: collections.deque[Item] = collections.deque()
        self.candidates: list[Candidate] = []
        self.current: tuple[Item, str] | None = None      # (item, what is being checked)
        self.last_error = ""
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._builds_idle = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._work: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._debounce: asyncio.TimerHandle | None = None
        self._source_version: str | None = None
        self.configure(config)

    # -- configuration -----------------------------------------------------
    def configure(self, config: Config) -> None:
        self.config = config
        apt_config = self.paths.at(config.preflight_apt_config) if config.preflight_apt_config else None
        self.apt = cands.apt_for(self.paths, apt_config)
        self.pacman = cands.pacman_for(self.paths)
        self.runner = Runner(self.paths, config, self.apt, self.pacman)
        manager = "apt" if self.apt else "pacman" if self.pacman else ""
        self.mode = config.preflight_mode
        if self.mode == "auto" and not manager:
            self.mode = "manual"      # nothing to watch or ask
        # Asked once here, not on every watch update on the event loop.
        self.apt_lists = self.apt.directory("Dir::State::lists", self.paths.apt_lists) \
            if self.apt else None

    def watch_spec(self) -> dict[Path, tuple[str, bool]]:
        """The directories whose changes mean new candidates, for the watcher."""
        if self.mode != "auto":
            return {}
        spec: dict[Path, tuple[str, bool]] = {}
        if self.apt_lists:
            spec[self.apt_lists] = (APT_LISTS_TAG, False)
        if self.pacman:
            spec[self.paths.pacman_sync] = (PACMAN_SYNC_TAG, False)
        return spec

    # -- life cycle --------------------------------------------------------
    def start(self) -> None:
        # One preflight at a time per daemon: anything in the work directory
        # now was left by a daemon that died mid-preflight.
        shutil.rmtree(self.paths.preflight_work, ignore_errors=True)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="preflights")
        if self.mode == "auto":
            self.lists_changed()
            self._arm_timer()

    async def stop(self) -> None:
        for handle in (self._timer, self._debounce):
            if handle:
                handle.cancel()
        await cancel_tasks([t for t in (self._work, self._task) if t])

    def _arm_timer(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.config.preflight_interval_s, self._tick)

    def _tick(self) -> None:
        self.lists_changed()
        self._arm_timer()

    # -- inputs --------------------------------------------------------------
    def on_watch_event(self, ev: WatchEvent) -> None:
        """apt renamed a new list into place or let go of its lock; pacman
        wrote a sync database.  Debounced: one `apt update` is many events."""
        if ev.name.startswith(".") or ev.name == "partial" or self.mode != "auto":
            return
        loop = asyncio.get_running_loop()
        if self._debounce:
            self._debounce.cancel()
        self._debounce = loop.call_later(max(0.1, self.config.daemon_debounce_s), self._settled)

    def _settled(self) -> None:
        self._debounce = None
        if self.apt_lists:
            held = pkgdb.probe_fcntl(self.apt_lists / "lock") is not None
        else:
            held = (self.paths.pacman_dir / pkgdb.PACMAN_LOCK).exists()
        if held:
            # `apt update` still runs: look once it is done.
            self._debounce = asyncio.get_running_loop().call_later(LOCK_RETRY_S, self._settled)
            return
        log.info("package lists changed; looking at the candidate kernels")
        self.lists_changed()

    def lists_changed(self) -> None:
        """apt's lists or pacman's sync DBs changed (or the timer fired): look
        at the candidates again, in the worker, behind what is queued."""
        if self.mode != "auto":
            return
        if not any(isinstance(i.target, str) and i.target == "" and i.background for i in self.queue):
            self.queue.append(Item("", 0))
            self._wake.set()

    def request(self, target: str) -> int:
        """A person asked (D-Bus Preflight): ahead of the daemon's own work."""
        if self.mode == "off":
            raise NvkmdError(ErrorCode.NOT_SUPPORTED, "preflights are off (preflight.mode = \"off\")")
        target = preflight_target(target)
        if sum(1 for i in self.queue if not i.background) >= MAX_QUEUE:
            raise NvkmdError(ErrorCode.BUSY, f"{MAX_QUEUE} preflights are already waiting")
        item = Item(target, next(self._ids))
        pos = sum(1 for i in self.queue if not i.background)
        self.queue.insert(pos, item)
        self._wake.set()
        if self.current and self.current[0].background and self._work:
            self._work.cancel()       # the person's request first; ours is queued again
        return item.request_id

    def source_seen(self, version: str) -> None:
        """The driver source's version as the core reports it: a new one is
        checked against the candidates again (and may release a hold)."""
        if not version or version == self._source_version:
            return
        first, self._source_version = self._source_version is None, version
        if not first:
            self.lists_changed()

    def builds_changed(self) -> None:
        """The core's queue changed: a needed real build cancels a background preflight."""
        if self.build_needed():
            self._builds_idle.clear()
            if self.current and self._work:
                log.info("preflight cancelled: a real build is needed", kernel=self.current[1])
                self._work.cancel()
        else:
            self._builds_idle.set()
            self._wake.set()

    # -- the worker ----------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.queue:
                if self.build_needed():
                    # Behind real builds.  builds_changed() wakes us early;
                    # the bound makes a missed call cost seconds, not forever.
                    self._builds_idle.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(IDLE_POLL_S):
                            await self._builds_idle.wait()
                    continue
                item = self.queue[0]
                self._work = asyncio.get_running_loop().create_task(self._do(item))
                try:
                    await self._work
                    self.queue.remove(item)
                except asyncio.CancelledError:
                    if self._task is not None and self._task.cancelling():
                        raise
                    continue                  # stays first in the queue: done again later
                except Exception:
                    log.exception("preflight failed", target=str(item.target))
                    self.queue.remove(item)
                finally:
                    self._work = None
                    self.current = None

    async def _do(self, item: Item) -> None:
        source = self.source()
        if source is None:
            self.last_error = "no usable driver source"
            if not item.background:
                self.emit(item.request_id, [PreflightResult(
                    kernel="", verdict=UNKNOWN, driver_version="", package=str(item.target),
                    kind="no-source", cause="nvkmd has no usable driver source to build",
                    hint="see `nvkmctl source status`")])
            return
        if item.background:
            await self._refresh_and_check(item, source)
            return
        try:
            if item.target == "":
                await self._refresh()
                todo: list[str | Candidate] = list(self.candidates)
            else:
                todo = [item.target]
            for t in todo[len(item.results):]:
                item.results.append(await self._check(item, t, source))
        except NvkmdError as e:
            item.results.append(PreflightResult(
                kernel="", verdict=UNKNOWN, driver_version=source.version,
                package=str(item.target), kind="refused", cause=e.message,
                hint="name a kernel package, a kernel release, a package file or a headers directory"))
        self.emit(item.request_id, item.results)

    async def _refresh(self) -> None:
        try:
            found = await asyncio.to_thread(cands.upgrade_candidates, self.paths,
                                            self.apt.config_file if self.apt else None)
            # A held kernel drops out of apt's upgrade, but stays a candidate:
            # it is checked again with each new driver source, to release it.
            self.candidates = found + await asyncio.to_thread(self._held_candidates, found)
            self.last_error = ""
        except NvkmdError as e:
            self.last_error = e.message
            log.warning("cannot list the candidate kernels", error=e.message)

    async def _refresh_and_check(self, item: Item, source: Source) -> None:
        await self._refresh()
        for cand in self.candidates:
            key = _key(cand, source)
            if self.store.get(key) is None:
                r = await self._check(item, cand, source)
                self.emit(0, [r])
        await asyncio.to_thread(self._release_holds, source)

    async def _check(self, item: Item, target: str | Candidate, source: Source) -> PreflightResult:
        name = target.package if isinstance(target, Candidate) else target
        self.current = (item, name)
        if isinstance(target, str):
            # A package name resolves to the candidate its result is kept under.
            target = await asyncio.to_thread(self.runner.resolve, target)
        if isinstance(target, Candidate):
            cached = self.store.get(_key(target, source))
            if cached is not None:
                return cached
        log.info("preflight", target=name, driver=source.version, background=item.background)
        r = await self.runner.check(target, source)
        log.info("preflight finished", kernel=r.kernel, verdict=r.verdict, cause=r.cause, log=r.log)
        if r.verdict != UNKNOWN and r.manager in ("apt", "pacman") and r.package_version:
            if r.verdict == WILL_BREAK and self.config.preflight_hold and isinstance(target, Candidate):
                r = await asyncio.to_thread(self._hold, target, r)
            self.store.put(r)
        return r

    # -- holds -----------------------------------------------------------------
    def _hold(self, cand: Candidate, r: PreflightResult) -> PreflightResult:
        if cand.manager != "apt" or self.apt is None:
            log.warning("preflight.hold: nvkmd holds apt packages only; add this to pacman.conf",
                        kernel=r.kernel, hold=cand.hold_command())
            return r
        proc = self.apt.run("apt-mark", "hold", *cand.hold)
        if proc.returncode != 0:
            log.warning("apt-mark hold failed", packages=" ".join(cand.hold), error=proc.stderr.strip())
            return r
        self.store.held[cand.key] = {"package": cand.package, "version": cand.version,
                                     "packages": list(cand.hold)}
        log.warning("held a kernel whose driver build would break (preflight.hold = true)",
                    kernel=r.kernel, packages=" ".join(cand.hold), cause=r.cause)
        return dataclasses.replace(r, held=True)

    def _held_candidates(self, found: list[Candidate]) -> list[Candidate]:
        out = []
        keys = {c.key for c in found}
        for ckey, entry in self.store.held.items():
            if ckey in keys or self.apt is None:
                continue
            try:
                c = cands.apt_candidate(self.apt, entry["package"], entry["version"],
                                        tuple(entry["packages"]))
            except NvkmdError as e:
                log.warning("a held kernel is gone from apt's lists", package=entry["package"],
                            error=e.message)
            else:
                out.append(c)
        return out

    def _release_holds(self, source: Source) -> None:
        """Release what nvkmd held once this driver source builds the kernel."""
        if self.apt is None:
            return
        for ckey, entry in list(self.store.held.items()):
            packages = entry["packages"]
            ready = self.store.get(f"{ckey}@{source.version}")
            if ready is None or ready.verdict != READY:
                continue
            proc = self.apt.run("apt-mark", "unhold", *packages)
            if proc.returncode == 0:
                del self.store.held[ckey]
                self.store.save()
                log.info("released the hold: the driver builds for it now", packages=" ".join(packages),
                         driver=source.version)

    # -- reading -----------------------------------------------------------------
    def status(self) -> list[dict]:
        """The "Candidates" of ``status``: each candidate kernel with its verdict."""
        source = self.source()
        out = []
        for c in self.candidates:
            r = self.store.get(_key(c, source)) if source else None
            running = self.current is not None and self.current[1] == c.package
            d = r.to_dict() if r else {"kernel": c.release, "package": c.package,
                                       "package_version": c.version, "manager": c.manager,
                                       "hold": c.hold_command(), "driver_version":
                                       source.version if source else ""}
            d["state"] = "checking" if running else (r.verdict if r else "pending")
            d["held"] = c.key in self.store.held
            out.append(d)
        return out


def _key(c: Candidate, source: Source | None) -> str:
    return f"{c.manager}:{c.package}={c.version}@{source.version if source else ''}"
