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

    def to_dict(self) -> dict[str, Any]:
        return {"daemon": {"version": self.version, "state": self.state},
                "source": _asdict(self.source),
                "kernels": [k.to_dict() for k in self.kernels],
                "jobs": [j.to_dict() for j in self.jobs],
                "driver": _asdict(self.driver)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DaemonStatus":
        daemon = d.get("daemon", {})
        return cls(version=daemon.get("version", ""), state=daemon.get("state", ""),
                   source=SourceInfo.from_dict(d.get("source", {})),
                   kernels=[KernelStatus.from_dict(k) for k in d.get("kernels", [])],
                   jobs=[JobInfo.from_dict(j) for j in d.get("jobs", [])],
                   driver=DriverInfo.from_dict(d.get("driver", {})))


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


Event = JobQueued | JobProgress | JobFinished | StateChanged


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


from typing import Callable  # noqa: E402  (used in the Protocol's string annotation)
