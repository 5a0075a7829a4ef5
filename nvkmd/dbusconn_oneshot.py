"""One D-Bus method call from a short-lived process, without asyncio.

``nvkmctl status`` is a process that starts, asks once and exits, so its cost
is Python's start plus its imports.  ``import dbus_fast`` alone costs more
than the rest together: the package's ``__init__`` imports its asyncio and
GLib buses (asyncio, ssl, concurrent.futures, logging, gi), though one call
needs only dbus-fast's message, marshaller, unmarshaller and authenticator.
So ``call`` loads just those (``_lean_dbus_fast``), connects a blocking unix
socket, and sends the authentication (dbus-fast's EXTERNAL authenticator),
Hello and the call in one write: the bus takes them in order, so the call
costs one round trip.  Messages are dbus-fast's own
``Message`` and ``Unmarshaller`` (this module frames nothing itself).

It carries what the clients need of a connection (``nvkmd.dbusconn`` takes
its ``CallError``, ``CallTimeout``, ``ConnectionLost`` and ``unwrap`` from
here); what it cannot do (a tcp: address, a non-ASCII string for dbus-fast
1.84's miscounting marshaller) raises ``Unsupported`` and the caller goes
through ``nvkmd.dbusconn`` instead.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from nvkmd import api
from nvkmd.errors import ErrorCode, NvkmdError


class CallError(Exception):
    """The peer (or the bus) answered with a D-Bus error."""

    def __init__(self, name: str, text: str):
        super().__init__(f"{name}: {text}")
        self.name, self.text = name, text


class CallTimeout(Exception):
    """No answer within the call's timeout."""


class ConnectionLost(Exception):
    """The connection failed under a call; the message says how."""


class Unsupported(Exception):
    """Not for this module (see the module's docstring): use nvkmd.dbusconn."""


def unwrap(value: Any) -> Any:
    """D-Bus values as plain Python: Variants opened, structs as lists."""
    from dbus_fast.signature import Variant

    def plain(v: Any) -> Any:
        if isinstance(v, Variant):
            return plain(v.value)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(value)


_LEAN = ("dbus_fast.message", "dbus_fast.signature", "dbus_fast.constants", "dbus_fast.auth",
         "dbus_fast._private.unmarshaller", "dbus_fast._private.address")


def _lean_dbus_fast() -> None:
    """Import dbus-fast's modules for one call without running its package
    ``__init__`` (which imports every bus it has): a bare stand-in for the
    package is in sys.modules only while they load.  A later ``import
    dbus_fast`` runs the real ``__init__``, which finds these modules loaded."""
    if "dbus_fast" in sys.modules:
        for name in _LEAN:
            __import__(name)
        return
    import importlib.machinery
    import types
    spec = importlib.machinery.PathFinder.find_spec("dbus_fast")
    if spec is None or not spec.submodule_search_locations:
        raise Unsupported("dbus_fast is not installed")
    stand_in = types.ModuleType("dbus_fast")
    stand_in.__spec__, stand_in.__path__ = spec, list(spec.submodule_search_locations)
    sys.modules["dbus_fast"] = stand_in
    try:
        for name in _LEAN:
            __import__(name)
    except Exception as e:
        for name in [m for m in sys.modules if m.startswith("dbus_fast.")]:
            del sys.modules[name]
        raise Unsupported(f"dbus_fast's modules do not load alone: {e}") from None
    finally:
        del sys.modules["dbus_fast"]


def _unix_targets(bus: str) -> list[str | bytes]:
    """The socket addresses of ``bus`` ("system", "session" or an address)."""
    from dbus_fast._private.address import get_bus_address, parse_address
    from dbus_fast.constants import BusType
    try:
        kind, address = api.parse_bus(bus)
    except ValueError as e:
        raise NvkmdError(ErrorCode.INVALID_ARGUMENT, str(e)) from None
    try:
        if kind != "address":
            address = get_bus_address(BusType.SYSTEM if kind == "system" else BusType.SESSION)
        entries = parse_address(address)
    except Exception as e:
        raise NvkmdError(ErrorCode.UNREACHABLE,
                         f"cannot connect to {api.describe_bus(bus)}: {e}") from None
    targets: list[str | bytes] = []
    for transport, options in entries:
        if transport != "unix" or not ({"path", "abstract"} & set(options)):
            raise Unsupported(f"not a unix socket path: {transport}")
        targets.append(options["path"] if "path" in options else b"\0" + options["abstract"].encode())
    return targets


def _connect(bus: str, timeout: float) -> socket.socket:
    error: Exception | None = None
    for target in _unix_targets(bus):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(target)
            return sock
        except OSError as e:
            sock.close()
            error = e
    raise NvkmdError(ErrorCode.UNREACHABLE, f"cannot connect to {api.describe_bus(bus)}: {error}")


def call(bus: str, dest: str, path: str, iface: str, member: str, signature: str = "",
         body: list | None = None, *, timeout: float) -> list:
    """The reply's body, as ``nvkmd.dbusconn.Connection.call`` gives it."""
    body = body or []
    if any(isinstance(a, str) and not a.isascii() for a in body) or \
            any(not isinstance(a, (str, int, float)) for a in body):
        raise Unsupported("only plain ASCII-safe arguments")
    _lean_dbus_fast()
    from dbus_fast._private.unmarshaller import Unmarshaller
    from dbus_fast.auth import AuthExternal
    from dbus_fast.constants import MessageType
    from dbus_fast.errors import AuthError
    from dbus_fast.message import Message
    hello = Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus", member="Hello", serial=1)
    ask = Message(destination=dest, path=path, interface=iface, member=member,
                  signature=signature, body=body, serial=2)
    sock = _connect(bus, timeout)
    try:
        reader = sock.makefile("rb")
        auth = AuthExternal()
        # All in one write, as sd-bus does: the bus reads the lines in order
        # and a refusal of AUTH still comes back (and is raised) before any reply.
        sock.sendall(b"\0" + auth._authentication_start().encode() + b"\r\nBEGIN\r\n"
                     + bytes(hello._marshall(False)) + bytes(ask._marshall(False)))
        answer = auth._receive_line(reader.readline().decode().rstrip("\r\n"))
        if answer != "BEGIN":
            raise AuthError(f"unexpected step {answer!r}")
        while True:
            reply = Unmarshaller(reader).unmarshall()
            if reply is None:
                raise ConnectionLost("the bus sent an incomplete message")
            if reply.message_type not in (MessageType.METHOD_RETURN, MessageType.ERROR) \
                    or reply.reply_serial not in (1, 2):
                continue        # NameAcquired and the like
            if reply.message_type == MessageType.ERROR:
                text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
                raise CallError(reply.error_name or "", text)
            if reply.reply_serial == 2:
                return reply.body
    except TimeoutError:        # the socket's timeout
        raise CallTimeout(f"no answer within {timeout:.0f}s") from None
    except (OSError, EOFError, AuthError) as e:
        raise ConnectionLost(str(e) or type(e).__name__) from None
    finally:
        sock.close()
