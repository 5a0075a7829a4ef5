"""A private, real D-Bus for tests: ``dbus-daemon`` configured like the system
bus (deny by default) plus the project's own busconfig from ``dbus/``, the
real daemon serving on it, real polkitd where it can run, and clients that
run as an unprivileged user through ``setpriv``."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from daemon_helpers import NvkmdDaemon
from harness import bus as harness_bus
from harness.bus import ACTIVATION, BUSCONFIG, DBUS_DIR, SystemService, owner, run
from harness.processes import Started
from helpers import REPO, TestRoot, wait_for

POLKIT_POLICY = DBUS_DIR / "io.github.nvkmd.policy"
CONTRACT = DBUS_DIR / "io.github.nvkmd.Manager1.xml"
POLKIT_BUSCONFIG = Path("/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf")
POLKIT_ACTIONS = Path("/usr/share/polkit-1/actions")
POLKIT_RULES = Path("/etc/polkit-1/rules.d")
POLKITD = [Path("/usr/lib/polkit-1/polkitd"), Path("/usr/libexec/polkitd"),
           Path("/usr/libexec/polkit-1/polkitd")]

# Names tests take from here; they live in the harness, shared with bench/.
__all__ = ["ACTIVATION", "BUSCONFIG", "CONTRACT", "DBUS_DIR", "POLKIT_POLICY", "BusDaemon",
           "Polkitd", "PrivateBus", "Served", "as_nobody", "nobody_python", "owner", "raw_call",
           "run", "serve_root"]


class PrivateBus(harness_bus.PrivateBus):
    """The harness's system-like bus; with ``polkit``, polkitd's busconfig too."""

    def __init__(self, *, polkit: bool = False, includes: tuple[Path, ...] = (), **kw):
        super().__init__(includes=((POLKIT_BUSCONFIG,) if polkit else ()) + tuple(includes), **kw)


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
        if wrapper:
            self.dump_signal = None     # it would reach the tracer, not the daemon

    def command(self) -> list[str]:
        return [*self.wrapper, sys.executable, "-m", "nvkmd.daemon", "--root", str(self.root.path),
                "--bus", self.bus.address, "-v"]

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

    # -- its state, through its API ---------------------------------------------
    def status(self):
        return run(self.bus.address, lambda c: c.status())

    def kernel(self, release: str):
        """``release``'s KernelStatus, None while the daemon does not list it."""
        return next((k for k in self.status().kernels if k.release == release), None)

    def wait_kernel(self, release: str, state: str | None, timeout: float = 60):
        """Until the daemon lists ``release`` in ``state`` (None: until it
        no longer lists it)."""
        def cond():
            if gone := self.exited():
                raise AssertionError(gone)
            k = self.kernel(release)
            return (k is None) if state is None else (k if k and k.state == state else None)
        return wait_for(cond, timeout, f"{release} to be {state or 'unlisted'}")

    def wait_status(self, pred: Callable[[Any], Any], what: str, timeout: float = 60):
        """The first GetStatus for which ``pred(status)`` holds."""
        def cond():
            if gone := self.exited():
                raise AssertionError(gone)
            s = self.status()
            return s if pred(s) else None
        return wait_for(cond, timeout, what)

    def wait_on_bus(self, timeout: float = 60) -> "BusDaemon":
        def up():
            if gone := self.exited():
                raise AssertionError(f"{gone}:\n{self.log_text(True)[-3000:]}")
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
    made = Started()

    def make(root: TestRoot, bus: PrivateBus, env: dict[str, str] | None = None,
             wrapper: tuple[str, ...] = (), wait: bool = True) -> BusDaemon:
        d = made.add(BusDaemon(root, tmp_path / f"nvkmd-bus-{len(made)}.log", bus, env, wrapper))
        d.start()
        return d.wait_on_bus() if wait else d
    yield make
    made.close()


# -- an unprivileged user -------------------------------------------------------

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _site_packages() -> list[str]:
    import dbus_fast
    return [str(Path(dbus_fast.__file__).parent.parent)]


