"""The real systemd-logind on a private test bus.

logind runs without systemd as PID 1 well enough to manage inhibitors: it
takes DBUS_SYSTEM_BUS_ADDRESS for the system bus.  It keeps its state in
/run/systemd, so it runs in its own mount namespace with a private tmpfs
there: the host's /run/systemd is untouched.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import wait_for

LOGIND = [Path("/lib/systemd/systemd-logind"), Path("/usr/lib/systemd/systemd-logind")]
LOGIND_BUSCONFIG = Path("/usr/share/dbus-1/system.d/org.freedesktop.login1.conf")


def bus_call(address: str, dest: str, path: str, iface: str, member: str,
             signature: str = "", body: list | None = None) -> list:
    from dbus_fast import Message, MessageType
    from dbus_fast.aio import MessageBus

    async def go():
        conn = await MessageBus(bus_address=address).connect()
        try:
            reply = await conn.call(Message(destination=dest, path=path, interface=iface,
                                            member=member, signature=signature, body=body or []))
        finally:
            conn.disconnect()
        if reply.message_type is MessageType.ERROR:
            raise RuntimeError(f"{reply.error_name}: {reply.body}")
        return reply.body
    return asyncio.run(asyncio.wait_for(go(), 30))


class Logind:
    def __init__(self, bus) -> None:
        binary = next((p for p in LOGIND if p.exists()), None)
        if binary is None:
            pytest.fail("systemd-logind is not installed (package systemd, in scripts/setup)")
        if not shutil.which("unshare"):
            pytest.fail("unshare (util-linux) is needed to give logind a private /run/systemd")
        self.bus = bus
        self.log = bus.dir / "logind.log"
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus.address, SYSTEMD_LOG_TARGET="console")
        script = f"mount -t tmpfs tmpfs /run/systemd && exec {binary}"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                          "sh", "-c", script], stdout=out, stderr=subprocess.STDOUT,
                                         env=env, stdin=subprocess.DEVNULL)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"systemd-logind exited with {self.proc.returncode}: "
                                     f"{self.log.read_text()[-500:]}")
            try:
                return bus_call(bus.address, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                "org.freedesktop.DBus", "NameHasOwner", "s",
                                ["org.freedesktop.login1"])[0]
            except (RuntimeError, OSError):
                return False
        wait_for(up, 30, "systemd-logind to own org.freedesktop.login1")

    def inhibitors(self) -> list[tuple]:
        """(what, who, why, mode, uid, pid) of every inhibitor logind holds."""
        (items,) = bus_call(self.bus.address, "org.freedesktop.login1", "/org/freedesktop/login1",
                            "org.freedesktop.login1.Manager", "ListInhibitors")
        return [tuple(i) for i in items]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def logind_bus(bus_factory):
    """A private bus with the project's and logind's busconfig, and logind on it."""
    bus = bus_factory(includes=(LOGIND_BUSCONFIG,))
    logind = Logind(bus)
    yield bus, logind
    logind.stop()
