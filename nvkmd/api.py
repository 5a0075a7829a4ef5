"""nvkmd's D-Bus API as plain data: names, members, signatures, errors, limits.

Both sides read it: the daemon's adapter (``nvkmd.bus``) dispatches and
introspects from these tables, and the client (``nvkmd.client``) calls with
these signatures.  ``dbus/io.github.nvkmd.Manager1.xml`` is the documented
contract; a test compares the live ``Introspect()`` with it, so this table
and that file cannot drift apart.  No D-Bus library is imported here: the
CLI's fast paths can read the names without paying for one.
"""

from __future__ import annotations

import dataclasses

from nvkmd.errors import ErrorCode
# The bounds on arguments belong to the contract too; they are defined, and
# checked, in nvkmd.limits.
from nvkmd.limits import MAX_FINISHED_JOBS, MAX_KEEP, MAX_LOG_LINES  # noqa: F401

# Reverse-DNS names.  The API is versioned by the interface's suffix: an
# incompatible change gets Manager2 beside Manager1, never an edit of it.
BUS_NAME = "io.github.nvkmd"
OBJECT_PATH = "/io/github/nvkmd"
INTERFACE = "io.github.nvkmd.Manager1"
ERROR_PREFIX = INTERFACE + ".Error."

# polkit action ids (dbus/io.github.nvkmd.policy).
ACTION_BUILD = "io.github.nvkmd.build"
ACTION_CANCEL = "io.github.nvkmd.cancel"
ACTION_CLEANUP = "io.github.nvkmd.cleanup"
ACTION_RESCAN = "io.github.nvkmd.rescan"
ACTION_PREFLIGHT = "io.github.nvkmd.preflight"
ACTION_BOOT_TRY = "io.github.nvkmd.boot-try"
ACTION_BOOT_GUARD = "io.github.nvkmd.boot-guard"


# Standard D-Bus errors a client can meet on the way, and what they mean to us.
_FOREIGN_ERRORS = {
    "org.freedesktop.DBus.Error.ServiceUnknown": ErrorCode.UNREACHABLE,
    "org.freedesktop.DBus.Error.NameHasNoOwner": ErrorCode.UNREACHABLE,
    "org.freedesktop.DBus.Error.Disconnected": ErrorCode.UNREACHABLE,
    "org.freedesktop.DBus.Error.NoServer": ErrorCode.UNREACHABLE,
    "org.freedesktop.DBus.Error.FileNotFound": ErrorCode.UNREACHABLE,
    "org.freedesktop.DBus.Error.NoReply": ErrorCode.UNREACHABLE,
    "org.freedesktop.DBus.Error.Timeout": ErrorCode.UNREACHABLE,
    "org.freedesktop.DBus.Error.TimedOut": ErrorCode.UNREACHABLE,
    "org.freedesktop.systemd1.NoSuchUnit": ErrorCode.UNREACHABLE,
    "org.freedesktop.systemd1.UnitMasked": ErrorCode.UNREACHABLE,
    "org.freedesktop.DBus.Error.AccessDenied": ErrorCode.ACCESS_DENIED,
    "org.freedesktop.DBus.Error.AuthFailed": ErrorCode.ACCESS_DENIED,
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired": ErrorCode.ACCESS_DENIED,
    "org.freedesktop.DBus.Error.InvalidArgs": ErrorCode.INVALID_ARGUMENT,
    "org.freedesktop.DBus.Error.InvalidSignature": ErrorCode.INVALID_ARGUMENT,
    "org.freedesktop.DBus.Error.LimitsExceeded": ErrorCode.BUSY,
    "org.freedesktop.DBus.Error.NoMemory": ErrorCode.BUSY,
    "org.freedesktop.DBus.Error.UnknownMethod": ErrorCode.NOT_SUPPORTED,
    "org.freedesktop.DBus.Error.UnknownInterface": ErrorCode.NOT_SUPPORTED,
    "org.freedesktop.DBus.Error.UnknownObject": ErrorCode.NOT_SUPPORTED,
    "org.freedesktop.DBus.Error.UnknownProperty": ErrorCode.NOT_SUPPORTED,
}


def error_name(code: ErrorCode) -> str:
    """The D-Bus error name for ``code``, e.g. ``io.github.nvkmd.Manager1.Error.Busy``."""
    return ERROR_PREFIX + code.value


