"""The real systemd-logind on a private test bus.

logind runs without systemd as PID 1 well enough to manage inhibitors: it
takes DBUS_SYSTEM_BUS_ADDRESS for the system bus.  It keeps its state in
/run/systemd, so it runs in its own mount namespace with a private tmpfs
there: the host's /run/systemd is untouched.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.bus import PrivateBus, SystemService, call

LOGIND = [Path("/lib/systemd/systemd-logind"), Path("/usr/lib/systemd/systemd-logind")]
LOGIND_BUSCONFIG = Path("/usr/share/dbus-1/system.d/org.freedesktop.login1.conf")
LOGIN1 = ("org.freedesktop.login1", "/org/freedesktop/login1", "org.freedesktop.login1.Manager")


class Logind(SystemService):
    what = "systemd-logind"
    bus_name = LOGIN1[0]

    def __init__(self, bus: PrivateBus) -> None:
        binary = next((p for p in LOGIND if p.exists()), None)
        if binary is None:
            pytest.fail("systemd-logind is not installed (package systemd, in scripts/setup)")
        super().__init__(bus, binary, "mount -t tmpfs tmpfs /run/systemd",
                         env={"SYSTEMD_LOG_TARGET": "console"})

    def inhibitors(self) -> list[tuple]:
        """(what, who, why, mode, uid, pid) of every inhibitor logind holds."""
        (items,) = call(self.bus.address, *LOGIN1, "ListInhibitors")
        return [tuple(i) for i in items]


@pytest.fixture
def logind_bus(bus_factory):
    """A private bus with the project's and logind's busconfig, and logind on it."""
    bus = bus_factory(includes=(LOGIND_BUSCONFIG,))
    logind = Logind(bus)
    yield bus, logind
    logind.stop()
