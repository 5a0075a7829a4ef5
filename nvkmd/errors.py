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


# sysexits.h EX_CONFIG: systemd's RestartPreventExitStatus=78 relies on it.
EXIT_CONFIG = 78


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
