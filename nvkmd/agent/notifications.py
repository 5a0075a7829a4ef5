"""nvkmd-agent's client of the desktop's notification server, on the user's session bus."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from dbus_fast import (
    BusType,
    Message,
    MessageType,
    NameFlag,
    RequestNameReply,
    Variant,
)
from dbus_fast.aio import MessageBus

from nvkmd import api
from nvkmd.dbusconn import DBUS
from nvkmd.errors import ErrorCode, NvkmdError

NOTIFICATIONS = ("org.freedesktop.Notifications", "/org/freedesktop/Notifications",
                 "org.freedesktop.Notifications")


NOTIFY_TIMEOUT_S = 10.0


# The D-Bus type of each hint the agent may send (the spec's table of hints).
_HINT_TYPES = {"urgency": "y", "resident": "b", "transient": "b", "value": "i",
               "category": "s", "desktop-entry": "s"}


async def connect_session(address: str = "") -> "Notifications":
    """The user's session bus ($DBUS_SESSION_BUS_ADDRESS unless ``address``)."""
    try:
        bus = MessageBus(bus_address=address) if address else MessageBus(bus_type=BusType.SESSION)
        conn = await bus.connect()
    except Exception as e:
        raise NvkmdError(ErrorCode.UNREACHABLE, f"cannot connect to the session bus: {e}") from None
    return Notifications(conn)


class Notifications:
    """org.freedesktop.Notifications.  While no server runs (and the bus
    cannot start one) every call raises UNREACHABLE."""

    def __init__(self, conn: MessageBus):
        self.conn = conn
        self._handlers: list[Callable[[Message], None]] = []
        conn.add_message_handler(self._dispatch)

    def close(self) -> None:
        self.conn.disconnect()

    def _dispatch(self, msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL:
            for h in list(self._handlers):
                h(msg)
        return None

    async def _call(self, dest: tuple[str, str, str], member: str, signature: str = "",
                    body: list | None = None) -> list:
        msg = Message(destination=dest[0], path=dest[1], interface=dest[2], member=member,
                      signature=signature, body=body or [])
        try:
            reply = await asyncio.wait_for(self.conn.call(msg), NOTIFY_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise NvkmdError(ErrorCode.UNREACHABLE, f"{dest[0]} did not answer {member} within "
                             f"{NOTIFY_TIMEOUT_S:.0f}s") from None
        except Exception as e:
            raise NvkmdError(ErrorCode.UNREACHABLE, f"lost the session bus: {e}") from None
        if reply.message_type == MessageType.ERROR:
            name = reply.error_name or ""
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise NvkmdError(api.error_code(name), f"{dest[0]}: {name}: {text}")
        return reply.body

    async def owner(self) -> str:
        """The running server's unique name, "" if none runs."""
        try:
            (name,) = await self._call(DBUS, "GetNameOwner", "s", [NOTIFICATIONS[0]])
        except NvkmdError as e:
            if e.code is ErrorCode.UNREACHABLE:
                return ""
            raise
        return name

    async def own(self, name: str) -> bool:
        """Take ``name`` on the session bus, not queueing: False if another
        connection has it (one agent per session)."""
        try:
            reply = await self.conn.request_name(name, NameFlag.DO_NOT_QUEUE)
        except Exception as e:
            raise NvkmdError(ErrorCode.UNREACHABLE, f"cannot own {name} on the session bus: {e}") \
                from None
        return reply in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER)

    async def activatable(self) -> bool:
        """Whether the bus starts a server on the first call (most desktops)."""
        (names,) = await self._call(DBUS, "ListActivatableNames")
        return NOTIFICATIONS[0] in names

    async def capabilities(self) -> list[str]:
        (caps,) = await self._call(NOTIFICATIONS, "GetCapabilities")
        return list(caps)

    async def notify(self, app_name: str, replaces_id: int, icon: str, summary: str, body: str,
                     actions: list[str], hints: dict[str, Any], timeout_ms: int) -> int:
        """Show (or, with ``replaces_id``, update in place) a notification; its id."""
        variants = {k: Variant(_HINT_TYPES[k], v) for k, v in hints.items()}
        (nid,) = await self._call(NOTIFICATIONS, "Notify", "susssasa{sv}i",
                                  [app_name, replaces_id, icon, summary, body, actions, variants,
                                   timeout_ms])
        return nid

    async def close_notification(self, nid: int) -> None:
        await self._call(NOTIFICATIONS, "CloseNotification", "u", [nid])

    async def watch(self, on_owner: Callable[[str, str], None],
                    on_action: Callable[[int, str], None],
                    on_closed: Callable[[int, int], None]) -> None:
        """``on_owner(old, new)`` when a server comes or goes;
        ``on_action(id, key)`` and ``on_closed(id, reason)`` for our notifications."""
        await self._call(DBUS, "AddMatch", "s", [
            "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
            f"member='NameOwnerChanged',arg0='{NOTIFICATIONS[0]}'"])
        # Servers send these to the notification's sender, some to everyone.
        await self._call(DBUS, "AddMatch", "s", [
            f"type='signal',sender='{NOTIFICATIONS[0]}',path='{NOTIFICATIONS[1]}',"
            f"interface='{NOTIFICATIONS[2]}'"])

        def handler(msg: Message) -> None:
            b = msg.body
            if msg.member == "NameOwnerChanged" and msg.interface == DBUS[2] \
                    and msg.signature == "sss" and b[0] == NOTIFICATIONS[0]:
                on_owner(b[1], b[2])
            elif msg.interface == NOTIFICATIONS[2] and msg.path == NOTIFICATIONS[1]:
                if msg.member == "ActionInvoked" and msg.signature == "us":
                    on_action(b[0], b[1])
                elif msg.member == "NotificationClosed" and msg.signature == "uu":
                    on_closed(b[0], b[1])
        self._handlers.append(handler)

    async def wait_disconnected(self) -> None:
        try:
            await self.conn.wait_for_disconnect()
        except Exception:
            pass
