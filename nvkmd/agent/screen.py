"""What the agent shows on the desktop: one notification per slot, updated
in place, kept across the notification server coming and going.

``Screen`` holds the server's ids for our notices and what waits for a
server to appear; deciding what to show is ``rules``' business.
"""

from __future__ import annotations

from typing import Any

import structlog

from nvkmd.agent import notifications
from nvkmd.agent.rules import Notice, escape_markup
from nvkmd.errors import ErrorCode, NvkmdError

log = structlog.get_logger("nvkmd.agent")

APP_NAME = "nvkmd"
SHOW_LOG = "show-log"
CLOSED_BY_USER = 2          # NotificationClosed's reason for a dismissal


class Screen:
    """The agent's notifications on the desktop: one per slot, updated in
    place.  What cannot be shown for want of a server waits in ``pending``
    (progress excepted: it is stale by then) and is shown when one appears."""

    def __init__(self, desktop: notifications.Notifications, on_shown):
        self.desktop = desktop
        self.on_shown = on_shown
        self.ids: dict[str, int] = {}          # slot -> the server's id
        self.shown: dict[str, Notice] = {}     # slot -> what it shows now
        self.by_id: dict[int, Notice] = {}     # id -> notice, for ActionInvoked
        self.pending: dict[str, Notice] = {}
        self.muted: set[str] = set()           # progress the user dismissed
        self.caps: set[str] | None = None
        self.warned = False

    def absent(self, reason: str) -> None:
        if not self.warned:
            self.warned = True
            log.warning("no notification server on the session bus; notifications will be "
                        "shown once one starts", reason=reason)

    async def show(self, n: Notice) -> bool:
        if n.progress and n.slot in self.muted:
            return False
        try:
            if self.caps is None:
                self.caps = set(await self.desktop.capabilities())
            nid = await self.desktop.notify(APP_NAME, self.ids.get(n.slot, 0), n.icon, n.summary,
                                            self._body(n), self._actions(n), self._hints(n),
                                            n.timeout_ms)
        except NvkmdError as e:
            if e.code is not ErrorCode.UNREACHABLE:
                log.warning("the notification server refused a notification", reason=e.message,
                            summary=n.summary)
                return False
            self.caps = None
            self.absent(e.message)
            if not n.progress:
                self.pending[n.slot] = n
            return False
        old = self.ids.get(n.slot)
        if old is not None and old != nid:
            self.by_id.pop(old, None)
        self.ids[n.slot] = nid
        self.shown[n.slot] = n
        self.by_id[nid] = n
        self.pending.pop(n.slot, None)
        self.on_shown(n, nid)
        return True

    def _body(self, n: Notice) -> str:
        return escape_markup(n.body) if "body-markup" in (self.caps or ()) else n.body

    def _actions(self, n: Notice) -> list[str]:
        if not n.log or "actions" not in (self.caps or ()):
            return []
        # "default" is a click on the bubble; the named one is a button
        # where the server draws buttons.  Both open the log.
        return ["default", "Show log", SHOW_LOG, "Show log"]

    @staticmethod
    def _hints(n: Notice) -> dict[str, Any]:
        hints: dict[str, Any] = {"urgency": n.urgency}
        if n.resident:
            hints["resident"] = True
        if n.percent is not None:
            hints["value"] = n.percent
        return hints

    def release(self, slot: str) -> None:
        """Leave the slot's notification on screen but stop updating it: the
        next build of that kernel opens a new one."""
        self.ids.pop(slot, None)
        self.shown.pop(slot, None)
        self.muted.discard(slot)

    async def close(self, slot: str) -> None:
        self.pending.pop(slot, None)
        self.muted.discard(slot)
        self.shown.pop(slot, None)
        nid = self.ids.pop(slot, None)
        if nid is None:
            return
        self.by_id.pop(nid, None)
        try:
            await self.desktop.close_notification(nid)
        except NvkmdError as e:
            log.debug("could not close a notification", id=nid, reason=e.message)

    def closed(self, nid: int, reason: int) -> str | None:
        """The server closed one of ours; the slot it was in, if any."""
        self.by_id.pop(nid, None)
        for slot, i in list(self.ids.items()):
            if i == nid:
                n = self.shown.get(slot)
                self.release(slot)
                if reason == CLOSED_BY_USER and n is not None and n.progress:
                    self.muted.add(slot)
                return slot
        return None

    async def server_changed(self, old: str, new: str) -> None:
        if old:
            # Its ids died with it.  Warnings that must stay up go back in line.
            for slot, n in self.shown.items():
                if n.resident:
                    self.pending.setdefault(slot, n)
            self.ids.clear()
            self.shown.clear()
            self.by_id.clear()
            self.caps = None
            if not new:
                self.warned = False
                self.absent(f"{notifications.NOTIFICATIONS[0]} went away")
        if new:
            log.info("notification server appeared", name=new, waiting=len(self.pending))
            self.warned = False
            self.caps = None
            for n in list(self.pending.values()):
                await self.show(n)

