"""``nvkmctl wait-ready``'s waiting path, when the files do not show a
current module: it asks the daemon, which alone builds, for a build unless
one is queued already, follows the job's progress on the console, keeps
systemd's start timeout ahead of its own deadline with
``EXTEND_TIMEOUT_USEC``, and gives up with one line naming the cause and
the log.

``judge`` and ``settle`` are the decisions, as pure functions of the
daemon's status; ``Waiter`` is the shell around them.  A kernel whose last
build failed is built again (the boot is the moment it matters); one
without headers, or that the driver does not support, fails at once with
the reason.  A daemon that does not answer is waited for briefly (a
restart, a D-Bus activation), not for the whole timeout.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from nvkmd.cli.common import fail, say
from nvkmd.errors import (
    EXIT_DENIED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    ErrorCode,
    NvkmdError,
)
from nvkmd.model import (
    ACTIVE_JOB_STATES,
    FINISHED_JOB_STATES,
    JobFinished,
    JobInfo,
    JobProgress,
    KernelStatus,
)

# systemd's start timeout is kept this far beyond our own deadline, so
# that our message, not systemd's SIGTERM, ends a wait that runs out.
EXTEND_MARGIN_S = 30.0


# -- the decisions (pure) ---------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Step:
    action: str          # "ready" | "wait" | "build" | "fail" | "finished"
    job_id: int = 0
    message: str = ""


def judge(release: str, daemon_state: str, kernel: KernelStatus | None, jobs: list[JobInfo],
          awaited: int = 0) -> Step:
    """What to do, given the daemon's view of ``release`` and its jobs.
    ``awaited``: the job this check already waits for, if any."""
    mine = next((j for j in jobs if awaited and j.id == awaited), None)
    if mine is not None and mine.state in FINISHED_JOB_STATES:
        # Finished while no signal reached us (a restart, a reconnect).
        return Step("finished", job_id=mine.id)
    if daemon_state == "starting":
        return Step("wait")
    if kernel is None:
        return Step("fail", message=f"nvkmd does not know kernel {release} "
                                    "(no directory under /lib/modules?)")
    if kernel.state == "ready":
        return Step("ready", message=f"{release} is ready ({kernel.module_version})")
    active = [j for j in jobs if j.kernel == release and j.state in ACTIVE_JOB_STATES]
    if active:
        return Step("wait", job_id=min(active, key=lambda j: j.id).id)
    if kernel.state == "waiting-for-headers":
        pkg = f" (install {kernel.headers_package})" if kernel.headers_package else ""
        return Step("fail", message=f"{release} has no kernel headers{pkg}: nvkmd cannot build for it")
    if kernel.state == "unsupported":
        cause = kernel.last_build.cause if kernel.last_build and kernel.last_build.cause else \
            "the driver source does not support it"
        return Step("fail", message=f"{release} is unsupported: {cause}")
    return Step("build")


def finished_of(job: JobInfo) -> JobFinished:
    return JobFinished(job.id, job.kernel, job.result or job.state, job.cause, job.hint, job.log)


def settle(release: str, finished: JobFinished, first_error: str = "") -> tuple[int, str]:
    """Exit status and the one line to print once the awaited job ended;
    ``first_error`` is the log's first error line, shown beside the cause."""
    if finished.result == "success":
        return EXIT_OK, f"{release}: NVIDIA modules built and installed"
    cause = finished.cause or f"the build {finished.result}"
    line = f"{release}: NVIDIA module build {finished.result}: {cause}"
    if first_error and first_error not in cause:
        line += f": {first_error.strip()}"
    if finished.log:
        line += f" (log: {finished.log})"
    return EXIT_FAILED, line


def extend_usec(deadline: float, now: float) -> int:
    """``EXTEND_TIMEOUT_USEC``: our remaining time plus the margin."""
    return int((max(deadline - now, 0.0) + EXTEND_MARGIN_S) * 1e6)


# -- the shell ----------------------------------------------------------------

class Notifier:
    """systemd notifications (STATUS=, EXTEND_TIMEOUT_USEC=); silent without NOTIFY_SOCKET."""

    def __init__(self) -> None:
        import sdnotify
        self._n = sdnotify.SystemdNotifier()

    def send(self, **fields: object) -> None:
        self._n.notify("\n".join(f"{k.upper()}={v}" for k, v in fields.items()))


