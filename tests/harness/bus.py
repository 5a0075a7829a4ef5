"""A private, real ``dbus-daemon``: configured like Debian's system bus
(deny by default) plus the project's own busconfig from ``dbus/``, or as a
permissive session bus; and calls to it from synchronous code."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Awaitable, Callable

from harness.processes import stop
from harness.roots import REPO
from harness.waiting import wait_for

DBUS_DIR = REPO / "dbus"
BUSCONFIG = DBUS_DIR / "io.github.nvkmd.conf"
ACTIVATION = DBUS_DIR / "io.github.nvkmd.service"

# The default policy of Debian's /usr/share/dbus-1/system.conf: nobody owns
# a name or calls a method unless a service's busconfig allows it.
SYSTEM_POLICY = """
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
"""

# A desktop's session bus: anyone may own and call (the agent may run as
# nobody), and eavesdrop, for ``busctl monitor``.
SESSION_POLICY = """
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
"""


class PrivateBus:
    """``dbus-daemon --nofork --print-address`` on a socket in ``dir`` (a
    fresh world-searchable directory by default: clients running as nobody
    must reach it, and pytest's tmp_path is private to root).

    ``kind="system"`` includes the project's busconfig first, then
    ``includes``; ``activation`` lets the bus start nvkmd from the project's
    activation file.  A session bus has no <servicedir>: the host's dunst
    activation file must not start a server behind the test's back."""

    def __init__(self, dir: Path | None = None, *, kind: str = "system",
                 includes: tuple[Path, ...] = (), limits: dict[str, int] | None = None,
                 activation: bool = False, new_session: bool = False):
        self._own_dir = dir is None
        self.dir = dir or Path(tempfile.mkdtemp(prefix=f"nvkmd-{kind}-bus-"))
        self.dir.chmod(0o755)
        self.socket = self.dir / "bus"
        self.limits = dict(limits or {})
        servicedir = ""
        if activation:
            services = self.dir / "services"
            services.mkdir()
            shutil.copy(ACTIVATION, services / ACTIVATION.name)
            servicedir = f"  <servicedir>{services}</servicedir>\n"
        if kind == "system":
            policy, includes = SYSTEM_POLICY, (BUSCONFIG, *includes)
        else:
            policy = SESSION_POLICY
        limit_xml = "".join(f'  <limit name="{k}">{v}</limit>\n' for k, v in self.limits.items())
        self.config = self.dir / "bus.conf"
        self.config.write_text(
            '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
            ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
            f"<busconfig>\n  <type>{kind}</type>\n  <auth>EXTERNAL</auth>\n"
            f"  <listen>unix:path={self.socket}</listen>\n{servicedir}{limit_xml}{policy}"
            + "".join(f"  <include>{p}</include>\n" for p in includes) + "</busconfig>\n")
        # stderr goes to a file: dbus-daemon logs every refused call there,
        # and a pipe nobody drains would block it once full.
        self.log = self.dir / "dbus-daemon.log"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(["dbus-daemon", f"--config-file={self.config}",
                                          "--print-address", "--nofork"],
                                         stdout=subprocess.PIPE, stderr=err, text=True,
                                         start_new_session=new_session)
        self.address = self.proc.stdout.readline().strip()
        if not self.address:
            self.proc.wait(10)
            raise AssertionError(f"dbus-daemon did not start with {self.config}: "
                                 f"{self.log.read_text().strip()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        stop(self.proc)
        self.proc.stdout.close()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def run(address: str, fn: Callable[[Any], Awaitable[Any]], timeout: float = 60) -> Any:
    """``await fn(client)`` with a fresh nvkmd.clients.manager connection, from sync code."""
    from nvkmd.clients import manager

    async def go():
        c = await manager.connect(address)
        try:
            return await asyncio.wait_for(fn(c), timeout)
        finally:
            c.close()
    return asyncio.run(go())


def owner(address: str) -> str:
    """The unique name owning io.github.nvkmd ("" if none)."""
    return run(address, lambda c: c.owner())


def call(address: str, dest: str, path: str, iface: str, member: str, signature: str = "",
         body: list | None = None, timeout: float = 30) -> list:
    """One call to any service on the bus (the real polkitd or logind a
    test runs beside nvkmd); the reply's body, or dbusconn's CallError."""
    from nvkmd import dbusconn

    async def go():
        conn = await dbusconn.connect(address)
        try:
            return await conn.call(dest, path, iface, member, signature, body, timeout=timeout)
        finally:
            conn.disconnect()
    return asyncio.run(go())


def has_owner(address: str, name: str) -> bool:
    from nvkmd.dbusconn import DBUS
    return call(address, *DBUS, "NameHasOwner", "s", [name])[0]


class SystemService:
    """A real system service (polkitd, logind) on a private bus, which it
    takes for the system bus (DBUS_SYSTEM_BUS_ADDRESS), in its own mount
    namespace: ``setup`` (shell) mounts private copies over the host's
    files there, then ``binary`` runs.  Up once it owns ``bus_name``."""

    what = "the service"
    bus_name = ""

    def __init__(self, bus: PrivateBus, binary: Path, setup: str, env: dict[str, str] | None = None):
        if not shutil.which("unshare"):
            raise AssertionError(f"unshare (util-linux) is needed to run {self.what} in a private "
                                 "mount namespace (scripts/setup installs it)")
        self.bus = bus
        self.log = bus.dir / f"{binary.name}.log"
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus.address, **(env or {}))
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                          "sh", "-c", f"{setup} && exec {binary}"], stdout=out,
                                         stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        wait_for(self._up, 30, f"{self.what} to own {self.bus_name}")

    def _up(self) -> bool:
        from nvkmd.errors import NvkmdError
        if self.proc.poll() is not None:
            self.exited(self.log.read_text())
        try:
            return has_owner(self.bus.address, self.bus_name)
        except NvkmdError:          # the bus does not take connections yet
            return False

    def exited(self, text: str) -> None:
        raise AssertionError(f"{self.what} exited with {self.proc.returncode}: {text[-500:]}")

    def stop(self) -> None:
        stop(self.proc)