_NOBODY_PYTHON: list[tuple[list[str], dict[str, str]]] = []


def _readable_copy() -> Path:
    """nvkmd copied where nobody may read it (root's, 0755), removed at exit:
    for a checkout nobody cannot enter (a clone under /root or mktemp -d)."""
    import atexit
    import tempfile
    top = Path(tempfile.mkdtemp(prefix="nvkmd-for-nobody-"))
    atexit.register(shutil.rmtree, top, True)
    top.chmod(0o755)
    shutil.copytree(REPO / "nvkmd", top / "nvkmd",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for d in [top, *(p for p in (top / "nvkmd").rglob("*") if p.is_dir())]:
        d.chmod(0o755)
    return top


def nobody_python() -> tuple[list[str], dict[str, str]]:
    """A Python interpreter the user nobody can run, with nvkmd and its
    dependencies importable: the test's own, or (when it lives somewhere
    nobody cannot enter, e.g. under /root) the system's of the same version;
    nvkmd from the checkout, or from a readable copy of it."""
    if _NOBODY_PYTHON:
        return _NOBODY_PYTHON[0]
    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [sys.executable, shutil.which(f"python{want}", path="/usr/bin:/bin") or ""]
    tried = []
    for where in (lambda: REPO, _readable_copy):
        env = {"HOME": "/", "PATH": "/usr/bin:/bin",
               "PYTHONPATH": os.pathsep.join([str(where()), *_site_packages()]),
               "PYTHONDONTWRITEBYTECODE": "1"}
        for py in filter(None, candidates):
            r = subprocess.run([*NOBODY, "env", "-i", *(f"{k}={v}" for k, v in env.items()), py,
                                "-c", "import sys, nvkmd.clients.manager; "
                                "print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, cwd="/")
            if r.returncode == 0 and r.stdout.strip() == want:
                _NOBODY_PYTHON.append(([py], env))
                return [py], env
            tried.append(f"{py} with {env['PYTHONPATH']}: "
                         f"{(r.stderr or r.stdout).strip().splitlines()[-1:] or r.returncode}")
    pytest.fail("no Python interpreter runnable by the user nobody can import nvkmd "
                f"(Python {want} needed): " + "; ".join(tried))


def as_nobody(args: list[str], timeout: float = 60, python: bool = True) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` (or ``ARGS`` with python=False) as nobody:nogroup."""
    if python:
        py, env = nobody_python()
        cmd = [*NOBODY, "env", "-i", *(f"{k}={v}" for k, v in env.items()), *py, *args]
    else:
        cmd = [*NOBODY, "env", "-i", "HOME=/", "PATH=/usr/bin:/bin", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/",
                          stdin=subprocess.DEVNULL)


# -- real polkitd ---------------------------------------------------------------------

class Polkitd(SystemService):
    """The real polkitd.  It reads its actions and rules from fixed
    directories: in its mount namespace private copies are bind-mounted
    over them, so the host's polkit configuration is untouched."""

    what = "polkitd"
    bus_name = "org.freedesktop.PolicyKit1"

    def __init__(self, bus: PrivateBus, rules: dict[str, str] | None = None):
        binary = next((p for p in POLKITD if p.exists()), None)
        if binary is None:
            pytest.fail("polkitd is not installed (scripts/setup installs the polkitd package)")
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
        super().__init__(bus, binary, f"mount --bind {self.actions} {POLKIT_ACTIONS} && "
                                      f"mount --bind {self.rules} {POLKIT_RULES}")

    def exited(self, text: str) -> None:
        if "Operation not permitted" in text or "ermission denied" in text:
            pytest.skip("this machine cannot give polkitd a private mount namespace "
                        f"(needs CAP_SYS_ADMIN): {text.strip()[-300:]}")
        super().exited(text)


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
        return self.daemon.status()

    def wait_ready(self, timeout: float = 120):
        return self.daemon.wait_status(
            lambda s: s.kernels and all(k.state == "ready" for k in s.kernels),
            "every kernel to be ready", timeout)


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
