"""The one error type of nvkmd.

Every failure the core reports is an ``NvkmdError`` carrying an ``ErrorCode``.
The D-Bus adapter maps codes to error names (``<iface>.Error.<Name>``), the
client maps the names back, and the command-line front ends map codes to exit
statuses.  Nothing else invents error names.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    # value = the D-Bus error name suffix (after "<interface>.Error.")
    INVALID_ARGUMENT = "InvalidArgument"
    NO_SUCH_KERNEL = "NoSuchKernel"
    NO_SUCH_JOB = "NoSuchJob"
    ACCESS_DENIED = "AccessDenied"
    BUSY = "Busy"
    CONFIG = "ConfigInvalid"
    SOURCE = "SourceInvalid"
    SOURCE_UNSAFE = "SourceUnsafe"
    HEADERS_MISSING = "HeadersMissing"
    BUILD_FAILED = "BuildFailed"
    TIMEOUT = "Timeout"
    DISK_FULL = "DiskFull"
    NOT_SUPPORTED = "NotSupported"
    UNREACHABLE = "Unreachable"
    INTERNAL = "Internal"

    @classmethod
    def from_name(cls, name: str) -> "ErrorCode":
        for code in cls:
            if code.value == name:
                return code
        return cls.INTERNAL


# The exit statuses of nvkmd, nvkmctl (wait-ready included) and nvkmd-agent,
# as `nvkmctl --help` and README document them.
EXIT_OK = 0
EXIT_FAILED = 1          # the operation failed (a build, or a kernel that cannot get a module)
EXIT_USAGE = 2           # argparse's own status for a usage error
EXIT_UNREACHABLE = 3
EXIT_DENIED = 4
EXIT_TIMEOUT = 5         # wait-ready: the build did not finish in time
# sysexits.h EX_CONFIG: systemd's RestartPreventExitStatus=78 relies on it.
EXIT_CONFIG = 78
EXIT_INTERRUPTED = 130   # the shell's 128 + SIGINT


def exit_status(code: ErrorCode) -> int:
    """The exit status a command-line front end reports for ``code``."""
    if code is ErrorCode.UNREACHABLE:
        return EXIT_UNREACHABLE
    if code is ErrorCode.ACCESS_DENIED:
        return EXIT_DENIED
    if code is ErrorCode.INVALID_ARGUMENT:
        return EXIT_USAGE
    return EXIT_FAILED


class NvkmdError(Exception):
    """A failure with a code and a one-line message meant for a person."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


def invalid(message: str) -> NvkmdError:
    return NvkmdError(ErrorCode.INVALID_ARGUMENT, message)


def source_invalid(message: str) -> NvkmdError:
    return NvkmdError(ErrorCode.SOURCE, message)