def error_code(name: str) -> ErrorCode:
    """The ``ErrorCode`` for a D-Bus error name a client received."""
    if name.startswith(ERROR_PREFIX):
        return ErrorCode.from_name(name[len(ERROR_PREFIX):])
    if name.startswith("org.freedesktop.DBus.Error.Spawn."):
        # Activation: on the system bus the activation file says Exec=/bin/false,
        # so anything but systemd starting nvkmd.service fails this way.
        return ErrorCode.UNREACHABLE
    return _FOREIGN_ERRORS.get(name, ErrorCode.INTERNAL)


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    args: tuple[tuple[str, str], ...]        # (name, signature) in
    returns: tuple[tuple[str, str], ...]     # (name, signature) out
    action: str = ""                         # polkit action; "" = anyone may call

    @property
    def in_signature(self) -> str:
        return "".join(sig for _, sig in self.args)

    @property
    def out_signature(self) -> str:
        return "".join(sig for _, sig in self.returns)


@dataclasses.dataclass(frozen=True)
class Property:
    name: str
    signature: str
    emits: str = "true"                      # org.freedesktop.DBus.Property.EmitsChangedSignal


@dataclasses.dataclass(frozen=True)
class Signal:
    name: str
    args: tuple[tuple[str, str], ...]

    @property
    def signature(self) -> str:
        return "".join(sig for _, sig in self.args)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("GetStatus", (), (("status", "a{sv}"),)),
    Method("ListKernels", (), (("kernels", "aa{sv}"),)),
    Method("ListJobs", (("finished", "u"),), (("jobs", "aa{sv}"),)),
    Method("Build", (("kernel", "s"), ("force", "b")), (("job_ids", "at"),), ACTION_BUILD),
    Method("Cancel", (("job_id", "t"),), (), ACTION_CANCEL),
    Method("GetLog", (("job_id", "t"), ("kernel", "s"), ("lines", "u")),
           (("path", "s"), ("tail", "as"))),
    # Cleanup's dry run changes nothing and anyone may ask for it; with
    # execute=true it removes modules and needs ACTION_CLEANUP.
    Method("Cleanup", (("keep", "u"), ("execute", "b")), (("paths", "as"),), ACTION_CLEANUP),
    Method("Rescan", (), (), ACTION_RESCAN),
    # Test-build the driver for a kernel that is not installed; the results
    # arrive in PreflightFinished with the returned request id.
    Method("Preflight", (("target", "s"),), (("request_id", "t"),), ACTION_PREFLIGHT),
    Method("GetCandidates", (), (("candidates", "aa{sv}"),)),
    Method("BootTry", (("kernel", "s"),), (("message", "s"),), ACTION_BOOT_TRY),
    Method("SetBootGuard", (("mode", "s"),), (("message", "s"),), ACTION_BOOT_GUARD),
)}

PROPERTIES: dict[str, Property] = {p.name: p for p in (
    Property("Version", "s", "const"),
    Property("State", "s"),
    Property("CurrentJob", "t"),
    Property("Progress", "(su)"),
    Property("SourceVersion", "s"),
    Property("NextBoot", "a{sv}"),
)}

SIGNALS: dict[str, Signal] = {s.name: s for s in (
    Signal("JobQueued", (("job_id", "t"), ("kernel", "s"), ("source_version", "s"))),
    Signal("JobProgress", (("job_id", "t"), ("kernel", "s"), ("phase", "s"), ("percent", "u"))),
    Signal("JobFinished", (("job_id", "t"), ("kernel", "s"), ("result", "s"), ("cause", "s"),
                           ("hint", "s"), ("log", "s"))),
    Signal("PreflightFinished", (("request_id", "t"), ("results", "aa{sv}"))),
)}

# JobProgress signals and Progress property changes: at most this many a second.
PROGRESS_RATE_HZ = 4


def parse_bus(arg: str) -> tuple[str, str]:
    """``--bus`` as ("system" | "session" | "address", address).  An address
    is anything D-Bus accepts, e.g. ``unix:path=/run/x/bus``."""
    if arg in ("system", "session"):
        return arg, ""
    if ":" in arg and "=" in arg:
        return "address", arg
    raise ValueError(f"--bus must be system, session or a D-Bus address such as "
                     f"unix:path=/run/bus, not {arg!r}")


def describe_bus(arg: str) -> str:
    return f"the {arg} bus" if arg in ("system", "session") else f"the bus at {arg}"
