"""The real systemd-logind on a private test bus.

logind runs without systemd as PID 1 well enough to manage inhibitors: it
takes DBUS_SYSTEM_BUS_ADDRESS for the system bus.  It keeps its state in
/run/systemd, so it runs in its own mount namespace with a private tmpfs
there: the host's /run/systemd is untouched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nvkmd.errors import NvkmdError

from harness.bus import call, has_owner
from harness.processes import stop
from harness.waiting import wait_for

LOGIND = [Path("/lib/systemd/systemd-logind"), Path("/usr/lib/systemd/systemd-logind")]
LOGIND_BUSCONFIG = Path("/usr/share/dbus-1/system.d/org.freedesktop.login1.conf")
LOGIN1 = ("org.freedesktop.login1", "/org/freedesktop/login1", "org.freedesktop.login1.Manager")


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
                return has_owner(bus.address, LOGIN1[0])
            except NvkmdError:
                return False
        wait_for(up, 30, "systemd-logind to own org.freedesktop.login1")

    def inhibitors(self) -> list[tuple]:
        """(what, who, why, mode, uid, pid) of every inhibitor logind holds."""
        (items,) = call(self.bus.address, *LOGIN1, "ListInhibitors")
        return [tuple(i) for i in items]

    def stop(self) -> None:
        stop(self.proc)


@pytest.fixture
def logind_bus(bus_factory):
    """A private bus with the project's and logind's busconfig, and logind on it."""
    bus = bus_factory(includes=(LOGIND_BUSCONFIG,))
    logind = Logind(bus)
    yield bus, logind
    logind.stop()
