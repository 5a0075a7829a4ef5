"""The builder: one job at a time, through the ``Engine``.

It takes the next queued job once no scan is pending and no package manager
holds its lock, runs it, records how it ended, and reports its progress.
A job is cancelled on request, or dropped by the intake's plan; a stop
kills the build and queues it again, unless the modules are being swapped
in (the *critical* section), which a stop waits for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import Callable

import structlog

from nvkmd.build.progress import Progress
from nvkmd.daemon.intake import Intake
from nvkmd.daemon.state import Shared, given
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.install.engine import Engine, Outcome
from nvkmd.jobs.store import next_job
from nvkmd.model import JobFinished, JobInfo, JobProgress

log = structlog.get_logger()

REQUESTED = "cancelled on request"


class Builder:
    def __init__(self, shared: Shared, intake: Intake,
                 critical_hooks: list[Callable[[bool], None]]):
        """``critical_hooks`` are told when an install enters and leaves its
        critical section (e.g. the daemon's logind shutdown inhibitor)."""
        self.shared = shared
        self.intake = intake
        self.critical_hooks = critical_hooks
        self.engine = Engine(shared.paths, shared.config, on_critical=self._on_critical)
        self._build_task: asyncio.Task | None = None
        self._cancel: tuple[str, bool] | None = None     # (cause, hold back a retry)
        self._critical = threading.Event()

    def reload(self) -> None:
        self.engine = Engine(self.shared.paths, self.shared.config, on_critical=self._on_critical)

    # -- the install's critical section ------------------------------------------------
    def _on_critical(self, entering: bool) -> None:
        # Called from the install thread.
        (self._critical.set if entering else self._critical.clear)()
        for hook in list(self.critical_hooks):
            try:
                hook(entering)
            except Exception:   # a hook must never break an install
                log.exception("on_critical hook failed", hook=repr(hook))

    async def wait_not_critical(self, timeout: float) -> None:
        if not self._critical.is_set():
            return
        log.info("waiting for the module install to finish before stopping")

        def wait() -> None:
            deadline = time.monotonic() + timeout
            while self._critical.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
        await asyncio.to_thread(wait)

    # -- the loop ------------------------------------------------------------------------
    def _next(self) -> JobInfo | None:
        sh = self.shared
        assert sh.store
        snap = sh.snapshot
        return next_job(sh.store.active(), sh.paths.running_kernel(),
                        snap.boot_kernel if snap else None)

    async def run(self) -> None:
        sh, intake = self.shared, self.intake
        while True:
            await intake.settled.wait()
            job = self._next()
            if job is None or sh.snapshot is None or sh.snapshot.source_obj is None:
                sh.wake.clear()
                await sh.wake.wait()
                continue
            if await intake.package_managers_busy():
                try:
                    await intake.wait_for_package_managers()
                except NvkmdError as e:
                    log.error("not building while a package manager is busy", reason=e.message)
                    sh.wake.clear()
                    await sh.wake.wait()
                    continue
                # The transaction changed things: look again before building.
                intake.poke(now=True)
                continue
            if not intake.settled.is_set():
                continue
            await self._run_job(job)

    async def _run_job(self, job: JobInfo) -> None:
        sh = self.shared
        assert sh.store and sh.snapshot
        snap = sh.snapshot
        source = snap.source_obj
        kscan = snap.kernels.get(job.kernel)
        if source is None or kscan is None or job.source_version != source.version:
            return                                 # the next rescan drops it
        job = sh.store.start(job.id)
        sh.current = job
        sh.progress = Progress("prepare", 0)
        self._cancel = None
        blog = log.bind(kernel=job.kernel, job=job.id)
        blog.info("build started", version=source.version, force=job.force,
                  reason=sh.store.reason(job.id))
        sh.refresh_state()
        task = asyncio.create_task(self._build(job, source))
        self._build_task = task
        outcome: Outcome | None = None
        error: NvkmdError | None = None
        try:
            outcome = await task
        except asyncio.CancelledError:
            if sh.stopping or self._cancel is None:
                # Stopping: the make process group is dead by now; the next
                # start builds again (forced, so the install is redone).
                sh.store.requeue(job.id)
                blog.warning("build interrupted by shutdown; queued again")
                sh.current = None
                raise
            cause, hold = self._cancel or (REQUESTED, True)
            done = sh.store.finish(job.id, "cancelled", cause=cause,
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
            done = sh.store.finish(job.id, "failed", cause=error.message, kind=error.code.value,
                                   build_key=kscan.build_key)
        else:
            assert outcome is not None
            d = outcome.diagnosis
            result = "success" if outcome.ok else "failed"
            done = sh.store.finish(job.id, result, cause=d.cause if d else "",
                                   hint=d.hint if d else "", kind=d.kind if d else "",
                                   log=str(outcome.log or ""), build_key=kscan.build_key)
        # A failed build is a warning: `journalctl -p warning` must show it.
        say = blog.warning if done.result == "failed" else blog.info
        say("build finished", result=done.result,
            elapsed_s=round(done.finished_at - done.started_at, 1),
            **given(cause=done.cause, log=done.log))
        self._finished(done)

    async def _build(self, job: JobInfo, source) -> Outcome:
        structlog.contextvars.bind_contextvars(kernel=job.kernel, job=job.id)
        return await self.engine.build(job.kernel, source, force=job.force,
                                       on_progress=lambda p: self._on_progress(job, p))

    def _finished(self, job: JobInfo) -> None:
        sh = self.shared
        sh.current = None
        # State first: a client that reads the properties when JobFinished
        # arrives sees the daemon past this job already.
        sh.refresh_state()
        sh.emit(JobFinished(job.id, job.kernel, job.result, job.cause, job.hint, job.log))
        if not sh.stopping:
            # The kernel's module changed: look again before the next job.
            self.intake.poke(now=True)

    def _on_progress(self, job: JobInfo, p: Progress) -> None:
        sh = self.shared
        if p == sh.progress:
            return
        before = sh.progress
        sh.progress = p
        # The journal gets a line per phase and per 10%: enough to follow a
        # build, and a few dozen lines for NVIDIA's thousands of objects.
        if p.phase != before.phase or p.percent // 10 != before.percent // 10:
            log.info("build progress", kernel=job.kernel, job=job.id, phase=p.phase,
                     percent=p.percent)
        sh.emit(JobProgress(job.id, job.kernel, p.phase, p.percent, p.eta_s))
        sh.emit_state()

    # -- what others ask of it --------------------------------------------------------
    def cancel_running(self, cause: str, hold_back: bool) -> None:
        """Cancel the running build; ``hold_back`` keeps the inputs' key, so
        the same inputs are not retried automatically."""
        if self._build_task is not None and not self._build_task.done():
            self._cancel = (cause, hold_back)
            self._build_task.cancel()

    def drop_running(self, job_id: int, cause: str) -> bool:
        """The intake's plan drops ``job_id``: cancel it if it is running."""
        cur = self.shared.current
        if cur is None or cur.id != job_id:
            return False
        self.cancel_running(cause, hold_back=False)
        return True

    def live(self, job: JobInfo) -> JobInfo:
        """``job`` with the running build's phase and percent."""
        sh = self.shared
        cur = sh.current
        if cur is not None and job.id == cur.id and job.state == "running":
            return dataclasses.replace(job, phase=sh.progress.phase, percent=sh.progress.percent,
                                       eta_s=sh.progress.eta_s)
        return job
