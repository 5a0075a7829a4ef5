"""A private, real D-Bus for tests: ``dbus-daemon`` configured like the system
bus (deny by default) plus the project's own busconfig from ``dbus/``, the
real daemon serving on it, real polkitd where it can run, and clients that
run as an unprivileged user through ``setpriv``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from daemon_helpers import NvkmdDaemon
from helpers import REPO, TestRoot, wait_for

DBUS_DIR = REPO / "dbus"
BUSCONFIG = DBUS_DIR / "io.github.nvkmd.conf"
ACTIVATION = DBUS_DIR / "io.github.nvkmd.service"
POLKIT_POLICY = DBUS_DIR / "io.github.nvkmd.policy"
CONTRACT = DBUS_DIR / "io.github.nvkmd.Manager1.xml"
POLKIT_BUSCONFIG = Path("/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf")
POLKIT_ACTIONS = Path("/usr/share/polkit-1/actions")
POLKIT_RULES = Path("/etc/polkit-1/rules.d")
POLKITD = [Path("/usr/lib/polkit-1/polkitd"), Path("/usr/libexec/polkitd"),
           Path("/usr/libexec/polkit-1/polkitd")]

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


class PrivateBus:
    """``dbus-daemon --nofork --print-address`` with a generated config."""

    def __init__(self, *, polkit: bool = False, activation: bool = False,
                 limits: dict[str, int] | None = None, includes: tuple[Path, ...] = ()):
        # A world-searchable directory: clients running as nobody must reach
        # the socket (pytest's tmp_path is private to root).
        self.dir = Path(tempfile.mkdtemp(prefix="nvkmd-bus-"))
        self.dir.chmod(0o755)
        self.socket = self.dir / "bus"
        includes = [BUSCONFIG] + ([POLKIT_BUSCONFIG] if polkit else []) + list(includes)
        servicedir = ""
        if activation:
            services = self.dir / "services"
            services.mkdir()
            shutil.copy(ACTIVATION, services / ACTIVATION.name)
            servicedir = f"  <servicedir>{services}</servicedir>\n"
        limit_xml = "".join(f'  <limit name="{k}">{v}</limit>\n' for k, v in (limits or {}).items())
        self.config = self.dir / "bus.conf"
        self.config.write_text(
            '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
            ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
            "<busconfig>\n  <type>system</type>\n  <auth>EXTERNAL</auth>\n"
            f"  <listen>unix:path={self.socket}</listen>\n{servicedir}{limit_xml}{SYSTEM_POLICY}"
            + "".join(f"  <include>{p}</include>\n" for p in includes) + "</busconfig>\n")
        # stderr goes to a file: dbus-daemon logs every refused call there,
        # and a pipe nobody drains would block it once full.
        self.log = self.dir / "dbus-daemon.log"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(["dbus-daemon", f"--config-file={self.config}",
                                          "--print-address", "--nofork"],
                                         stdout=subprocess.PIPE, stderr=err, text=True)
        line = self.proc.stdout.readline().strip()
        if not line:
            self.proc.wait(10)
            raise AssertionError(f"dbus-daemon did not start with {self.config}: "
                                 f"{self.log.read_text()}")
        self.address = line

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def run(address: str, fn: Callable[[Any], Awaitable[Any]], timeout: float = 60) -> Any:
    """``await fn(client)`` with a fresh nvkmd.clients.manager connection, from sync code."""
    from nvkmd.clients import manager as client

    async def go():
        c = await client.connect(address)
        try:
            return await asyncio.wait_for(fn(c), timeout)
        finally:
            c.close()
    return asyncio.run(go())


def owner(address: str) -> str:
    return run(address, lambda c: c.owner())


_OURS = object()


def raw_call(address: str, member: str, signature: str, body: list, *,
             interface: Any = _OURS, path: str | None = None, flags: int = 0) -> Any:
    """Send one method call as built here, bypassing the client's checks;
    the reply Message (METHOD_RETURN or ERROR).  interface=None sends none."""
    from dbus_fast import Message, MessageFlag

    from nvkmd import api

    async def go(c):
        msg = Message(destination=api.BUS_NAME, path=path or api.OBJECT_PATH,
                      interface=api.INTERFACE if interface is _OURS else interface,
                      member=member, signature=signature, body=body, flags=MessageFlag(flags))
        return await c.conn.raw.call(msg)
    return run(address, go)


class BusDaemon(NvkmdDaemon):
    """The real nvkmd, serving on a private bus."""

    def __init__(self, root: TestRoot, log_path: Path, bus: PrivateBus,
                 env: dict[str, str] | None = None, wrapper: tuple[str, ...] = ()):
        super().__init__(root, log_path, env)
        self.bus = bus
        self.wrapper = wrapper

    def start(self) -> "BusDaemon":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        e = dict(os.environ)
        e.setdefault("PYTHONUNBUFFERED", "1")
        e.pop("NOTIFY_SOCKET", None)
        e.update(self.env)
        self.runs += 1
        with open(self.log_path, "a") as out:
            out.write(f"----- nvkmd start #{self.runs}\n")
            out.flush()
            self.proc = subprocess.Popen(
                [*self.wrapper, sys.executable, "-m", "nvkmd.daemon", "--root", str(self.root.path),
                 "--bus", self.bus.address, "-v"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, env=e)
        self._mark = self.log_text().rfind(f"----- nvkmd start #{self.runs}")
        return self

    def _traced_pids(self) -> list[int]:
        """The daemon's pid(s) when it runs under a wrapper such as strace."""
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def signal(self, sig: int) -> None:
        for pid in self._traced_pids() if self.wrapper else [self.proc.pid]:
            os.kill(pid, sig)

    def stop(self, timeout: float = 20) -> int:
        if self.wrapper and self.proc.poll() is None:
            # The signal must reach the daemon, not the tracer in front of it.
            self.signal(signal.SIGTERM)
        return super().stop(timeout)

    def kill9(self) -> None:
        if self.wrapper:
            for pid in self._traced_pids():
                os.kill(pid, signal.SIGKILL)
        super().kill9()

    def wait_on_bus(self, timeout: float = 60) -> "BusDaemon":
        def up():
            if not self.alive():
                raise AssertionError(f"nvkmd exited with {self.proc.returncode}:\n"
                                     f"{self.log_text(True)[-3000:]}")
            return owner(self.bus.address)
        wait_for(up, timeout, "nvkmd to own io.github.nvkmd")
        return self


