"""What clients ask of the daemon: the ``model.CoreAPI`` methods.

Each checks its arguments (``nvkmd.limits``), raises ``NvkmdError`` on bad
input and never blocks the event loop on slow work: it answers from the
last scan and the queue, and leaves the work to the intake and the builder.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import structlog

from nvkmd import __version__
from nvkmd.build.log import latest_log, tail
from nvkmd.daemon.bootwatch import BootWatch
from nvkmd.daemon.builder import REQUESTED, Builder
from nvkmd.daemon.intake import Intake
from nvkmd.daemon.preflights import Preflights
from nvkmd.daemon.state import Shared
from nvkmd.errors import ErrorCode, NvkmdError, invalid
from nvkmd.install import cleanup as modcleanup
from nvkmd.jobs.store import ordered
from nvkmd.limits import (
    bool_arg,
    finished_arg,
    job_id_arg,
    keep_arg,
    kernel_arg,
    lines_arg,
)
from nvkmd.model import (
    DaemonStatus,
    JobFinished,
    NextBoot,
    JobInfo,
    JobQueued,
    KernelStatus,
    LastBuild,
    SourceInfo,
)

log = structlog.get_logger()


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


class Requests:
    """Mixed into ``Core``, which gives it the parts it answers from."""

    shared: Shared
    intake: Intake
    builder: Builder
    boot: BootWatch
    preflights: Preflights

    def subscribe(self, callback) -> None:
        self.shared.subscribe(callback)

    def status(self) -> DaemonStatus:
        sh = self.shared
        src = sh.snapshot.source if sh.snapshot else None
        info = SourceInfo(src.path, src.version, src.kind, src.error) if src else SourceInfo("", "", "")
        return DaemonStatus(__version__, sh.state, info, self.kernels(), self.jobs(10), sh.driver,
                            self.boot.current, candidates=self.preflights.status())

    def kernels(self) -> list[KernelStatus]:
        sh = self.shared
        snap = sh.snapshot
        if snap is None:
            return []
        store = sh.need_store()
        active = {j.kernel: j for j in store.active()}
        last = store.last_finished()
        running = sh.paths.running_kernel()
        out = []
        for r in snap.releases():
            k = snap.kernels[r]
            lf = last.get(r)
            lb = LastBuild(lf[0].result, lf[0].log, lf[0].cause, lf[0].hint, lf[0].finished_at) \
                if lf else None
            live = sh.current is not None and sh.current.kernel == r
            out.append(KernelStatus(
                release=r, running=r == running, headers=k.headers, headers_package=k.headers_package,
                state=kernel_state(k.headers, k.current, k.build_key, active.get(r), lf),
                origin=k.origin, module_version=k.module_version,
                phase=sh.progress.phase if live else "", percent=sh.progress.percent if live else 0,
                last_build=lb))
        return out

    def jobs(self, include_finished: int = 20) -> list[JobInfo]:
        n = finished_arg(include_finished)
        sh = self.shared
        store = sh.need_store()
        active = store.active()
        snap = sh.snapshot
        running = [self.builder.live(j) for j in active if j.state == "running"]
        queue = ordered(active, sh.paths.running_kernel(), snap.boot_kernel if snap else None)
        return store.finished(n) + running + queue

    def build(self, kernel: str, force: bool) -> list[int]:
        kernel = kernel_arg(kernel)
        force = bool_arg("force", force)
        sh = self.shared
        store = sh.need_store()
        snap = sh.snapshot
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
                sh.emit(JobQueued(job))
        sh.wake.set()
        return ids

    def cancel(self, job_id: int) -> None:
        job_id = job_id_arg(job_id)
        sh = self.shared
        store = sh.need_store()
        job = store.get(job_id)
        if job.state == "running":
            self.builder.cancel_running(REQUESTED, hold_back=True)
            return
        if job.state != "queued":
            raise invalid(f"job {job_id} has already finished ({job.state})")
        k = sh.snapshot.kernels.get(job.kernel) if sh.snapshot else None
        # The inputs' key holds back an automatic retry: cancelled on purpose.
        store.finish(job_id, "cancelled", cause=REQUESTED, build_key=k.build_key if k else "")
        log.info("job cancelled", job=job_id, kernel=job.kernel)
        sh.emit(JobFinished(job_id, job.kernel, "cancelled", REQUESTED, "", ""))

    def get_log(self, job_id: int, kernel: str, lines: int) -> tuple[str, list[str]]:
        job_id = job_id_arg(job_id, zero_ok=True)
        kernel = kernel_arg(kernel)
        lines = lines_arg(lines)
        sh = self.shared
        log_dir = sh.paths.log_dir
        path: Path | None = None
        if job_id:
            job = sh.need_store().get(job_id)
            if job.state == "running":
                path = latest_log(log_dir, job.kernel)
            elif job.log:
                path = Path(job.log)
            else:
                raise NvkmdError(ErrorCode.NO_SUCH_JOB, f"job {job_id} has no build log "
                                 f"({job.state}{': ' + job.cause if job.cause else ''})")
        else:
            if kernel and sh.snapshot and kernel not in sh.snapshot.kernels and \
                    not (log_dir / kernel).is_dir():
                raise NvkmdError(ErrorCode.NO_SUCH_KERNEL, f"no kernel {kernel} is installed")
            path = latest_log(log_dir, kernel or None)
        if path is None:
            return "", []
        log_root = log_dir.resolve()
        if not path.resolve().is_relative_to(log_root):
            raise NvkmdError(ErrorCode.INTERNAL, f"log {path} is outside {log_root}")
        try:
            return str(path), tail(path, lines)
        except OSError as e:
            raise NvkmdError(ErrorCode.NO_SUCH_JOB, f"cannot read {path}: {e.strerror}") from None

    def cleanup(self, keep: int, execute: bool) -> list[str]:
        keep = keep_arg(keep)
        execute = bool_arg("execute", execute)
        sh = self.shared
        snap = sh.snapshot
        if snap is None:
            raise NvkmdError(ErrorCode.BUSY, "the daemon is starting")
        busy = sh.current.kernel if sh.current else None
        # Modules follow cleanup.py (kernels that are gone, --keep N newest,
        # never the running or building kernel, DKMS's through dkms remove);
        # logs and cached builds of gone kernels are pruned beside them.
        plan_ = modcleanup.cleanup(sh.paths, keep, execute, busy)
        doomed = modcleanup.logs_and_cache(sh.paths, set(snap.kernels), sh.config.logs_keep, busy)
        if execute:
            for p in doomed:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        p.unlink()
            log.info("cleanup done", removed=len(doomed) + len(plan_.to_remove), keep=keep)
            self.intake.poke(now=True)
        return plan_.paths(sh.paths) + [str(p) for p in doomed]

    def rescan(self) -> None:
        self.intake.poke(full=True, now=True)

    def next_boot(self) -> NextBoot:
        return self.boot.current

    async def boot_try(self, kernel: str) -> str:
        kernel = kernel_arg(kernel)
        if not kernel:
            raise invalid("boot try: name a kernel")
        msg = await self.boot.boot_try(kernel)
        self.intake.poke(now=True)        # the one-shot shows in NextBoot at once
        return msg

    def set_boot_guard(self, mode: str) -> str:
        return self.boot.set_mode(mode)

    async def rescan_and_wait(self) -> None:
        """Rescan (D-Bus): a full rescan, reported as done only once it is."""
        await self.intake.rescan_now()

    def preflight(self, target: str) -> int:
        """Queue a preflight (TARGET "" = every candidate); its results come
        with PreflightFinished under the returned id."""
        return self.preflights.request(target)

    def candidates(self) -> list[dict]:
        return self.preflights.status()
