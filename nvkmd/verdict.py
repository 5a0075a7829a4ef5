"""A preflight's result: would the driver build for a kernel that is not
installed yet?  Shared by the runner, the daemon, the bus and the clients.

``to_dict`` is the ``--json`` shape of ``nvkmctl preflight`` and the D-Bus
payload; README documents it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

READY, WILL_BREAK, UNKNOWN = "ready", "will-break", "unknown"
VERDICTS = (READY, WILL_BREAK, UNKNOWN)
# nvkmctl preflight's exit statuses per verdict (README's table).
EXIT = {READY: 0, WILL_BREAK: 1, UNKNOWN: 6}
EXIT_UNKNOWN = 6
# Diagnoses that say nothing about the candidate kernel: the machine or the
# run itself failed, so the verdict is "could not tell".
NOT_ABOUT_THE_KERNEL = ("timeout", "cancelled", "killed", "disk-full", "compiler-missing",
                        "llvm-missing", "headers-missing", "unknown-run")


@dataclasses.dataclass(frozen=True)
class PreflightResult:
    kernel: str                  # the release, e.g. 6.1.0-57-amd64
    verdict: str                 # one of VERDICTS
    driver_version: str          # the driver source's version it was built from
    package: str = ""            # headers package (apt/pacman name), or the file/dir given
    package_version: str = ""
    manager: str = ""            # apt, pacman, file, directory
    kind: str = ""               # diagnosis kind when not ready (build/diagnose.py)
    cause: str = ""
    hint: str = ""
    first_error: str = ""
    log: str = ""
    hold: str = ""               # the command that keeps this kernel out
    held: bool = False           # nvkmd holds it (preflight.hold = true)
    checked_at: str = ""         # ISO 8601, UTC
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.verdict == READY

    @property
    def exit_status(self) -> int:
        return EXIT.get(self.verdict, EXIT_UNKNOWN)

    @property
    def key(self) -> str:
        """Results are kept per (kernel package version, driver version)."""
        return f"{self.manager}:{self.package}={self.package_version}@{self.driver_version}"

    def message(self) -> str:
        name = self.kernel or self.package
        if self.verdict == READY:
            return f"ready: {name} builds with NVIDIA {self.driver_version}"
        if self.verdict == WILL_BREAK:
            return f"will break: {self.cause}"
        return f"could not tell: {self.cause}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["message"] = self.message()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreflightResult":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        if values.get("verdict") not in VERDICTS:
            values["verdict"] = UNKNOWN
        values.setdefault("kernel", "")
        values.setdefault("driver_version", "")
        return cls(**values)


def worst(results: list[PreflightResult]) -> int:
    """The exit status of several results: any break, else any unknown, else 0."""
    statuses = {r.exit_status for r in results}
    for s in (EXIT[WILL_BREAK], EXIT_UNKNOWN):
        if s in statuses:
            return s
    return 0


@dataclasses.dataclass(frozen=True)
class PreflightFinished:
    """The core's event for the bus signal of that name: ``request_id`` 0 is
    the daemon's own background preflight, one result per signal."""
    request_id: int
    results: tuple[dict[str, Any], ...]
