"""The daemon core: the single source of truth about kernels and jobs.

``Core`` implements ``model.CoreAPI``.  Two tasks do its work:

- the *scanner* waits for the debouncer, for the package managers to finish
  their transactions, rescans, diffs and plans (``detect``), and updates the
  queue (``jobs``);
- the *builder* takes the next queued job, once no scan is pending and no
  package manager holds its lock, and runs it through the ``Engine``.  One
  build at a time.

Everything else (the D-Bus adapter, sd_notify) learns what happens through
``subscribe``.  The public methods validate their arguments, raise
``NvkmdError`` and never block the event loop on slow work.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

import structlog

from nvkmd import __version__
from nvkmd.build.log import latest_log, tail
from nvkmd.build.progress import Progress
from nvkmd.build.reaper import reap_orphan_builds
from nvkmd.config import Config
from nvkmd.daemon.sdnotifier import status_line
from nvkmd.detect.diff import Change, diff
from nvkmd.detect.plan import plan
from nvkmd.detect.scan import scan, watch_spec
from nvkmd.detect.snapshot import Snapshot
from nvkmd.errors import ErrorCode, NvkmdError, invalid
from nvkmd.inspect.versions import driver_info
from nvkmd.install import cleanup as modcleanup
from nvkmd.install.cleanup import _remove_leftover_kernel_dir, cleanup_plan
from nvkmd.install.engine import Engine, Outcome
from nvkmd.jobs.store import JobStore, next_job, ordered
from nvkmd.model import (
    DaemonStatus,
    DriverInfo,
    Event,
    JobFinished,
    JobInfo,
    JobProgress,
    JobQueued,
    KernelStatus,
    LastBuild,
    SourceInfo,
    StateChanged,
)
from nvkmd.paths import Paths
from nvkmd.system import pkgdb
from nvkmd.system.kernels import check_release
from nvkmd.watch.debounce import Debouncer
from nvkmd.watch.events import WatchEvent, lock_event, relevant

log = structlog.get_logger()

MAX_TAIL = 100_000
MAX_HISTORY = 10_000
MAX_KEEP = 10_000
REQUESTED = "cancelled on request"


def _given(**kw: object) -> dict[str, object]:
    """Only the log fields that have a value: the journal line stays short."""
    return {k: v for k, v in kw.items() if v not in (None, "")}


def _int_arg(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{name}: expected an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise invalid(f"{name}: expected {low}..{high}, got {value}")
    return value


def _bool_arg(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise invalid(f"{name}: expected true or false, got {type(value).__name__}")
    return value


def _kernel_arg(value: object) -> str:
    """A kernel release, or "" for "every kernel" / "none named"."""
    return "" if value == "" else check_release(value)


def kernel_state(headers: bool, current: bool, build_key: str, active: JobInfo | None,
                 last: tuple[JobInfo, str, str] | None) -> str:
    """Pure: the one state a kernel is in.  ``last`` is (newest finished job
    that ran, its diagnosis kind, its build key)."""
    if active is not None:
        return "building" if active.state == "running" else "queued"
    if current:
        return "ready"
    if not headers:
        return "waiting-for-headers"
    if last is not None and last[2] and last[2] == build_key and last[0].result == "failed":
        return "unsupported" if last[1] == "unsupported" else "failed"
    return "missing"


class Core:
    def __init__(self, paths: Paths, config: Config):
        self.paths = paths
        self.config = config
        self.engine = Engine(paths, config, on_critical=self._on_critical)
        self.store: JobStore | None = None
        self.snapshot: Snapshot | None = None
        # Versions and Secure Boot for status (versions.driver_info), per rescan.
        self.driver = DriverInfo()
        self._driver_task: asyncio.Task | None = None
        self.debouncer = Debouncer(config.daemon_debounce_s)
        self.state = "starting"
        self.waiting_for = ""
        # The watcher, attached by the daemon (duck-typed: the core does not
        # import pyinotify): .update(spec) and .add(path, tag, recursive).
        self.watcher = None
        self._subscribers: list[Callable[[Event], None]] = []
        self._poked = asyncio.Event()          # the scanner has something to look at
        self._wake = asyncio.Event()           # the builder may have work
        self._settled = asyncio.Event()        # no scan pending or running
        self._lock_changed = asyncio.Event()   # a package manager's lock file closed
        self._lock_wait: asyncio.Task | None = None
        self._current: JobInfo | None = None
        self._progress = Progress("prepare", 0)
        self._build_task: asyncio.Task | None = None
        self._cancel: tuple[str, bool] | None = None     # (cause, hold back a retry)
        self._critical = threading.Event()
        # More on_critical hooks, e.g. the daemon's logind shutdown inhibitor.
        self.critical_hooks: list[Callable[[bool], None]] = []
        self._stopping = False
        self._started = False
        self._tasks: list[asyncio.Task] = []

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        """Open the queue, recover from a crash, scan once."""
        await asyncio.to_thread(reap_orphan_builds, self.paths.build_root)
        # Opened on the loop's thread, which is the only one that uses it.
        self.store = JobStore(self.paths.database)
        requeued, given_up = self.store.recover()
        for job_id in requeued:
            job = self.store.get(job_id)
            log.warning("job was interrupted; queued again", job=job_id, kernel=job.kernel)
        for job_id in given_up:
            log.error("job interrupted too often; marked failed", job=job_id,
                      kernel=self.store.get(job_id).kernel)
        # The first scan does not wait for package managers: READY must not
        # hang on a stale lock.  Builds still wait for them.
        await self._rescan(full=True)
        self._started = True
        self._refresh_state()

    def run(self) -> list[asyncio.Task]:
        """Start the scanner and the builder; returns their tasks."""
        self._tasks = [asyncio.create_task(self._scanner(), name="nvkmd-scanner"),
                       asyncio.create_task(self._builder(), name="nvkmd-builder")]
        return self._tasks

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop: a running build is killed and queued again, unless it is in
        the middle of swapping modules in, which is waited for."""
        if self._stopping:
            return
        self._stopping = True
        self._refresh_state()
        if self._critical.is_set():
            log.info("waiting for the module install to finish before stopping")
            await asyncio.to_thread(self._wait_not_critical, grace_s)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for extra in (self._lock_wait, self._driver_task):
            if extra is not None:
                extra.cancel()
        if self.store:
            with contextlib.suppress(Exception):
                self.store.close()

    def _wait_not_critical(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._critical.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _on_critical(self, entering: bool) -> None:
        # Called from the install thread.
        (self._critical.set if entering else self._critical.clear)()
        for hook in list(self.critical_hooks):
            try:
                hook(entering)
            except Exception:   # a hook must never break an install
                log.exception("on_critical hook failed", hook=repr(hook))

    def reload(self, config: Config) -> None:
        """A new configuration (SIGHUP).  Directories are fixed at start."""
        new_paths = Paths.build(self.paths.root, self.paths.config_file, config)
        for what in ("state_dir", "log_dir", "cache_dir"):
            if getattr(new_paths, what) != getattr(self.paths, what):
                log.warning("directory change takes effect at the next start", setting=what,
                            new=str(getattr(new_paths, what)))
        self.config = config
        self.engine = Engine(self.paths, config, on_critical=self._on_critical)
        self.debouncer.quiet_s = config.daemon_debounce_s
        self.debouncer.max_delay_s = max(self.debouncer.max_delay_s, config.daemon_debounce_s)
        log.info("configuration reloaded", file=str(self.paths.config_file))
        self.rescan()

    # -- events in ----------------------------------------------------------------
    def on_watch_event(self, ev: WatchEvent) -> None:
        """The watcher's callback (on the event loop)."""
        if ev.overflow:
            log.warning("inotify queue overflowed; events were lost, rescanning everything")
            self._poke(full=True)
            return
        if lock_event(ev):
            self._lock_changed.set()
        if ev.tag == "modules" and "isdir" in ev.flags and ev.flags & {"create", "moved_to"}:
            # Watch a new kernel directory now, before its build link can
            # appear; the rescan that follows would be too late for that.
            self._add_kernel_watch(Path(ev.path))
        if relevant(ev):
            log.debug("change seen", tag=ev.tag, path=ev.path, flags=",".join(sorted(ev.flags)))
            self._poke()

    def _add_kernel_watch(self, path: Path) -> None:
        if self.watcher is not None:
            self.watcher.add(path, "kernel", False)

    def _update_watches(self, spec: dict) -> None:
        if self.watcher is not None:
            self.watcher.update(spec)

    def _poke(self, *, full: bool = False, now: bool = False) -> None:
        self.debouncer.poke(full=full, now=now)
        self._settled.clear()
        self._poked.set()

    # -- the scanner ----------------------------------------------------------------
    async def _scanner(self) -> None:
        while True:
            deadline = self.debouncer.deadline()
            if deadline is None:
                self._settled.set()
                self._wake.set()
                await self._poked.wait()
                self._poked.clear()
                continue
            delay = deadline - time.monotonic()
            if delay > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._poked.wait(), delay)
                self._poked.clear()
                continue
            full = self.debouncer.take()
            try:
                await self._wait_for_package_managers()
            except NvkmdError as e:
                log.error("giving up on this round", reason=e.message)
                continue
            try:
                await self._rescan(bool(full))
            except Exception:
                log.exception("rescan failed")

    async def _rescan(self, full: bool) -> None:
        if full:
            log.info("full rescan")
        old = self.snapshot
        # Watch first, then look: whatever appears after the look is seen by a watch.
        self._update_watches(await asyncio.to_thread(watch_spec, self.paths, self.config, old))
        snap = await asyncio.to_thread(scan, self.paths, self.config)
        if old is None or snap.source.path != old.source.path:
            self._update_watches(await asyncio.to_thread(watch_spec, self.paths, self.config, snap))
        changes = diff(old, snap)
        for c in changes:
            log.info(c.kind, **_given(kernel=c.kernel, old=c.old, new=c.new))
        if snap.source.error and (old is None or old.source.error != snap.source.error):
            log.error("no usable driver source", error=snap.source.error)
        self.snapshot = snap
        self._refresh_driver()
        self._apply_plan(changes, initial=old is None)
        if old is None or old.source != snap.source or old.kernels != snap.kernels:
            # Kernels' states may have changed (a module now current): tell
            # subscribers, so the STATUS line and D-Bus properties follow.
            self._emit_state()
        log.debug("rescan done", kernels=len(snap.kernels),
                  active=len(self.store.active()) if self.store else 0,
                  **_given(source=snap.source.version))

    def _refresh_driver(self) -> None:
        """Re-read versions and Secure Boot beside the rescan, never delaying it."""
        async def refresh() -> None:
            try:
                self.driver = await asyncio.to_thread(driver_info, self.paths, self.config)
            except Exception:   # a report must never stop the daemon from building
                log.exception("cannot read the driver's versions and Secure Boot state")
        self._driver_task = asyncio.get_running_loop().create_task(refresh())

    def _apply_plan(self, changes: list[Change], initial: bool) -> None:
        assert self.store and self.snapshot
        snap = self.snapshot
        p = plan(snap, self.store.active_pairs(), self.store.past(), changes, initial)
        for job_id, cause in p.drop:
            if self._current is not None and self._current.id == job_id:
                self._cancel_running(cause, hold_back=False)
                continue
            job = self.store.finish(job_id, "cancelled", cause=cause)
            log.info("job dropped", job=job_id, kernel=job.kernel, cause=cause)
            self._emit(JobFinished(job_id, job.kernel, "cancelled", cause, "", ""))
        for kernel, reason in p.add:
            job, created = self.store.enqueue(kernel, snap.source.version, reason=reason)
            if created:
                log.info("job queued", job=job.id, kernel=kernel, version=job.source_version,
                         reason=reason)
                self._emit(JobQueued(job))
        if p.add:
            self._wake.set()

    # -- package managers ----------------------------------------------------------
    async def _wait_for_package_managers(self) -> float:
        """Shared by the scanner and the builder: one wait, logged once."""
        if self._lock_wait is None or self._lock_wait.done():
            self._lock_wait = asyncio.create_task(self._lock_wait_run())
        return await asyncio.shield(self._lock_wait)

    async def _lock_wait_run(self) -> float:
        async def sleep(seconds: float) -> None:
            # Back off, but wake at once when a lock file is closed.
            self._lock_changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._lock_changed.wait(), seconds)

        def on_wait(held: list[pkgdb.Holder]) -> None:
            self.waiting_for = ", ".join(h.describe() for h in held)
            self._refresh_state()

        try:
            waited = await pkgdb.wait_until_free(self.paths, self.config.daemon_lock_wait_max_s,
                                                 sleep=sleep, on_wait=on_wait)
        finally:
            if self.waiting_for:
                self.waiting_for = ""
                self._refresh_state()
        if waited > 0.01:
            log.info("package managers done", waited_s=round(waited, 2))
        return waited

    # -- the builder -----------------------------------------------------------------
    def _next(self) -> JobInfo | None:
        assert self.store
        snap = self.snapshot
        return next_job(self.store.active(), self.paths.running_kernel(),
                        snap.boot_kernel if snap else None)

    async def _builder(self) -> None:
        while True:
            await self._settled.wait()
            job = self._next()
            if job is None or self.snapshot is None or self.snapshot.source_obj is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            if await asyncio.to_thread(pkgdb.holders, self.paths):
                try:
                    await self._wait_for_package_managers()
                except NvkmdError as e:
                    log.error("not building while a package manager is busy", reason=e.message)
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                # The transaction changed things: look again before building.
                self._poke(now=True)
                continue
            if not self._settled.is_set():
                continue
            await self._run_job(job)

    async def _run_job(self, job: JobInfo) -> None:
        assert self.store and self.snapshot
        snap = self.snapshot
        source = snap.source_obj
        kscan = snap.kernels.get(job.kernel)
        if source is None or kscan is None or job.source_version != source.version:
            return                                 # the next rescan drops it
        job = self.store.start(job.id)
        self._current = job
        self._progress = Progress("prepare", 0)
        self._cancel = None
        blog = log.bind(kernel=job.kernel, job=job.id)
        blog.info("build started", version=source.version, force=job.force,
                  reason=self.store.reason(job.id))
        self._refresh_state()
        task = asyncio.create_task(self._build(job, source))
        self._build_task = task
        outcome: Outcome | None = None
        error: NvkmdError | None = None
        try:
            outcome = await task
        except asyncio.CancelledError:
            if self._stopping or self._cancel is None:
                # Stopping: the make process group is dead by now; the next
                # start builds again (forced, so the install is redone).
                self.store.requeue(job.id)
                blog.warning("build interrupted by shutdown; queued again")
                self._current = None
                raise
            cause, hold = self._cancel or (REQUESTED, True)
            done = self.store.finish(job.id, "cancelled", cause=cause,
                                     build_key=kscan.build_key if hold else "")
            blog.info("build cancelled", cause=cause)
            self._finished(done)
            return
        except NvkmdError as e:
            error = e
        except Exception as e:       # a bug must not take the daemon down with it
            blog.exception("build crashed")
            error = NvkmdError(ErrorCode.INTERNAL, f"internal error: {e}")
        finally:
            self._build_task = None
        if error is not None:
            done = self.store.finish(job.id, "failed", cause=error.message, kind=error.code.value,
                                     build_key=kscan.build_key)
        else:
            assert outcome is not None
            d = outcome.diagnosis
            result = "success" if outcome.ok else "failed"
            done = self.store.finish(job.id, result, cause=d.cause if d else "",
                                     hint=d.hint if d else "", kind=d.kind if d else "",
                                     log=str(outcome.log or ""), build_key=kscan.build_key)
        # A failed build is a warning: `journalctl -p warning` must show it.
        say = blog.warning if done.result == "failed" else blog.info
        say("build finished", result=done.result,
                  elapsed_s=round(done.finished_at - done.started_at, 1),
                  **_given(cause=done.cause, log=done.log))
        self._finished(done)

    async def _build(self, job: JobInfo, source) -> Outcome:
        structlog.contextvars.bind_contextvars(kernel=job.kernel, job=job.id)
        return await self.engine.build(job.kernel, source, force=job.force,
                                       on_progress=lambda p: self._on_progress(job, p))

    def _finished(self, job: JobInfo) -> None:
        self._current = None
        # State first: a client that reads the properties when JobFinished
        # arrives sees the daemon past this job already.
        self._refresh_state()
        self._emit(JobFinished(job.id, job.kernel, job.result, job.cause, job.hint, job.log))
        if not self._stopping:
            # The kernel's module changed: look again before the next job.
            self._poke(now=True)

    def _on_progress(self, job: JobInfo, p: Progress) -> None:
        if p == self._progress:
            return
        before = self._progress
        self._progress = p
        # The journal gets a line per phase and per 10%: enough to follow a
        # build, and a few dozen lines for NVIDIA's thousands of objects.
        if p.phase != before.phase or p.percent // 10 != before.percent // 10:
            log.info("build progress", kernel=job.kernel, job=job.id, phase=p.phase,
                     percent=p.percent)
        self._emit(JobProgress(job.id, job.kernel, p.phase, p.percent))
        self._emit_state()

    def _cancel_running(self, cause: str, hold_back: bool) -> None:
        if self._build_task is not None and not self._build_task.done():
            self._cancel = (cause, hold_back)
            self._build_task.cancel()

    # -- state and events -------------------------------------------------------------
    def _refresh_state(self) -> None:
        """The daemon's state follows from what it is doing; a build running
        while the scanner waits for a package manager is still "building"."""
        if self._stopping:
            state = "stopping"
        elif not self._started:
            state = "starting"
        elif self._current is not None:
            state = "building"
        elif self.waiting_for:
            state = "waiting-for-lock"
        else:
            state = "idle"
        self._set_state(state)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            log.debug("daemon state", state=state)
        self._emit_state()

    def _emit_state(self) -> None:
        cur = self._current
        self._emit(StateChanged(self.state, cur.id if cur else 0,
                                self._progress.phase if cur else "",
                                self._progress.percent if cur else 0,
                                self.snapshot.source.version if self.snapshot else ""))

    def _emit(self, event: Event) -> None:
        for cb in list(self._subscribers):
            try:
                cb(event)
            except Exception:
                log.exception("event subscriber failed", subscriber=repr(cb))

    def status_line(self) -> str:
        ks = self.kernels() if self.snapshot else []
        queued = sum(1 for j in (self.store.active() if self.store else []) if j.state == "queued")
        cur = self._current
        return status_line(self.state, ready=sum(k.state == "ready" for k in ks), total=len(ks),
                           failed=sum(k.state in ("failed", "unsupported") for k in ks),
                           queued=queued, kernel=cur.kernel if cur else "",
                           phase=self._progress.phase, percent=self._progress.percent,
                           waiting_for=self.waiting_for)

    # -- CoreAPI ----------------------------------------------------------------------
    def subscribe(self, callback: Callable[[Event], None]) -> None:
        if not callable(callback):
            raise invalid("subscribe: expected a callable")
        self._subscribers.append(callback)

    def _need_store(self) -> JobStore:
        if self.store is None:
            raise NvkmdError(ErrorCode.BUSY, "the daemon is starting")
        return self.store

    def _live(self, job: JobInfo) -> JobInfo:
        cur = self._current
        if cur is not None and job.id == cur.id and job.state == "running":
            return dataclasses.replace(job, phase=self._progress.phase, percent=self._progress.percent)
        return job

    def status(self) -> DaemonStatus:
        snap = self.snapshot
        src = snap.source if snap else None
        info = SourceInfo(src.path, src.version, src.kind, src.error) if src else SourceInfo("", "", "")
        return DaemonStatus(__version__, self.state, info, self.kernels(), self.jobs(10), self.driver)

    def kernels(self) -> list[KernelStatus]:
        snap = self.snapshot
        if snap is None:
            return []
        store = self._need_store()
        active = {j.kernel: j for j in store.active()}
        last = store.last_finished()
        running = self.paths.running_kernel()
        out = []
        for r in snap.releases():
            k = snap.kernels[r]
            a = active.get(r)
            lf = last.get(r)
            lb = LastBuild(lf[0].result, lf[0].log, lf[0].cause, lf[0].hint, lf[0].finished_at) \
                if lf else None
            state = kernel_state(k.headers, k.current, k.build_key, a, lf)
            live = self._current is not None and self._current.kernel == r
            out.append(KernelStatus(
                release=r, running=r == running, headers=k.headers, headers_package=k.headers_package,
                state=state, origin=k.origin, module_version=k.module_version,
                phase=self._progress.phase if live else "", percent=self._progress.percent if live else 0,
                last_build=lb))
        return out

    def jobs(self, include_finished: int = 20) -> list[JobInfo]:
        n = _int_arg("include_finished", include_finished, 0, MAX_HISTORY)
        store = self._need_store()
        active = store.active()
        snap = self.snapshot
        running = [self._live(j) for j in active if j.state == "running"]
        queue = ordered(active, self.paths.running_kernel(), snap.boot_kernel if snap else None)
        return store.finished(n) + running + queue

    def build(self, kernel: str, force: bool) -> list[int]:
        kernel = _kernel_arg(kernel)
        force = _bool_arg("force", force)
        store = self._need_store()
        snap = self.snapshot
        if snap is None:
            raise NvkmdError(ErrorCode.BUSY, "the daemon is starting")
        if not snap.source.version:
            raise NvkmdError(ErrorCode.SOURCE, snap.source.error or "no driver source")
        if kernel:
            k = snap.kernels.get(kernel)
            if k is None:
                raise NvkmdError(ErrorCode.NO_SUCH_KERNEL, f"no kernel {kernel} is installed")
            if not k.headers:
                pkg = f" (install {k.headers_package})" if k.headers_package else ""
                raise NvkmdError(ErrorCode.HEADERS_MISSING, f"{kernel}: no kernel headers{pkg}")
            targets = [k]
        else:
            targets = [snap.kernels[r] for r in snap.releases() if snap.kernels[r].headers]
        ids = []
        for k in targets:
            if k.current and not force:
                continue
            job, created = store.enqueue(k.release, snap.source.version, force=force, reason="requested")
            ids.append(job.id)
            if created:
                log.info("job queued", job=job.id, kernel=k.release, version=job.source_version,
                         reason="requested", force=force)
                self._emit(JobQueued(job))
        self._wake.set()
        return ids

    def cancel(self, job_id: int) -> None:
        job_id = _int_arg("job_id", job_id, 1, 2**63 - 1)
        store = self._need_store()
        job = store.get(job_id)
        if job.state == "running":
            self._cancel_running(REQUESTED, hold_back=True)
            return
        if job.state != "queued":
            raise invalid(f"job {job_id} has already finished ({job.state})")
        k = self.snapshot.kernels.get(job.kernel) if self.snapshot else None
        # The inputs' key holds back an automatic retry: cancelled on purpose.
        store.finish(job_id, "cancelled", cause=REQUESTED, build_key=k.build_key if k else "")
        log.info("job cancelled", job=job_id, kernel=job.kernel)
        self._emit(JobFinished(job_id, job.kernel, "cancelled", REQUESTED, "", ""))

    def get_log(self, job_id: int, kernel: str, lines: int) -> tuple[str, list[str]]:
        job_id = _int_arg("job_id", job_id, 0, 2**63 - 1)
        kernel = _kernel_arg(kernel)
        lines = _int_arg("lines", lines, 0, MAX_TAIL)
        path: Path | None = None
        if job_id:
            job = self._need_store().get(job_id)
            if job.state == "running":
                path = latest_log(self.paths.log_dir, job.kernel)
            elif job.log:
                path = Path(job.log)
            else:
                raise NvkmdError(ErrorCode.NO_SUCH_JOB, f"job {job_id} has no build log "
                                 f"({job.state}{': ' + job.cause if job.cause else ''})")
        else:
            if kernel and self.snapshot and kernel not in self.snapshot.kernels and \
                    not (self.paths.log_dir / kernel).is_dir():
                raise NvkmdError(ErrorCode.NO_SUCH_KERNEL, f"no kernel {kernel} is installed")
            path = latest_log(self.paths.log_dir, kernel or None)
        if path is None:
            return "", []
        log_root = self.paths.log_dir.resolve()
        if not path.resolve().is_relative_to(log_root):
            raise NvkmdError(ErrorCode.INTERNAL, f"log {path} is outside {log_root}")
        try:
            return str(path), tail(path, lines)
        except OSError as e:
            raise NvkmdError(ErrorCode.NO_SUCH_JOB, f"cannot read {path}: {e.strerror}") from None

    def cleanup(self, keep: int, execute: bool) -> list[str]:
        keep = _int_arg("keep", keep, 0, MAX_KEEP)
        execute = _bool_arg("execute", execute)
        snap = self.snapshot
        if snap is None:
            raise NvkmdError(ErrorCode.BUSY, "the daemon is starting")
        busy = self._current.kernel if self._current else None
        # Modules follow cleanup.py (kernels that are gone, --keep N newest,
        # never the running or building kernel, DKMS's through dkms remove);
        # logs and cached builds of gone kernels are pruned here as before.
        plan_ = modcleanup.cleanup(self.paths, keep, execute, busy)
        doomed = [p for p in cleanup_plan(self.paths, set(snap.kernels), self.config.logs_keep, busy)
                  if p.name != "nvkmd"]
        if execute:
            for p in doomed:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        p.unlink()
                if p.name == "nvkmd" and p.parent.name == "updates":
                    _remove_leftover_kernel_dir(p.parent.parent)
            log.info("cleanup done", removed=len(doomed) + len(plan_.to_remove), keep=keep)
            self._poke(now=True)
        return plan_.paths(self.paths) + [str(p) for p in doomed]

    def rescan(self) -> None:
        self._poke(full=True, now=True)


