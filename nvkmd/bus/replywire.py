"""A method return whose body was marshalled once, sent many times.

dbus-fast marshals every message it sends, and for GetStatus (30 kernels,
about 11 kB) that walk was most of the daemon's time under load (P8).  The
body's bytes do not depend on the call: a D-Bus body starts 8-aligned after
the header, so the same bytes follow any header.  Only the header is
written per call: serial, reply serial, destination, signature, a few
struct packs.  ``CachedReply`` goes through dbus-fast's own writer like
any message (its queue, its future, its wait for a writable socket), so
ordering and back-pressure stay the library's.
"""

from __future__ import annotations

import struct

from dbus_fast import Message, MessageType

_FIXED = struct.Struct("<4sIII")            # endianness, type, flags, version; body length; serial; fields' length
_RETURN = bytes((ord("l"), MessageType.METHOD_RETURN.value, 0, 1))
_U32 = struct.Struct("<I")


def body_bytes(signature: str, body: list) -> bytes:
    """``body`` as dbus-fast marshals it (so its quirks and ours, e.g. the
    escaped strings of ``dbusconn.marshallable``, stay one thing)."""
    msg = Message(message_type=MessageType.METHOD_RETURN, reply_serial=1, destination=":0.0",
                  signature=signature, body=body, serial=1)
    data = bytes(msg._marshall(False))
    (length,) = _U32.unpack_from(data, 4)
    return data[len(data) - length:]


def header(serial: int, reply_serial: int, destination: str, signature: bytes,
           body_length: int) -> bytes:
    """A METHOD_RETURN's header, padded to 8: the fields REPLY_SERIAL,
    DESTINATION, SIGNATURE in the order dbus-fast writes them."""
    dest = destination.encode()
    # Fields start at offset 16 (8-aligned); each struct (yv) starts 8-aligned.
    fields = b"\x05\x01u\x00" + _U32.pack(reply_serial) + b"\x06\x01s\x00" + _U32.pack(len(dest)) \
        + dest + b"\x00"
    fields += b"\x00" * (-len(fields) % 8)
    fields += b"\x08\x01g\x00" + bytes((len(signature),)) + signature + b"\x00"
    out = _FIXED.pack(_RETURN, body_length, serial, len(fields)) + fields
    return out + b"\x00" * (-len(out) % 8)


class CachedReply:
    """What ``MessageBus.send`` needs of a message (``serial``, which it
    fills in, ``unix_fds``, ``_marshall``), for a reply to ``call`` whose
    body is ``body`` (from ``body_bytes`` with ``signature``)."""

    __slots__ = ("serial", "reply_serial", "destination", "signature", "data", "flags",
                 "unix_fds", "body", "member", "message_type")

    def __init__(self, call: Message, signature: bytes, data: bytes):
        self.serial = 0
        self.reply_serial = call.serial
        self.destination = call.sender
        self.signature = signature
        self.data = data
        self.flags = 0
        self.unix_fds: list = []
        self.body: list = []        # nothing for the writer's string check (dbusconn) to walk
        self.member = None
        self.message_type = MessageType.METHOD_RETURN

    def _marshall(self, negotiate_unix_fd: bool = False) -> bytes:
        return header(self.serial, self.reply_serial, self.destination, self.signature,
                      len(self.data)) + self.data
