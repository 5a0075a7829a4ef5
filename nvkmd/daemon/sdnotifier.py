"""systemd's notify protocol: READY, STATUS, WATCHDOG, STOPPING.

``status_line`` is pure: it renders the daemon's state as the one ASCII
line ``systemctl status`` shows.  ``Notifier`` sends datagrams through
sdnotify when systemd gave us a ``NOTIFY_SOCKET`` and does nothing
otherwise.
"""

from __future__ import annotations

import asyncio
import os

import sdnotify
import structlog

log = structlog.get_logger()


def _ascii(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)


def status_line(state: str, *, ready: int = 0, total: int = 0, failed: int = 0, queued: int = 0,
                kernel: str = "", phase: str = "", percent: int = 0, waiting_for: str = "") -> str:
    """E.g. ``idle: 3 kernels ready`` or ``building 6.1.0-47-amd64: compile 45%``."""
    if state == "building" and kernel:
        line = f"building {kernel}: {phase or 'prepare'} {percent}%"
        if queued:
            line += f" ({queued} more queued)"
    elif state == "waiting-for-lock":
        line = f"waiting for {waiting_for or 'a package manager'}"
        if queued:
            line += f" ({queued} queued)"
    elif state in ("starting", "stopping"):
        line = state
    else:
        line = f"idle: {ready} kernel{'s' if ready != 1 else ''} ready"
        if total > ready:
            line += f" of {total}"
        if failed:
            line += f", {failed} failed"
    return _ascii(line)[:200]


def watchdog_interval(env: dict[str, str] | os._Environ = os.environ, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of WATCHDOG_USEC, as
    sd_watchdog_enabled(3) advises; None when the watchdog is off or meant
    for another process."""
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    if usec <= 0:
        return None
    wpid = env.get("WATCHDOG_PID", "")
    if wpid and wpid != str(pid if pid is not None else os.getpid()):
        return None
    return usec / 2 / 1e6


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._sd = sdnotify.SystemdNotifier() if self.enabled else None
        self._last_status = ""

    def _send(self, message: str) -> None:
        if self._sd is not None:
            self._sd.notify(message)

    def ready(self, status: str) -> None:
        self._last_status = status
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self._send(f"STATUS={status}")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    async def watchdog_loop(self, interval: float) -> None:
        """Ping from the event loop itself: if the loop hangs, pings stop
        and systemd restarts us, which is the point."""
        log.info("watchdog enabled", interval_s=round(interval, 3))
        while True:
            self.watchdog()
            await asyncio.sleep(interval)