@pytest.fixture
def bus_factory():
    made: list[PrivateBus] = []

    def make(**kw) -> PrivateBus:
        b = PrivateBus(**kw)
        made.append(b)
        return b
    yield make
    for b in made:
        b.stop()


@pytest.fixture
def bus(bus_factory) -> PrivateBus:
    return bus_factory()


@pytest.fixture
def bus_daemon(tmp_path):
    """Factory: ``bus_daemon(root, bus, env=..., wrapper=...)`` -> a BusDaemon
    owning the name.  Its log is printed at teardown (shown on failure)."""
    made: list[BusDaemon] = []

    def make(root: TestRoot, bus: PrivateBus, env: dict[str, str] | None = None,
             wrapper: tuple[str, ...] = (), wait: bool = True) -> BusDaemon:
        d = BusDaemon(root, tmp_path / f"nvkmd-bus-{len(made)}.log", bus, env, wrapper)
        made.append(d)
        d.start()
        return d.wait_on_bus() if wait else d
    yield make
    for d in made:
        if d.alive():
            try:
                d.stop()
            except AssertionError:
                pass
        print(f"===== daemon log {d.log_path}")
        print(d.log_text())


# -- an unprivileged user -------------------------------------------------------

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _site_packages() -> list[str]:
    import dbus_fast
    return [str(Path(dbus_fast.__file__).parent.parent)]


