"""A workaround for dbus-fast's writer, shared by the daemon and the client.

dbus-fast (5.2.0 and earlier) writes to its non-blocking socket with
``sock.send`` and treats ``BlockingIOError`` (EAGAIN: the kernel's socket
buffer is full) as a lost connection.  A burst of replies — thousands of
status calls, or one big status to a slow bus — would then disconnect the
daemon, and losing the bus is fatal to it.  With ``send`` answering EAGAIN
as "0 bytes sent", the writer's own logic waits for the socket to become
writable and carries on.  (The same bug: python-dbus-next issue #153.)

This module imports nothing from dbus-fast; it wraps the socket object the
connection already has.
"""

from __future__ import annotations

import socket
from typing import Any


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
