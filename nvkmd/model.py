"""Plain data shared by the core and its adapters (D-Bus, CLI, agent).

The core produces these; the D-Bus adapter serialises them (``to_dict``
gives JSON-ready dicts whose keys are the ones `nvkmctl status --json`
prints); clients rebuild them from the dicts.  No I/O here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

# Per-kernel state, exactly one at a time.
KERNEL_STATES = ("ready", "queued", "building", "failed", "waiting-for-headers",
                 "unsupported", "missing")
# Where a kernel's installed nvidia module came from.
ORIGINS = ("nvkmd", "dkms", "distro", "manual", "none")
# Job lifecycle.
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE_JOB_STATES = JOB_STATES[:2]
FINISHED_JOB_STATES = JOB_STATES[2:]
# The reason of a job a restart took up again (forced: the install is redone).
RESUMED = "resumed after a restart"
# Daemon state.
DAEMON_STATES = ("starting", "idle", "waiting-for-lock", "building", "stopping")


def _asdict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


_ZERO = {"str": "", "bool": False, "int": 0, "float": 0.0}


def _fromdict(cls: type, d: dict[str, Any]) -> Any:
    """Rebuild ``cls`` from its dict form.  Keys it does not know are ignored
    and missing plain fields take their zero value, so a client and a daemon
    of different versions still understand each other."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in d:
            kwargs[f.name] = d[f.name]
        elif f.default is dataclasses.MISSING and f.type in _ZERO:
            kwargs[f.name] = _ZERO[f.type]
    return cls(**kwargs)


class Record:
    """Plain data with a dict form: ``to_dict`` for JSON and the bus,
    ``from_dict`` to rebuild it on the other side."""

    def to_dict(self) -> dict[str, Any]:
        return _asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        return _fromdict(cls, d)


@dataclasses.dataclass(frozen=True)
class LastBuild(Record):
    result: str                 # success | failed | cancelled
    log: str                    # path of the build log, "" if none
    cause: str                  # "" on success
    hint: str
    finished_at: float          # seconds since the epoch


@dataclasses.dataclass(frozen=True)
class KernelStatus(Record):
    release: str
    running: bool
    headers: bool
    headers_package: str        # "" when no package database names it
    state: str                  # one of KERNEL_STATES
    origin: str                 # one of ORIGINS
    module_version: str         # "" when no module is installed
    phase: str = ""             # while building
    percent: int = 0
    last_build: LastBuild | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KernelStatus":
        lb = d.get("last_build")
        return dataclasses.replace(_fromdict(cls, {**d, "last_build": None}),
                                   last_build=LastBuild.from_dict(lb) if lb else None)


@dataclasses.dataclass(frozen=True)
class JobInfo(Record):
    id: int
    kernel: str
    source_version: str
    state: str                  # one of JOB_STATES
    force: bool = False
    phase: str = ""
    percent: int = 0
    queued_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    result: str = ""            # for finished jobs: success | failed | cancelled
    cause: str = ""
    hint: str = ""
    log: str = ""
    reason: str = ""            # why it was queued; RESUMED for one a restart took up again
    # A running build's seconds left, from the previous build of its driver
    # version on this machine (build/history.py); -1 when not known.
    eta_s: float = -1.0


@dataclasses.dataclass(frozen=True)
class SourceInfo(Record):
    path: str
    version: str
    kind: str                   # git | dkms | debian | run | path | "" if none found
    error: str = ""             # why no source could be used, "" if fine


@dataclasses.dataclass(frozen=True)
class DriverInfo(Record):
    """Does the driver fit together: module, user space, firmware, Secure Boot
    (``versions.driver_info``).  Every field is "" when it does not apply."""
    kernel: str = ""              # whose module was looked at (running, else newest with one)
    module_version: str = ""
    userspace_version: str = ""   # from libnvidia-*.so.<ver>/libcuda.so.<ver>, or the package DB
    userspace_from: str = ""      # libraries | dpkg | pacman | rpm
    firmware: str = ""            # present | missing (GSP firmware for module_version)
    secure_boot: str = "unknown"  # enabled | disabled | unknown
    signing_key: str = ""         # nvkmd's/DKMS's certificate: enrolled | not enrolled | unknown
    module_signature: str = ""    # unsigned | signed | signed, key enrolled | signed, key not enrolled
    hint: str = ""                # what to do about a mismatch, "" when all is well


