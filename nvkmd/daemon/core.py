"""The daemon core: the single source of truth about kernels and jobs.

``Core`` implements ``model.CoreAPI`` (the methods are in ``requests``) and
wires three parts together on one event loop:

- the *intake* (``intake``): watch events, the debouncer, the wait for the
  package managers, rescan, diff, plan, and the queue updated from the plan;
- the *builder* (``builder``): the next queued job, once no scan is pending
  and no package manager holds its lock, through the ``Engine``; one build
  at a time;
- what they share (``state``): the last scan, the queue, the current job and
  its progress, the daemon's state, and the subscribers to its events.

Everything else (the D-Bus adapter, sd_notify) learns what happens through
``subscribe``.  This module is the lifecycle: start (recover the queue,
scan once), run, reload, stop.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Callable

import structlog

from nvkmd.build import procs
from nvkmd.build.reaper import reap_orphan_builds
from nvkmd.config import Config
from nvkmd.daemon.bootwatch import BootWatch
from nvkmd.daemon.builder import Builder
from nvkmd.daemon.intake import Intake
from nvkmd.daemon.preflights import APT_LISTS_TAG, PACMAN_SYNC_TAG, Preflights
from nvkmd.daemon.requests import Requests
from nvkmd.daemon.state import Shared
from nvkmd.daemon.tasks import cancel_tasks
from nvkmd.jobs.store import JobStore
from nvkmd.model import JobFinished, JobQueued, StateChanged
from nvkmd.paths import Paths
from nvkmd.verdict import PreflightFinished

log = structlog.get_logger()



class Core(Requests):
    def __init__(self, paths: Paths, config: Config):
        self.shared = Shared(paths, config)
        # More on_critical hooks, e.g. the daemon's logind shutdown inhibitor.
        self.critical_hooks: list[Callable[[bool], None]] = []
        self.intake = Intake(self.shared, lambda job_id, cause: self.builder.drop_running(job_id, cause))
        self.builder = Builder(self.shared, self.intake, self.critical_hooks)
        # Kernels the next upgrade would install, test-built behind real builds.
        sh = self.shared
        self.preflights = Preflights(
            sh.paths, sh.config, source=lambda: sh.snapshot.source_obj if sh.snapshot else None,
            build_needed=lambda: bool(sh.store and sh.store.active()),
            emit=lambda rid, results: sh.emit(PreflightFinished(rid, tuple(r.to_dict() for r in results))))
        self.intake.extra_watches = self.preflights.watch_spec
        for tag in (APT_LISTS_TAG, PACMAN_SYNC_TAG):
            self.intake.tag_handlers[tag] = self.preflights.on_watch_event
        sh.subscribe(self._to_preflights)
        # The next boot's readiness and the boot guard, from the events above.
        self.boot = BootWatch(self.shared, self.kernels)
        self._tasks: list[asyncio.Task] = []

    def _to_preflights(self, ev: object) -> None:
        if isinstance(ev, (JobQueued, JobFinished)):
            self.preflights.builds_changed()
        elif isinstance(ev, StateChanged):
            self.preflights.source_seen(ev.source_version)

    @property
    def paths(self) -> Paths:
        return self.shared.paths

    @property
    def config(self) -> Config:
        return self.shared.config

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        """Open the queue, recover from a crash, scan once."""
        sh = self.shared
        await asyncio.to_thread(reap_orphan_builds, sh.paths.state_dir / procs.BUILDS_SUBDIR)
        # Opened on the loop's thread, which is the only one that uses it.
        sh.store = store = JobStore(sh.paths.database)
        requeued, given_up = store.recover()
        for job_id in requeued:
            log.warning("job was interrupted; queued again", job=job_id, kernel=store.get(job_id).kernel)
        for job_id in given_up:
            log.error("job interrupted too often; marked failed", job=job_id,
                      kernel=store.get(job_id).kernel)
        # The first scan does not wait for package managers: READY must not
        # hang on a stale lock.  Builds still wait for them.
        await self.intake.rescan(full=True)
        sh.started = True
        sh.refresh_state()

    def run(self) -> list[asyncio.Task]:
        """Start the scanner and the builder; returns their tasks."""
        self._tasks = [asyncio.create_task(self.intake.run(), name="nvkmd-scanner"),
                       asyncio.create_task(self.builder.run(), name="nvkmd-builder")]
        self.preflights.start()
        return self._tasks

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop: a running build is killed and queued again, unless it is in
        the middle of swapping modules in, which is waited for."""
        sh = self.shared
        if sh.stopping:
            return
        sh.stopping = True
        sh.refresh_state()
        await self.builder.wait_not_critical(grace_s)
        await cancel_tasks(self._tasks)
        self.intake.close()
        await self.preflights.stop()
        self.boot.close()
        if sh.store:
            with contextlib.suppress(Exception):
                sh.store.close()

    def reload(self, config: Config) -> None:
        """A new configuration (SIGHUP).  Directories are fixed at start."""
        sh = self.shared
        new_paths = Paths.build(sh.paths.root, sh.paths.config_file, config)
        for what in ("state_dir", "log_dir", "cache_dir"):
            if getattr(new_paths, what) != getattr(sh.paths, what):
                log.warning("directory change takes effect at the next start", setting=what,
                            new=str(getattr(new_paths, what)))
        sh.config = config
        self.builder.reload()
        self.intake.reload()
        self.preflights.configure(config)
        self.boot.reload()
        log.info("configuration reloaded", file=str(sh.paths.config_file))
        self.rescan()

    # -- what the daemon's STATUS= line says -----------------------------------------
    def summary(self) -> dict[str, object]:
        """The facts ``sdnotifier.status_line`` renders, as its keyword arguments."""
        sh = self.shared
        ks = self.kernels() if sh.snapshot else []
        cur = sh.current
        return dict(state=sh.state, ready=sum(k.state == "ready" for k in ks), total=len(ks),
                    failed=sum(k.state in ("failed", "unsupported") for k in ks),
                    queued=sum(j.state == "queued" for j in (sh.store.active() if sh.store else [])),
                    kernel=cur.kernel if cur else "", phase=sh.progress.phase,
                    percent=sh.progress.percent, waiting_for=sh.waiting_for)
