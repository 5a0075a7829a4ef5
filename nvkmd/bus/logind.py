"""A logind "delay" inhibitor on shutdown while nvkmd swaps modules in.

From the moment the old modules leave ``updates/nvkmd`` until depmod has
finished (and while an initramfs is being rewritten), a power-off would
leave the kernel without a consistent module set.  The engine calls
``on_critical(True)`` and ``on_critical(False)`` around that window, from
its install thread; ``ShutdownInhibitor`` is such a hook.  Entering takes
``Inhibit("shutdown", ..., "delay")`` from org.freedesktop.login1 (logind
then holds a shutdown back for up to its InhibitDelayMaxSec, 5 s by
default, which covers a swap and a depmod); leaving closes the descriptor,
which is what releases the lock.

While a build for the kernel that boots next is running, a second delay
lock names it ("building the NVIDIA module for K, which boots next"), so
`systemctl reboot` waits for it within logind's bounds and `systemd-inhibit
--list` says why.  It follows the core's NextBootChanged events.

Without logind (containers, systems without systemd) installs go ahead
unprotected, and that is said once in the log.  A failed Inhibit call
never fails an install.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading

import structlog
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from nvkmd import api
from nvkmd.model import NextBootChanged

log = structlog.get_logger("nvkmd.logind")

LOGIND = ("org.freedesktop.login1", "/org/freedesktop/login1", "org.freedesktop.login1.Manager")
WHO = "nvkmd"
WHY = "installing NVIDIA kernel modules"
# How long the install thread waits for logind's answer before going on
# without the lock: an install must not hang on a stuck bus.
TAKE_TIMEOUT_S = 5.0


class ShutdownInhibitor:
    def __init__(self, bus: str, loop: asyncio.AbstractEventLoop):
        self.bus = bus
        self.loop = loop
        self.conn: MessageBus | None = None
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._warned = False
        self._loop_thread = 0
        self._build_for = ""          # the next boot's kernel while it builds
        self._build_fd: int | None = None
        self._build_task: asyncio.Task | None = None

    async def start(self) -> bool:
        """Connect and look for logind; False (logged once) when there is none."""
        self._loop_thread = threading.get_ident()
        kind, address = api.parse_bus(self.bus)
        try:
            if kind == "address":
                self.conn = await MessageBus(bus_address=address, negotiate_unix_fd=True).connect()
            else:
                self.conn = await MessageBus(bus_type=BusType.SYSTEM if kind == "system"
                                             else BusType.SESSION, negotiate_unix_fd=True).connect()
            if await self._present():
                log.info("logind found: module installs delay shutdown", bus=self.bus)
                return True
            why = "org.freedesktop.login1 is not on the bus"
        except Exception as e:   # any bus trouble means: no inhibitor
            why = str(e) or type(e).__name__
        log.info("no logind: module installs will not delay shutdown", reason=why)
        self._drop_conn()
        return False

    async def _present(self) -> bool:
        assert self.conn is not None
        for member in ("NameHasOwner", "ListActivatableNames"):
            reply = await self.conn.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus", member=member,
                signature="s" if member == "NameHasOwner" else "",
                body=[LOGIND[0]] if member == "NameHasOwner" else []))
            if reply.message_type is MessageType.ERROR:
                continue
            if member == "NameHasOwner" and reply.body[0]:
                return True
            if member == "ListActivatableNames" and LOGIND[0] in reply.body[0]:
                return True
        return False

    async def _take(self, why: str = WHY) -> int:
        assert self.conn is not None
        reply = await self.conn.call(Message(
            destination=LOGIND[0], path=LOGIND[1], interface=LOGIND[2], member="Inhibit",
            signature="ssss", body=["shutdown", WHO, why, "delay"]))
        if reply.message_type is MessageType.ERROR:
            raise RuntimeError(f"{reply.error_name}: {reply.body[0] if reply.body else ''}")
        # The body carries an index into the message's descriptors.
        return reply.unix_fds[reply.body[0]]

    def __call__(self, entering: bool) -> None:
        """The engine's on_critical hook; runs in the install thread."""
        with self._lock:
            if entering:
                self._release()
                if self.conn is None:
                    return
                if threading.get_ident() == self._loop_thread:
                    # Waiting here would block the loop that has to answer.
                    log.warning("shutdown inhibitor requested from the event loop; skipped")
                    return
                fut = asyncio.run_coroutine_threadsafe(self._take(), self.loop)
                try:
                    self._fd = fut.result(TAKE_TIMEOUT_S)
                    log.debug("shutdown inhibitor taken", fd=self._fd)
                except Exception as e:
                    fut.cancel()
                    # An answer that comes after all must not leak its descriptor.
                    fut.add_done_callback(_close_late)
                    if not self._warned:
                        self._warned = True
                        log.warning("could not take a shutdown inhibitor; installing anyway",
                                    reason=str(e) or type(e).__name__)
            else:
                self._release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)        # closing it is what releases the lock
            self._fd = None
            log.debug("shutdown inhibitor released")

    def _drop_conn(self) -> None:
        if self.conn is not None:
            self.conn.disconnect()
            self.conn = None

    # -- while the next boot's kernel builds ----------------------------------------
    def on_event(self, event: object) -> None:
        """The core's subscriber (on the event loop)."""
        if not isinstance(event, NextBootChanged):
            return
        nb = event.next_boot
        want = nb.kernel if nb.reason == "building" and not nb.guess else ""
        if want == self._build_for:
            return
        self._build_for = want
        prev = self._build_task
        self._build_task = self.loop.create_task(self._build_lock(want, prev))

    async def _build_lock(self, kernel: str, prev: asyncio.Task | None) -> None:
        if prev is not None:
            await asyncio.gather(prev, return_exceptions=True)
        if self._build_fd is not None:
            os.close(self._build_fd)
            self._build_fd = None
            log.debug("build inhibitor released")
        if not kernel or kernel != self._build_for or self.conn is None:
            return
        try:
            async with asyncio.timeout(TAKE_TIMEOUT_S):
                self._build_fd = await self._take(
                    f"building the NVIDIA module for {kernel}, which boots next")
            log.info("shutdown delayed while the next boot's module builds", kernel=kernel)
        except Exception as e:
            log.warning("could not take a shutdown inhibitor for the build",
                        reason=str(e) or type(e).__name__)

    def close(self) -> None:
        with self._lock:
            self._release()
            if self._build_fd is not None:
                os.close(self._build_fd)
                self._build_fd = None
            self._drop_conn()


def _close_late(fut: concurrent.futures.Future[int]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        os.close(fut.result())
