"""What a caller may ask of the daemon: the bounds on arguments and the
checks that enforce them.

The core checks every argument it is given (a Python caller can pass
anything); the D-Bus adapter checks the same values before it asks polkit,
so a bad call fails fast with the same answer.  The numbers are part of the
D-Bus contract: ``dbus/io.github.nvkmd.Manager1.xml`` states them.
"""

from __future__ import annotations

import re

from nvkmd.errors import ErrorCode, NvkmdError, invalid

# Anything above is InvalidArgument, so a caller cannot make the daemon read
# or build an answer of unbounded size.
MAX_LOG_LINES = 100_000       # GetLog(lines)
MAX_FINISHED_JOBS = 1_000     # ListJobs(finished)
MAX_KEEP = 10_000             # Cleanup(keep)
MAX_JOB_ID = 2**63 - 1        # SQLite's INTEGER PRIMARY KEY

# A kernel release is a directory name, so it is also a path component in
# everything nvkmd writes: keep it to what real releases use.
RELEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}\Z")  # \Z: "$" would accept a final newline


def check_release(release: object) -> str:
    """``release`` if it is a plausible kernel release, else InvalidArgument."""
    if not isinstance(release, str) or not RELEASE_RE.match(release) or ".." in release:
        shown = repr(release)[:80]
        raise NvkmdError(ErrorCode.INVALID_ARGUMENT, f"not a kernel release: {shown}")
    return release


def int_arg(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{name}: expected an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise invalid(f"{name}: expected {low}..{high}, got {value}")
    return value


def bool_arg(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise invalid(f"{name}: expected true or false, got {type(value).__name__}")
    return value


def kernel_arg(value: object) -> str:
    """A kernel release, or "" for "every kernel" (Build) / "any kernel"
    (GetLog); anything else can never name a path outside the modules dir."""
    return "" if value == "" else check_release(value)


# The checks per request, by the CoreAPI method's argument names.
def finished_arg(value: object) -> int:
    return int_arg("finished", value, 0, MAX_FINISHED_JOBS)


def job_id_arg(value: object, *, zero_ok: bool = False) -> int:
    """A job id; 0 is never a job, but GetLog takes it for "the newest log"."""
    job_id = int_arg("job_id", value, 0, MAX_JOB_ID)
    if job_id == 0 and not zero_ok:
        raise invalid("job_id: 0 is never a job")
    return job_id


def lines_arg(value: object) -> int:
    return int_arg("lines", value, 0, MAX_LOG_LINES)


def keep_arg(value: object) -> int:
    return int_arg("keep", value, 0, MAX_KEEP)
