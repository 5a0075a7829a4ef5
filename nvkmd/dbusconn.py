"""The one way to reach a D-Bus, shared by the daemon's adapter and the clients.

The clients (of nvkmd's API and of the desktop's notification server) use
only ``Connection``: a call returns the reply's body or raises ``CallError``
(an error reply, with its D-Bus name), ``CallTimeout`` or ``ConnectionLost``,
so what those mean to a person is decided by the client, and dbus-fast stays
behind this module and ``nvkmd.bus``.

``open_bus`` connects to "system", "session" or an address and patches
dbus-fast's writer: dbus-fast (5.2.0 and earlier) writes to its
non-blocking socket with ``sock.send`` and treats ``BlockingIOError``
(EAGAIN: the kernel's socket buffer is full) as a lost connection.  A burst
of replies (thousands of status calls, or one big status to a slow bus)
would then disconnect the daemon, and losing the bus is fatal to it.  With
``send`` answering EAGAIN as "0 bytes sent", the writer's own logic waits
for the socket to become writable and carries on.  (The same bug:
python-dbus-next issue #153.)

The writer is also where strings are made safe for dbus-fast 1.84 (Debian
12's python3-dbus-fast): its marshaller writes a string's length in
characters instead of bytes, so any non-ASCII string (a kernel name a user
sent, a compiler's quotes in a log line) makes the whole message malformed,
and the bus drops the connection that sent it: one call from a local user
would take the daemon off the bus.  Where the marshaller miscounts,
non-ASCII characters leave as ``\\xe9``-style escapes instead.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Awaitable, Callable

from dbus_fast import (
    BusType,
    Message,
    MessageFlag,
    MessageType,
    NameFlag,
    RequestNameReply,
    Variant,
)
from dbus_fast.aio import MessageBus

from nvkmd import api
# The errors of a call and unwrap are shared with the one-call connection of
# short-lived commands (nvkmctl status), which must not import this module.
from nvkmd.dbusconn_oneshot import CallError, CallTimeout, ConnectionLost, unwrap  # noqa: F401
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


def _marshals_characters() -> bool:
    """True if this dbus-fast writes "é" with the length 1 (its characters)."""
    msg = Message(path="/", interface="a.b", member="c", signature="s", body=["\u00e9"])
    return b"\x01\x00\x00\x00\xc3\xa9\x00" in bytes(msg._marshall(False))


MARSHALS_CHARACTERS = _marshals_characters()


def ascii_only(value: Any) -> Any:
    """``value`` with every non-ASCII character of every string escaped."""
    if isinstance(value, str):
        return value if value.isascii() else value.encode("ascii", "backslashreplace").decode()
    if isinstance(value, Variant):
        return Variant(value.signature, ascii_only(value.value))
    if isinstance(value, list):
        return [ascii_only(v) for v in value]
    if isinstance(value, tuple):
        return tuple(ascii_only(v) for v in value)
    if isinstance(value, dict):
        return {ascii_only(k): ascii_only(v) for k, v in value.items()}
    return value


# Bodies already made safe (``marshallable``), by identity; the few newest
# are kept (dbus-fast's marshaller takes only a plain list, so no marker type).
_SAFE: dict[int, list] = {}
_SAFE_KEEP = 8


def marshallable(body: list) -> list:
    """``body`` made safe once, for a reply sent many times (GetStatus's,
    kept per state version): the writer then sends it without walking it
    again, a walk that costs more than the rest of the call."""
    safe = ascii_only(body) if MARSHALS_CHARACTERS else list(body)
    _SAFE[id(safe)] = safe
    while len(_SAFE) > _SAFE_KEEP:
        del _SAFE[next(iter(_SAFE))]
    return safe


def _marshallable(msg: Message) -> Message:
    """``msg`` as this dbus-fast can send it: itself, unless its marshaller
    miscounts non-ASCII strings and the body has some (not a kept one)."""
    if not MARSHALS_CHARACTERS or _SAFE.get(id(msg.body)) is msg.body:
        return msg
    body = ascii_only(msg.body)
    if body == msg.body:
        return msg
    return Message(destination=msg.destination, path=msg.path, interface=msg.interface,
                   member=msg.member, message_type=msg.message_type, flags=msg.flags,
                   error_name=msg.error_name, reply_serial=msg.reply_serial, sender=msg.sender,
                   unix_fds=msg.unix_fds, signature=msg.signature, body=body, serial=msg.serial)


def patch_writer(bus: Any) -> None:
    """Make a connected dbus-fast ``MessageBus`` survive a full socket
    buffer, and never send a string its marshaller would get wrong."""
    writer = getattr(bus, "_writer", None)
    sock = getattr(writer, "sock", None)
    if sock is not None and not isinstance(sock, _PatientSocket):
        writer.sock = _PatientSocket(sock)
    if MARSHALS_CHARACTERS and writer is not None and "buffer_message" not in vars(writer):
        original = writer.buffer_message

        def buffer_message(msg: Message, future: Any = None) -> None:
            original(_marshallable(msg), future)
        writer.buffer_message = buffer_message


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


async def connect(bus: str) -> "Connection":
    return Connection(await open_bus(bus))


def variant(signature: str, value: Any) -> Any:
    """A value of an ``a{sv}`` dict (e.g. a notification's hints)."""
    return Variant(signature, value)


async def name_owner(ask: Callable[[str, str, list], Awaitable[list]], name: str) -> str:
    """The unique name that owns ``name``, "" when nobody does.  ``ask`` is
    the caller's own call of org.freedesktop.DBus (member, signature, body),
    which maps a missing owner to UNREACHABLE."""
    try:
        (owner,) = await ask("GetNameOwner", "s", [name])
    except NvkmdError as e:
        if e.code is ErrorCode.UNREACHABLE:
            return ""
        raise
    return owner


class Connection:
    """One bus connection: method calls, signals, names.  A signal handler
    gets every signal the match rules (``AddMatch`` on ``DBUS``) let
    through, as a message with ``.path .interface .member .signature .body``."""

    def __init__(self, raw: MessageBus):
        # dbus-fast's own object, for tests that speak the protocol by hand.
        self.raw = raw
        self._handlers: list[Callable[[Any], None]] = []
        raw.add_message_handler(self._dispatch)

    def _dispatch(self, msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL:
            for h in list(self._handlers):
                h(msg)
        return None

    async def call(self, dest: str, path: str, iface: str, member: str, signature: str = "",
                   body: list | None = None, *, timeout: float,
                   interactive: bool = False) -> list:
        """The reply's body; ``interactive`` lets polkit ask the user for a
        password (through an agent) instead of refusing at once."""
        flags = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if interactive else MessageFlag.NONE
        msg = Message(destination=dest, path=path, interface=iface, member=member,
                      signature=signature, body=body or [], flags=flags)
        try:
            async with asyncio.timeout(timeout):
                reply = await self.raw.call(msg)
        except TimeoutError:
            raise CallTimeout(f"no answer within {timeout:.0f}s") from None
        except Exception as e:
            raise ConnectionLost(str(e)) from None
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise CallError(reply.error_name or "", text)
        return reply.body

    def on_signal(self, handler: Callable[[Any], None]) -> None:
        self._handlers.append(handler)

    async def request_name(self, name: str) -> bool:
        """Take ``name`` without queueing: False if another connection has it."""
        try:
            reply = await self.raw.request_name(name, NameFlag.DO_NOT_QUEUE)
        except Exception as e:
            raise ConnectionLost(str(e)) from None
        return reply in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER)

    def disconnect(self) -> None:
        self.raw.disconnect()

    async def wait_for_disconnect(self) -> None:
        """Returns once the connection is gone, however it went."""
        try:
            await self.raw.wait_for_disconnect()
        except Exception:
            pass
