"""GetStatus's reply body, kept per state version.

GetStatus is what every client polls, and a desktop may have several
polling at once: with the body kept until something changes, a flood of
calls while nothing happens costs a lookup each, not a walk over every
kernel and job.  The service calls ``changed()`` for every core event and
after every privileged method (``answered``), the two ways the status changes.  A few
fields change without an event (the driver's versions read after a
rescan, preflight bookkeeping): ``max_age_s`` bounds how old they can be.

The body is also kept marshalled (``wire``): the service sends those very
bytes behind a header of the call's own (replywire.py), so a call costs
no walk of the body at all.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from dbus_fast import Message, MessageFlag, MessageType

from nvkmd import api
from nvkmd.bus.replywire import CachedReply, body_bytes
from nvkmd.dbusconn import marshallable

GET_STATUS = api.METHODS["GetStatus"]
SIGNATURE = GET_STATUS.out_signature
_SIG = SIGNATURE.encode()


class StatusCache:
    def __init__(self, compute: Callable[[], list], max_age_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.compute = compute
        self.max_age_s = max_age_s
        self.clock = clock
        self.version = 0
        self.computed = 0                # how often ``compute`` ran (tests, bench)
        self.marshalled = 0              # how often the kept body was marshalled
        self._kept: tuple[int, float, list] | None = None
        self._wire: tuple[list, bytes] | None = None

    def changed(self) -> None:
        self.version += 1

    def answered(self, action: str) -> None:
        """A method was answered; ``action``, its polkit action, is "" for
        the methods that change nothing."""
        if action:
            self.changed()

    def get(self) -> list:
        now = self.clock()
        kept = self._kept
        if kept is not None and kept[0] == self.version and now - kept[1] < self.max_age_s:
            return kept[2]
        version = self.version          # a change while computing makes the next call compute
        # May raise (the daemon is starting): nothing is kept.  Made safe for
        # the writer once here, not on every reply (dbusconn.marshallable).
        body = marshallable(self.compute())
        self.computed += 1
        self._kept = (version, now, body)
        return body

    def wire(self) -> bytes:
        """The current body (``get``) as D-Bus bytes, marshalled once per body."""
        body = self.get()
        kept = self._wire
        if kept is not None and kept[0] is body:
            return kept[1]
        data = body_bytes(SIGNATURE, body)
        self.marshalled += 1
        self._wire = (body, data)
        return data

    def answer(self, call: Message, send: Callable[[Any], Any],
               failed: Callable[[Message, api.Method, list, Exception], None]) -> bool:
        """Answer ``call`` if it is a plain GetStatus, with the kept bytes:
        no argument to check, no polkit, no log line, no marshalling; False
        leaves any other call (or a call with no sender to reply to) to the
        service's general path."""
        if (call.path != api.OBJECT_PATH or call.signature or not call.sender
                or call.interface not in (api.INTERFACE, None)):
            return False
        if call.flags & MessageFlag.NO_REPLY_EXPECTED:
            return True
        try:
            data = self.wire()
        except Exception as e:           # the daemon is starting, or a bug: the general answer
            failed(call, GET_STATUS, [], e)
            return True
        send(CachedReply(call, _SIG, data))
        return True


def front(service: Any) -> Callable[[Message], bool | None]:
    """The bus's message handler: ``service.handle`` (a ManagerService),
    with GetStatus answered first, from its cache's bytes."""
    cache, handle, send, failed = service.status_cache, service.handle, service._send, service._failed

    def handler(msg: Message) -> bool | None:
        if (msg.member == "GetStatus" and msg.message_type is MessageType.METHOD_CALL
                and not service._closed and cache.answer(msg, send, failed)):
            return True
        return handle(msg)
    return handler
