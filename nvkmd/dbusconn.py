"""The one way to reach a D-Bus, shared by the daemon's adapter and the clients.

``open_bus`` connects to "system", "session" or an address and patches
dbus-fast's writer: dbus-fast (5.2.0 and earlier) writes to its
non-blocking socket with ``sock.send`` and treats ``BlockingIOError``
(EAGAIN: the kernel's socket buffer is full) as a lost connection.  A burst
of replies (thousands of status calls, or one big status to a slow bus)
would then disconnect the daemon, and losing the bus is fatal to it.  With
``send`` answering EAGAIN as "0 bytes sent", the writer's own logic waits
for the socket to become writable and carries on.  (The same bug:
python-dbus-next issue #153.)
"""

from __future__ import annotations

import socket
from typing import Any

from dbus_fast import (
    BusType,
    Variant,
)
from dbus_fast.aio import MessageBus

from nvkmd import api
from nvkmd.errors import ErrorCode, NvkmdError

DBUS = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")


class _PatientSocket:
    def __init__(self, sock: socket.socket):
        self._sock = sock

    def send(self, data: Any, *flags: int) -> int:
        try:
            return self._sock.send(data, *flags)
        except (BlockingIOError, InterruptedError):
            return 0

    def sendmsg(self, buffers: Any, *rest: Any) -> int:
        try:
            return self._sock.sendmsg(buffers, *rest)
        except (BlockingIOError, InterruptedError):
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def patch_writer(bus: Any) -> None:
    """Make a connected dbus-fast ``MessageBus`` survive a full socket buffer."""
    writer = getattr(bus, "_writer", None)
    sock = getattr(writer, "sock", None)
    if sock is not None and not isinstance(sock, _PatientSocket):
        writer.sock = _PatientSocket(sock)


def unwrap(value: Any) -> Any:
    """D-Bus values as plain Python: Variants opened, structs as lists."""
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [unwrap(v) for v in value]
    return value


async def open_bus(bus: str) -> MessageBus:
    """A connection to ``bus`` ("system", "session" or an address), for the
    client and the daemon's adapter alike."""
    try:
        kind, address = api.parse_bus(bus)
    except ValueError as e:
        raise NvkmdError(ErrorCode.INVALID_ARGUMENT, str(e)) from None
    try:
        if kind == "address":
            conn = await MessageBus(bus_address=address).connect()
        else:
            conn = await MessageBus(bus_type=BusType.SYSTEM if kind == "system"
                                    else BusType.SESSION).connect()
    except Exception as e:
        raise NvkmdError(ErrorCode.UNREACHABLE,
                         f"cannot connect to {api.describe_bus(bus)}: {e}") from None
    patch_writer(conn)
    return conn