@dataclasses.dataclass(frozen=True)
class DaemonStatus(Record):
    version: str
    state: str                  # one of DAEMON_STATES
    source: SourceInfo
    kernels: list[KernelStatus]
    jobs: list[JobInfo]
    driver: DriverInfo = DriverInfo()
    next_boot: NextBoot | None = None
    # Kernels the next upgrade would install, with their preflight verdict
    # (verdict.PreflightResult's dict form plus "state").
    candidates: list[dict] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {"daemon": {"version": self.version, "state": self.state},
             "source": _asdict(self.source),
             "kernels": [k.to_dict() for k in self.kernels],
             "jobs": [j.to_dict() for j in self.jobs],
             "driver": _asdict(self.driver)}
        if self.next_boot is not None:
            d["next_boot"] = self.next_boot.to_dict()
        d["candidates"] = [dict(c) for c in self.candidates]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DaemonStatus":
        daemon = d.get("daemon", {})
        return cls(version=daemon.get("version", ""), state=daemon.get("state", ""),
                   source=SourceInfo.from_dict(d.get("source", {})),
                   kernels=[KernelStatus.from_dict(k) for k in d.get("kernels", [])],
                   jobs=[JobInfo.from_dict(j) for j in d.get("jobs", [])],
                   driver=DriverInfo.from_dict(d.get("driver", {})),
                   next_boot=NextBoot.from_dict(d["next_boot"]) if d.get("next_boot") else None,
                   candidates=[dict(c) for c in d.get("candidates", []) if isinstance(c, dict)])


# -- the next boot -------------------------------------------------------------

# Why the kernel that boots next has no ready module ("" when it has one).
NEXT_BOOT_REASONS = ("", "failed", "unsupported", "building", "queued", "waiting-for-headers",
                     "missing", "unknown")


@dataclasses.dataclass(frozen=True)
class NextBoot(Record):
    """One answer to "will my next boot have a working NVIDIA driver?"."""
    kernel: str                 # the release the boot loader starts next, "" if not knowable
    ready: bool                 # its module is installed and current
    reason: str                 # one of NEXT_BOOT_REASONS
    detail: str                 # e.g. "build failed: <cause>", "building: 40%"
    cause: str = ""             # the build's diagnosed cause (failed, unsupported)
    percent: int = 0            # while building
    loader: str = ""            # grub | systemd-boot | unknown
    source: str = ""            # where the boot loader's choice was read
    one_shot: bool = False      # that choice holds for the next boot only
    guess: bool = False         # no boot loader was read: newest first
    note: str = ""              # something odd about the boot loader's setting
    guard: str = "warn"         # boot.guard: off | warn | pin
    guard_note: str = ""        # what the guard did last, or why it did nothing
    pinned: str = ""            # the kernel the guard pinned the default to, "" if none
    undo: str = ""              # how to undo that pin by hand

    def line(self, dash: str = "—") -> str:
        """`nvkmctl status`'s first line."""
        if not self.kernel:
            return f"Next boot: unknown {dash} {self.detail}"
        guess = " (a guess: newest first)" if self.guess else ""
        once = " (once)" if self.one_shot else ""
        state = "ready" if self.ready else f"NOT READY: {self.detail}"
        return f"Next boot: {self.kernel}{guess}{once} {dash} {state}"


