"""``nvkmctl wait-ready``: the boot-time check that the running kernel has
its NVIDIA module, run by nvkmd-ready.service before the display manager.

The healthy path reads files only (the install manifest beside the
modules, and the driver source's version and fingerprint) and imports no
D-Bus code: on a normal boot it costs a Python start and a few stat calls.
Only when the module is missing or stale does it talk to the daemon, which
alone builds: it asks for a build unless one is queued already, follows
the job's progress on the console, keeps systemd's start timeout ahead of
its own deadline with ``EXTEND_TIMEOUT_USEC``, and gives up with one line
naming the cause and the log.

``judge`` and ``settle`` are the decisions, as pure functions of the
daemon's status; ``run`` and ``Waiter`` are the shell around them.  A
kernel whose last build failed is built again (the boot is the moment it
matters); one without headers, or that the driver does not support, fails
at once with the reason.  A daemon that does not answer is waited for
briefly (a restart, a D-Bus activation), not for the whole timeout.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Callable

from nvkmd.config import Config
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.model import JobFinished, JobInfo, JobProgress, KernelStatus
from nvkmd.paths import Paths

# Exit statuses, as nvkmctl documents them.
EXIT_READY = 0
EXIT_FAILED = 1          # the build failed, or the kernel cannot get a module
EXIT_UNREACHABLE = 3     # the daemon did not answer within the timeout
EXIT_DENIED = 4
EXIT_TIMEOUT = 5         # the build did not finish within the timeout

# systemd's start timeout is kept this far beyond our own deadline, so
# that our message, not systemd's SIGTERM, ends a wait that runs out.
EXTEND_MARGIN_S = 30.0


@dataclasses.dataclass(frozen=True)
class FileCheck:
    ready: bool
    detail: str          # what was found, or why the files cannot tell


def check_files(paths: Paths, config: Config, release: str) -> FileCheck:
    """Does ``release`` have current NVIDIA modules, judging by files alone?

    ``ready=False`` means "cannot say yes", not "no": the daemon decides.
    Nothing is written: a Debian source tarball is used only if it has
    been unpacked already (by the daemon).
    """
    from nvkmd.system import source
    from nvkmd.system.installed import module_is_current
    from nvkmd.system.kernels import Kernel

    kernel = Kernel(paths, release)
    try:
        src = source.discover(paths, config, unpack=False)
    except NvkmdError as e:
        return FileCheck(False, f"the driver source cannot be read from files: {e.message}")
    if module_is_current(kernel, src) or _dkms_current(paths, config, kernel, src):
        return FileCheck(True, f"{release} has NVIDIA modules {src.version} ({src.kind} source)")
    return FileCheck(False, f"{release} has no current NVIDIA modules for {src.version}")


def _dkms_current(paths: Paths, config: Config, kernel, src) -> bool:
    """The DKMS backend's notion of current, from DKMS's tree and nvkmd's
    record of the digest it built, without running ``dkms status`` (a
    shell script that takes longer than the rest of this check)."""
    from nvkmd.system import dkms
    if config.build_backend == "kbuild" or not dkms.usable(paths):
        return False
    return any(dkms.is_current(paths, kernel, src, dkms.Registration(name, version, src.origin, src.tree))
               for name, version in dkms.installed(paths, kernel.release) if version == src.version)


# -- the slow path's decisions (pure) --------------------------------------

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
    if mine is not None and mine.state in ("succeeded", "failed", "cancelled"):
        # Finished while no signal reached us (a restart, a reconnect).
        return Step("finished", job_id=mine.id)
    if daemon_state == "starting":
        return Step("wait")
    if kernel is None:
        return Step("fail", message=f"nvkmd does not know kernel {release} "
                                    "(no directory under /lib/modules?)")
    if kernel.state == "ready":
        return Step("ready", message=f"{release} is ready ({kernel.module_version})")
    active = [j for j in jobs if j.kernel == release and j.state in ("queued", "running")]
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
        return EXIT_READY, f"{release}: NVIDIA modules built and installed"
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

def say(line: str) -> None:
    print(f"nvkmd-ready: {line}", flush=True)


def fail(line: str) -> None:
    print(f"nvkmd-ready: {line}", file=sys.stderr, flush=True)


class Notifier:
    """systemd notifications (STATUS=, EXTEND_TIMEOUT_USEC=); silent without NOTIFY_SOCKET."""

    def __init__(self) -> None:
        import sdnotify
        self._n = sdnotify.SystemdNotifier()

    def send(self, **fields: object) -> None:
        self._n.notify("\n".join(f"{k.upper()}={v}" for k, v in fields.items()))


def run(paths: Paths, config: Config, release: str | None, timeout: float, bus: str,
        clock: Callable[[], float] = time.monotonic) -> int:
    """``nvkmctl wait-ready``; returns the exit status."""
    from nvkmd.system.kernels import check_release
    release = check_release(release or paths.running_kernel())
    deadline = clock() + timeout
    found = check_files(paths, config, release)
    if found.ready:
        say(found.detail)
        return EXIT_READY
    say(f"{found.detail}; asking nvkmd")
    import asyncio
    return asyncio.run(Waiter(release, deadline, bus, Notifier(), clock).run())


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
                 clock: Callable[[], float]):
        self.release = release
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
            (say if code == EXIT_READY else fail)(line)
            return code
        if step.action == "ready":
            say(step.message)
            return EXIT_READY
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
            (say if code == EXIT_READY else fail)(line)
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



# -- nvkmctl wait-ready ---------------------------------------------------------

def cmd_wait_ready(args) -> int:
    """Load the configuration of ``--root`` and run the check."""
    from nvkmd.cli.main import EXIT_USAGE
    if not args.timeout > 0:
        fail(f"--timeout must be a positive number of seconds, not {args.timeout}")
        return EXIT_USAGE
    base = Paths.build(args.root)
    config = Config.load(base.config_file)
    paths = Paths.build(args.root, None, config)
    if not getattr(args, "json", False):
        return run(paths, config, args.kernel or None, args.timeout, args.bus)
    # --json: the same lines, collected, then one object.
    import contextlib
    import io
    import json
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = run(paths, config, args.kernel or None, args.timeout, args.bus)
    lines = [line.removeprefix("nvkmd-ready: ") for line in buf.getvalue().splitlines()]
    print(json.dumps({"kernel": args.kernel or paths.running_kernel(), "ready": code == EXIT_READY,
                      "exit_status": code, "messages": lines}, indent=2))
    return code
