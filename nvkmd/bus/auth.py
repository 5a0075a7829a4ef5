"""Who may call the privileged methods: polkit decides, and without polkit
only root.

The subject is the caller's unique bus name (``system-bus-name``), never a
pid: polkit looks up the process behind the name itself, so a caller cannot
race a pid.  Every way the check can go wrong ends in a refusal.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import structlog
from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from nvkmd.errors import ErrorCode, NvkmdError

log = structlog.get_logger("nvkmd.bus.auth")

POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_IFACE = "org.freedesktop.PolicyKit1.Authority"
CHECK_ALLOW_USER_INTERACTION = 0x1

# An interactive check waits for a person to type a password.
TIMEOUT_S = 25.0
INTERACTIVE_TIMEOUT_S = 300.0


class _CallFailed(Exception):
    pass


async def _call(bus: MessageBus, msg: Message, timeout: float) -> list:
    try:
        async with asyncio.timeout(timeout):
            reply = await bus.call(msg)
    except TimeoutError:
        raise _CallFailed(f"no answer within {timeout:.0f}s") from None
    except Exception as e:  # the bus connection itself failed
        raise _CallFailed(str(e) or type(e).__name__) from None
    if reply.message_type == MessageType.ERROR:
        text = reply.body[0] if reply.body else ""
        raise _CallFailed(f"{reply.error_name}: {text}")
    return reply.body


def denied(action: str, why: str) -> NvkmdError:
    return NvkmdError(ErrorCode.ACCESS_DENIED, f"not authorized to {action}: {why}")


class Authorizer:
    def __init__(self, bus: MessageBus):
        self.bus = bus
        # Unique names are never reused while the bus runs, so a name's uid
        # never changes; remember a bounded number of them.
        self._uids: OrderedDict[str, int] = OrderedDict()

    async def unix_user(self, sender: str) -> int:
        if sender in self._uids:
            return self._uids[sender]
        body = await _call(self.bus, Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="GetConnectionUnixUser",
            signature="s", body=[sender]), TIMEOUT_S)
        uid = int(body[0])
        self._uids[sender] = uid
        if len(self._uids) > 4096:
            self._uids.popitem(last=False)
        return uid

    async def check(self, msg: Message, action: str, what: str) -> int:
        """Return the caller's uid if it may do ``action``; else raise
        AccessDenied.  ``what`` names the request for the error message."""
        sender = msg.sender or ""
        try:
            uid = await self.unix_user(sender)
        except _CallFailed as e:
            log.warning("authorization refused", action=action, sender=sender,
                        reason=f"cannot tell who the caller is: {e}")
            raise denied(what, "the caller's identity is unknown") from None
        if uid == 0:
            return uid
        interactive = bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)
        try:
            authorized, challenge = await self._polkit(sender, action, interactive)
        except _CallFailed as e:
            log.warning("authorization refused", action=action, sender=sender, uid=uid,
                        reason=f"polkit unavailable: {e}")
            raise denied(what, "polkit is not available, so only root may do this") from None
        log.info("authorization", action=action, sender=sender, uid=uid,
                 authorized=authorized, challenge=challenge)
        if not authorized:
            why = ("authentication is required (polkit action " + action + ")" if challenge
                   else "polkit refused action " + action)
            raise denied(what, why)
        return uid

    async def _polkit(self, sender: str, action: str, interactive: bool) -> tuple[bool, bool]:
        subject = ["system-bus-name", {"name": Variant("s", sender)}]
        flags = CHECK_ALLOW_USER_INTERACTION if interactive else 0
        body = await _call(self.bus, Message(
            destination=POLKIT_NAME, path=POLKIT_PATH, interface=POLKIT_IFACE,
            member="CheckAuthorization", signature="(sa{sv})sa{ss}us",
            body=[subject, action, {}, flags, ""]),
            INTERACTIVE_TIMEOUT_S if interactive else TIMEOUT_S)
        authorized, challenge, _details = body[0]
        return bool(authorized), bool(challenge)
