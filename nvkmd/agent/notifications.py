"""nvkmd-agent's client of the desktop's notification server, on the user's session bus."""

from __future__ import annotations

from typing import Any, Callable

from nvkmd import api
from nvkmd.dbusconn import (DBUS, CallError, CallTimeout, Connection, ConnectionLost, connect,
                             name_owner, variant)
from nvkmd.errors import ErrorCode, NvkmdError

NOTIFICATIONS = ("org.freedesktop.Notifications", "/org/freedesktop/Notifications",
                 "org.freedesktop.Notifications")


NOTIFY_TIMEOUT_S = 10.0


# The D-Bus type of each hint the agent may send (the spec's table of hints).
_HINT_TYPES = {"urgency": "y", "resident": "b", "transient": "b", "value": "i",
               "category": "s", "desktop-entry": "s"}


async def connect_session(address: str = "") -> "Notifications":
    """The user's session bus ($DBUS_SESSION_BUS_ADDRESS unless ``address``)."""
    return Notifications(await connect(address or "session"))


class Notifications:
    """org.freedesktop.Notifications.  While no server runs (and the bus
    cannot start one) every call raises UNREACHABLE."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def close(self) -> None:
        self.conn.disconnect()

    async def _call(self, dest: tuple[str, str, str], member: str, signature: str = "",
                    body: list | None = None) -> list:
        try:
            return await self.conn.call(*dest, member, signature, body, timeout=NOTIFY_TIMEOUT_S)
        except CallTimeout:
            raise NvkmdError(ErrorCode.UNREACHABLE, f"{dest[0]} did not answer {member} within "
                             f"{NOTIFY_TIMEOUT_S:.0f}s") from None
        except ConnectionLost as e:
            raise NvkmdError(ErrorCode.UNREACHABLE, f"lost the session bus: {e}") from None
        except CallError as e:
            raise NvkmdError(api.error_code(e.name), f"{dest[0]}: {e.name}: {e.text}") from None

    async def owner(self) -> str:
        """The running server's unique name, "" if none runs."""
        return await name_owner(lambda *call: self._call(DBUS, *call), NOTIFICATIONS[0])

    async def own(self, name: str) -> bool:
        """Take ``name`` on the session bus, not queueing: False if another
        connection has it (one agent per session)."""
        try:
            return await self.conn.request_name(name)
        except ConnectionLost as e:
            raise NvkmdError(ErrorCode.UNREACHABLE, f"cannot own {name} on the session bus: {e}") \
                from None

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
        variants = {k: variant(_HINT_TYPES[k], v) for k, v in hints.items()}
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

        def handler(msg: Any) -> None:
            b = msg.body
            if msg.member == "NameOwnerChanged" and msg.interface == DBUS[2] \
                    and msg.signature == "sss" and b[0] == NOTIFICATIONS[0]:
                on_owner(b[1], b[2])
            elif msg.interface == NOTIFICATIONS[2] and msg.path == NOTIFICATIONS[1]:
                if msg.member == "ActionInvoked" and msg.signature == "us":
                    on_action(b[0], b[1])
                elif msg.member == "NotificationClosed" and msg.signature == "uu":
                    on_closed(b[0], b[1])
        self.conn.on_signal(handler)

    async def wait_disconnected(self) -> None:
        await self.conn.wait_for_disconnect()
