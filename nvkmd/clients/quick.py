"""The daemon's answers a short-lived command asks for once (``nvkmctl
status``), through ``nvkmd.dbusconn_oneshot``: no asyncio, no dbus-fast
package import, one round trip after the bus's authentication.  Where that
connection cannot go (``Unsupported``: a tcp: address, say), the caller
asks through ``nvkmd.clients.manager`` instead.  Failures mean to a person
what they mean through the manager: both take them from ``error`` here.
"""

from __future__ import annotations

from nvkmd import api
from nvkmd.dbusconn_oneshot import Unsupported  # noqa: F401  (the caller's cue to use the manager)
from nvkmd.dbusconn_oneshot import CallError, CallTimeout, ConnectionLost, call, unwrap
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.model import DaemonStatus

CALL_TIMEOUT_S = 120.0          # a privileged call may wait for a password


def error(name: str, text: str, bus: str) -> NvkmdError:
    """A D-Bus error reply as the NvkmdError a person can act on."""
    code = api.error_code(name)
    if name.startswith(api.ERROR_PREFIX):
        return NvkmdError(code, text)
    where = api.describe_bus(bus)
    if code is ErrorCode.UNREACHABLE:
        if "Spawn" in name:
            return NvkmdError(code, f"nvkmd is not running on {where}, and the bus could not "
                              "start it (is nvkmd.service installed and enabled?)")
        if name.endswith(("NoReply", "Timeout", "TimedOut")):
            return NvkmdError(code, f"nvkmd on {where} did not answer in time")
        return NvkmdError(code, f"nvkmd is not running (nothing owns {api.BUS_NAME} on {where})")
    if code is ErrorCode.ACCESS_DENIED:
        return NvkmdError(code, f"the bus refused the call: {text}")
    if code is ErrorCode.BUSY:
        return NvkmdError(code, f"the bus refused the call for now: {text}")
    return NvkmdError(code, f"{name}: {text}")


# How a call fails, on either connection (nvkmd.dbusconn takes these classes
# from the one-call module).
FAILED_CALL = (CallTimeout, ConnectionLost, CallError)


def failure(e: Exception, bus: str, timeout: float) -> NvkmdError:
    """One of FAILED_CALL as the NvkmdError a person can act on."""
    if isinstance(e, CallError):
        return error(e.name, e.text, bus)
    if isinstance(e, CallTimeout):
        return NvkmdError(ErrorCode.UNREACHABLE, f"nvkmd did not answer within {timeout:.0f}s")
    return NvkmdError(ErrorCode.UNREACHABLE, f"lost the connection to {api.describe_bus(bus)}: {e}")


def ask(bus: str, member: str, timeout: float = CALL_TIMEOUT_S) -> list:
    """The body of a Manager1 method without arguments; raises Unsupported
    where the one-call connection cannot reach ``bus``."""
    try:
        return call(bus, api.BUS_NAME, api.OBJECT_PATH, api.INTERFACE, member,
                    api.METHODS[member].in_signature, [], timeout=timeout)
    except FAILED_CALL as e:
        raise failure(e, bus, timeout) from None


def status(bus: str) -> DaemonStatus:
    """GetStatus; raises Unsupported where the one-call connection cannot go."""
    (d,) = ask(bus, "GetStatus")
    return DaemonStatus.from_dict(unwrap(d))