class Waiter:
    """The slow path: follow (or request) the daemon's build of one kernel.

    Signals tell it what happens; a status poll every ``POLL_S`` covers
    signals lost to a daemon restart and keeps systemd's timeout extended.
    """

    POLL_S = 5.0
    # How long a daemon that does not answer may take to (re)appear: long
    # enough for systemd's restart of a crashed nvkmd (RestartSec=5s) or a
    # D-Bus activation, short enough that a daemon that is down does not
    # hold the boot for the whole timeout.
    UNREACHABLE_GRACE_S = 20.0

    def __init__(self, release: str, deadline: float, bus: str, notifier: Notifier,
                 clock: Callable[[], float], files_ready: Callable[[], bool] = lambda: True):
        self.release = release
        # The files said "not ready" before the daemon was asked: a daemon
        # that says "ready" may not have rescanned since the module went.
        self.files_ready = files_ready
        self.rescanned = False
        self.deadline = deadline
        self.bus = bus
        self.notifier = notifier
        self.clock = clock
        self.job_id = 0
        self.shown = ("", -1)
        self.last_log = ""
        self.unreachable_since: float | None = None
        self.last_error = ""
        self.where = ""              # "queued", or the last phase and percent

    def remaining(self) -> float:
        return max(self.deadline - self.clock(), 0.0)

    def keep_alive(self, status: str) -> None:
        self.notifier.send(status=status, extend_timeout_usec=extend_usec(self.deadline, self.clock()))

    def note(self, line: str) -> None:
        """A waiting state: printed once, sent to systemd every time."""
        self.where = "queued"
        if self.shown != (line, -1):
            self.shown = (line, -1)
            say(line)
        self.keep_alive(line)

    def progress(self, phase: str, percent: int) -> None:
        # One line per phase and per 10%: readable on a boot console.
        self.where = f"{phase} {percent}%"
        step = (phase, percent // 10)
        if step != self.shown:
            self.shown = step
            say(f"building NVIDIA modules for {self.release}: {phase} {percent}%")
        self.keep_alive(f"building {self.release}: {phase} {percent}%")

    async def run(self) -> int:
        import asyncio

        from nvkmd.clients import manager as clientmod

        events: asyncio.Queue = asyncio.Queue()
        conn = None
        try:
            while True:
                if conn is None:
                    conn = await self._connect(clientmod, events)
                    if conn is None:
                        return self._gave_up_unreachable()
                try:
                    done = await self._step(conn, events)
                except NvkmdError as e:
                    if e.code is ErrorCode.UNREACHABLE:
                        self._unreachable(e)
                        conn.close()
                        conn = None
                        continue
                    if e.code is ErrorCode.ACCESS_DENIED:
                        fail(f"{self.release}: not allowed to ask nvkmd to build: {e.message}")
                        return EXIT_DENIED
                    fail(f"{self.release}: {e.message}")
                    return EXIT_FAILED
                if done is not None:
                    return done
        finally:
            if conn is not None:
                conn.close()

    # -- connecting ---------------------------------------------------------
    def _unreachable(self, e: NvkmdError) -> None:
        self.last_error = e.message
        if self.unreachable_since is None:
            self.unreachable_since = self.clock()
            say(f"nvkmd is not answering ({e.message}); waiting for it")

    def _gave_up_unreachable(self) -> int:
        fail(f"{self.release}: no NVIDIA module, and nvkmd is not reachable: {self.last_error} "
             "(see `journalctl -u nvkmd`)")
        return EXIT_UNREACHABLE

    def _may_retry(self) -> float:
        """Seconds to wait before the next attempt, or 0 to give up."""
        now = self.clock()
        since = self.unreachable_since if self.unreachable_since is not None else now
        limit = min(self.deadline, since + self.UNREACHABLE_GRACE_S)
        return min(1.0, limit - now) if now < limit else 0.0

    async def _connect(self, clientmod, events):  # -> Client | None
        import asyncio
        while True:
            try:
                conn = await asyncio.wait_for(clientmod.connect(self.bus), max(self.remaining(), 0.1))
                try:
                    await conn.subscribe(events.put_nowait)
                    await conn.watch_owner(lambda owner: events.put_nowait(("owner", owner)))
                    if not await conn.owner():
                        # Not running: a call by name asks the bus to start it.
                        await conn.call("GetStatus", timeout=max(self.remaining(), 0.1))
                except BaseException:
                    conn.close()
                    raise
                self.unreachable_since = None
                return conn
            except asyncio.TimeoutError:
                self._unreachable(NvkmdError(ErrorCode.UNREACHABLE, "no answer"))
            except NvkmdError as e:
                if e.code is not ErrorCode.UNREACHABLE:
                    raise
                self._unreachable(e)
            wait = self._may_retry()
            if wait <= 0:
                return None
            self.keep_alive("waiting for nvkmd")
            await asyncio.sleep(wait)   # a retry interval, bounded by the deadline

    # -- one round: judge the daemon's view, then wait for news ---------------
    async def _step(self, conn, events) -> int | None:
        try:
            status = await conn.status()
        except NvkmdError as e:
            if e.code is not ErrorCode.BUSY:     # BUSY: the daemon is starting
                raise
            return await self._wait_news(events)
        kernel = next((k for k in status.kernels if k.release == self.release), None)
        step = judge(self.release, status.state, kernel, status.jobs, self.job_id)
        if step.action == "finished":
            job = next(j for j in status.jobs if j.id == step.job_id)
            code, line = self._settle(finished_of(job))
            (say if code == EXIT_OK else fail)(line)
            return code
        if step.action == "ready":
            if not self.rescanned and not self.files_ready():
                # Once: after a rescan the daemon has seen what the files show.
                self.rescanned = True
                say(f"nvkmd says {self.release} is ready, but its module files are not "
                    "there; asking nvkmd to look again")
                try:
                    await conn.rescan()
                except NvkmdError as e:
                    if e.code is not ErrorCode.ACCESS_DENIED:
                        raise
                    return None      # not ours to ask: the daemon rescans on its own
                return None
            say(step.message)
            return EXIT_OK
        if step.action == "fail":
            fail(step.message)
            return EXIT_FAILED
        if step.action == "build":
            ids = await conn.build(self.release, False)
            if not ids:
                return None          # nothing was needed after all: judge again
            self.job_id = ids[0]
            say(f"asked nvkmd to build {self.release} (job {self.job_id})")
        elif step.job_id:
            if step.job_id != self.job_id:
                say(f"waiting for nvkmd's job {step.job_id} for {self.release}")
            self.job_id = step.job_id
        job = next((j for j in status.jobs if self.job_id and j.id == self.job_id), None)
        if job is not None and job.state == "queued":
            why = " (nvkmd waits for a package manager to finish)" \
                if status.state == "waiting-for-lock" else ""
            self.note(f"nvkmd's job {job.id} for {self.release} is queued{why}")
        elif job is not None:
            self.last_log = job.log or self.last_log
            self.progress(job.phase or "prepare", job.percent)
        else:
            self.keep_alive(f"waiting for {self.release}")
        return await self._wait_news(events)

    async def _wait_news(self, events) -> int | None:
        """Follow signals until the next status poll is due; an exit status
        when the wait is over."""
        import asyncio
        poll_at = min(self.clock() + self.POLL_S, self.deadline)
        while (left := poll_at - self.clock()) > 0:
            try:
                ev = await asyncio.wait_for(events.get(), left)
            except asyncio.TimeoutError:
                break
            code = self._event(ev)
            if code is not None:
                return code
        return None if self.remaining() > 0 else self._timed_out()

    def _event(self, ev) -> int | None:
        if isinstance(ev, tuple) and ev[0] == "owner":
            if not ev[1]:
                raise NvkmdError(ErrorCode.UNREACHABLE, "nvkmd left the bus")
            return None
        if isinstance(ev, JobProgress) and ev.job_id == self.job_id:
            self.progress(ev.phase, ev.percent)
        elif isinstance(ev, JobFinished) and ev.job_id == self.job_id:
            code, line = self._settle(ev)
            (say if code == EXIT_OK else fail)(line)
            return code
        return None

    def _settle(self, finished: JobFinished) -> tuple[int, str]:
        first_error = ""
        if finished.result != "success" and finished.log:
            # The daemon's signal names the cause; the log itself shows the
            # line a person needs first.  Reading it is files only.
            from nvkmd.build import diagnose
            try:
                text = open(finished.log, errors="replace").read()
            except OSError:
                text = ""
            first_error = diagnose.diagnose(text).first_error if text else ""
        return settle(self.release, finished, first_error)

    def _timed_out(self) -> int:
        where = f"{self.where}, " if self.where else ""
        log = f"; log: {self.last_log}" if self.last_log else ""
        fail(f"{self.release}: timed out waiting for nvkmd's build ({where}job {self.job_id}); "
             f"it goes on in the background{log}")
        return EXIT_TIMEOUT