def nobody_python() -> tuple[list[str], dict[str, str]]:
    """A Python interpreter the user nobody can run, with nvkmd and its
    dependencies importable: the test's own, or (when it lives somewhere
    nobody cannot enter, e.g. under /root) the system's of the same version."""
    env = {"HOME": "/", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": os.pathsep.join([str(REPO), *_site_packages()]),
           "PYTHONDONTWRITEBYTECODE": "1"}
    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [sys.executable, shutil.which(f"python{want}", path="/usr/bin:/bin") or ""]
    tried = []
    for py in filter(None, candidates):
        r = subprocess.run([*NOBODY, "env", "-i", *(f"{k}={v}" for k, v in env.items()), py, "-c",
                            "import sys, nvkmd.clients.manager; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip() == want:
            return [py], env
        tried.append(f"{py}: {(r.stderr or r.stdout).strip().splitlines()[-1:] or r.returncode}")
    pytest.fail("no Python interpreter runnable by the user nobody can import nvkmd "
                f"(Python {want} needed): " + "; ".join(tried))


def as_nobody(args: list[str], timeout: float = 60, python: bool = True) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` (or ``ARGS`` with python=False) as nobody:nogroup."""
    if python:
        py, env = nobody_python()
        cmd = [*NOBODY, "env", "-i", *(f"{k}={v}" for k, v in env.items()), *py, *args]
    else:
        cmd = [*NOBODY, "env", "-i", "HOME=/", "PATH=/usr/bin:/bin", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          stdin=subprocess.DEVNULL)


# -- real polkitd ---------------------------------------------------------------------

class Polkitd:
    """The real polkitd on a private bus, which it takes for the system bus
    (DBUS_SYSTEM_BUS_ADDRESS).  It reads its actions and rules from fixed
    directories, so it runs in its own mount namespace where private copies
    are bind-mounted over them: the host's polkit configuration is untouched."""

    def __init__(self, bus: PrivateBus, rules: dict[str, str] | None = None):
        self.bus = bus
        binary = next((p for p in POLKITD if p.exists()), None)
        if binary is None:
            pytest.fail("polkitd is not installed (scripts/setup installs the polkitd package)")
        if not shutil.which("unshare"):
            pytest.fail("unshare (util-linux) is needed to give polkitd private action files")
        self.actions = bus.dir / "polkit-actions"
        self.rules = bus.dir / "polkit-rules"
        shutil.copytree(POLKIT_ACTIONS, self.actions)
        shutil.copy(POLKIT_POLICY, self.actions / POLKIT_POLICY.name)
        self.rules.mkdir()
        for name, text in (rules or {}).items():
            (self.rules / name).write_text(text)
        # polkitd runs as its own user after starting; let it read them.
        for d in (self.actions, self.rules):
            d.chmod(0o755)
            for f in d.iterdir():
                f.chmod(0o644)
        self.log = bus.dir / "polkitd.log"
        script = (f"mount --bind {self.actions} {POLKIT_ACTIONS} && "
                  f"mount --bind {self.rules} {POLKIT_RULES} && exec {binary}")
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus.address)
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                          "sh", "-c", script], stdout=out, stderr=subprocess.STDOUT,
                                         env=env, stdin=subprocess.DEVNULL)

        def up():
            if self.proc.poll() is not None:
                text = self.log.read_text()
                if "Operation not permitted" in text or "ermission denied" in text:
                    pytest.skip("this machine cannot give polkitd a private mount namespace "
                                f"(needs CAP_SYS_ADMIN): {text.strip()[-300:]}")
                raise AssertionError(f"polkitd exited with {self.proc.returncode}: {text}")
            return run(bus.address, lambda c: c._bus_call("GetNameOwner", "s",
                                                          ["org.freedesktop.PolicyKit1"]))
        wait_for(lambda: _quiet(up), 30, "polkitd to own org.freedesktop.PolicyKit1")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _quiet(fn: Callable[[], Any]) -> Any:
    from nvkmd.errors import NvkmdError
    try:
        return fn()
    except NvkmdError:
        return None


# -- a served test root ----------------------------------------------------------------

FAST_CONFIG = "[daemon]\ndebounce_s = 0.2\n[build]\ncache_keep = 0\n"


class Served:
    """A test root with the tiny source and real kernels, the daemon serving
    it on a private bus; the first kernel is the running one."""

    def __init__(self, root: TestRoot, bus: PrivateBus, daemon: BusDaemon, kernels: list[str]):
        self.root, self.bus, self.daemon, self.kernels = root, bus, daemon, kernels
        self.address = bus.address

    def call(self, member: str, *args, **kw):
        return run(self.address, lambda c: c.call(member, *args, **kw))

    def error(self, member: str, *args):
        from nvkmd.errors import NvkmdError
        with pytest.raises(NvkmdError) as e:
            self.call(member, *args)
        return e.value

    def status(self):
        return run(self.address, lambda c: c.status())

    def wait_ready(self, timeout: float = 120):
        def ready():
            s = self.status()
            return s if s.kernels and all(k.state == "ready" for k in s.kernels) else None
        return wait_for(ready, timeout, "every kernel to be ready")


@contextlib.contextmanager
def serve_root(base: Path, kernels: int = 2, config: str = FAST_CONFIG,
               prepare: Callable[[TestRoot], None] | None = None, ready: bool = True):
    from helpers import need_kernels
    ks = need_kernels(kernels)[-kernels:][::-1]
    root = TestRoot(base / "root")
    root.path.chmod(0o755)
    root.add_tiny_source()
    root.configure(root.config_text + config)
    for k in ks:
        root.add_kernel(k)
    if prepare:
        prepare(root)
    bus = PrivateBus()
    daemon = BusDaemon(root, base / "nvkmd.log", bus, env={"NVKMD_RUNNING_KERNEL": ks[0]})
    daemon.start()
    try:
        daemon.wait_on_bus()
        s = Served(root, bus, daemon, ks)
        if ready:
            s.wait_ready()
        yield s
        assert daemon.alive(), "the daemon died during the tests"
        assert daemon.stop() == 0
    finally:
        if daemon.alive():
            daemon.kill9()
        bus.stop()
        print("===== daemon log")
        print(daemon.log_text())