def next_boot_of(kernel: str, kernels: list[KernelStatus], guess: bool = False,
                 **about: Any) -> NextBoot:
    """Pure: the next boot's readiness from the kernels' states.  ``about``:
    the other NextBoot fields (loader, source, one_shot, note, guard, ...)."""
    by = {k.release: k for k in kernels}
    if not kernel:
        return NextBoot("", False, "unknown", "which kernel boots next cannot be known",
                        guess=guess, **about)
    k = by.get(kernel)
    if k is None:
        return NextBoot(kernel, False, "unknown", f"the boot loader starts {kernel}, which is "
                        "not an installed kernel", guess=guess, **about)
    if guess and any(o.state != "ready" for o in kernels):
        # Which kernel boots is not known, and not all of them are ready.
        return NextBoot(kernel, False, "unknown", f"the boot loader was not recognised, and not "
                        f"every kernel has a ready module ({kernel}: {k.state})", guess=True, **about)
    cause = k.last_build.cause if k.last_build else ""
    if k.state == "ready":
        return NextBoot(kernel, True, "", "ready", guess=guess, **about)
    if k.state == "failed":
        detail = f"build failed: {cause}" if cause else "build failed"
    elif k.state == "unsupported":
        detail = f"unsupported: {cause}" if cause else "this driver does not support it"
    elif k.state == "building":
        detail = f"building: {k.percent}%"
    elif k.state == "queued":
        detail = "queued for a build"
    elif k.state == "waiting-for-headers":
        detail = "waiting for headers" + (f" (install {k.headers_package})" if k.headers_package else "")
    else:
        detail = "no module built for it"
    return NextBoot(kernel, False, k.state if k.state in NEXT_BOOT_REASONS else "missing", detail,
                    cause=cause if k.state in ("failed", "unsupported") else "",
                    percent=k.percent if k.state == "building" else 0, guess=guess, **about)


# -- events the core emits (the D-Bus adapter turns them into signals) ------


@dataclasses.dataclass(frozen=True)
class JobQueued:
    job: JobInfo


@dataclasses.dataclass(frozen=True)
class JobProgress:
    job_id: int
    kernel: str
    phase: str
    percent: int
    eta_s: float = -1.0         # in-process only: the signal's args stay (tssu); JobInfo has it


@dataclasses.dataclass(frozen=True)
class JobFinished:
    job_id: int
    kernel: str
    result: str                 # success | failed | cancelled
    cause: str
    hint: str
    log: str


@dataclasses.dataclass(frozen=True)
class StateChanged:
    """Daemon-level properties changed (state, current job, progress, source)."""
    state: str
    current_job: int            # 0 when none
    phase: str
    percent: int
    source_version: str


@dataclasses.dataclass(frozen=True)
class NextBootChanged:
    """The next boot's kernel, its readiness or the guard's doing changed."""
    next_boot: NextBoot


Event = JobQueued | JobProgress | JobFinished | StateChanged | NextBootChanged


class CoreAPI(Protocol):
    """What the daemon core offers its adapters.  Every method validates its
    arguments and raises ``NvkmdError`` (INVALID_ARGUMENT, NO_SUCH_KERNEL,
    NO_SUCH_JOB, ...) on bad input; none of them blocks the event loop."""

    def subscribe(self, callback: "Callable[[Event], None]") -> None: ...
    def status(self) -> DaemonStatus: ...
    def kernels(self) -> list[KernelStatus]: ...
    def jobs(self, include_finished: int = 20) -> list[JobInfo]: ...
    def build(self, kernel: str, force: bool) -> list[int]: ...   # kernel "" = all
    def cancel(self, job_id: int) -> None: ...
    def get_log(self, job_id: int, kernel: str, lines: int) -> tuple[str, list[str]]: ...
    def cleanup(self, keep: int, execute: bool) -> list[str]: ...
    def rescan(self) -> None: ...
    def next_boot(self) -> NextBoot: ...
    async def boot_try(self, kernel: str) -> str: ...  # a one-shot boot of a ready kernel
    def set_boot_guard(self, mode: str) -> str: ...   # "" = back to the configuration's


from typing import Callable  # noqa: E402  (used in the Protocol's string annotation)
