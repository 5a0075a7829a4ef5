"""The pieces a figure runs against: scratch roots with the machine's real
kernel headers linked in, the real ``nvkmd`` daemon as a process whose log
lines are timestamped as they arrive, a private ``dbus-daemon`` configured
with the project's own busconfig, and timed subprocesses."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "data" / "tiny-open"
DBUS_DIR = REPO / "dbus"
BUSCONFIG = DBUS_DIR / "io.github.nvkmd.conf"
SYSTEM_MODULES = Path("/lib/modules")
DEBIAN_TARBALL = Path("/usr/src/nvidia-open-kernel.tar.xz")
PY = sys.executable
T = TypeVar("T")


class BenchError(Exception):
    """A figure cannot be measured; the message says why (one line)."""


def log(msg: str) -> None:
    """Progress for the person watching (stderr; stdout carries the figures)."""
    try:
        print(f"bench: {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass        # nobody is reading any more; the run (and its cleanup) goes on


def wait_for(cond: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def timed(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 600,
          check: bool = True, cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time of one command, output captured."""
    e = dict(os.environ)
    e.pop("NOTIFY_SOCKET", None)
    e.update(env or {})
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=timeout,
                       stdin=subprocess.DEVNULL, cwd=cwd)
    dt = time.monotonic() - t0
    if check and p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise BenchError(f"`{' '.join(cmd[:6])}` exited {p.returncode}: {' | '.join(tail)}")
    return dt, p


def header_kernels() -> list[str]:
    """Releases with real headers on this machine, oldest first."""
    from nvkmd.system.kernels import release_key
    out = []
    for d in SYSTEM_MODULES.iterdir() if SYSTEM_MODULES.is_dir() else []:
        if (d / "build" / "Makefile").is_file() and (d / "build" / ".config").is_file():
            out.append(d.name)
    return sorted(out, key=release_key)


def nvkmctl() -> list[str]:
    """The command a user types: the installed console script, else the module."""
    script = Path(PY).parent / "nvkmctl"
    return [str(script)] if script.exists() else [PY, "-m", "nvkmd.cli"]


class Workspace:
    """A private scratch directory for one run, removed at the end."""

    def __init__(self, keep: bool = False):
        self.dir = Path(tempfile.mkdtemp(prefix="nvkmd-bench-"))
        self.dir.chmod(0o755)
        self.keep = keep
        self._n = 0

    def new(self, name: str) -> Path:
        self._n += 1
        p = self.dir / f"{self._n:02d}-{name}"
        p.mkdir(parents=True)
        return p

    def close(self) -> None:
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


# -- driver sources --------------------------------------------------------------

class SourceTree:
    """The source a figure builds: the tiny tree (--quick) or Debian's NVIDIA
    source (full), as a read-only tree owned by root."""

    def __init__(self, ws: Workspace, nvidia: bool):
        self.nvidia = nvidia
        base = ws.new("source")
        if nvidia:
            if not DEBIAN_TARBALL.is_file():
                raise BenchError(f"{DEBIAN_TARBALL} is missing (scripts/setup installs "
                                 "nvidia-open-kernel-source)")
            subprocess.run(["tar", "-xJf", str(DEBIAN_TARBALL), "-C", str(base)], check=True)
            self.top = base / "modules" / "nvidia-open-kernel"
        else:
            self.top = base / "nvidia-tiny"
            shutil.copytree(TINY, self.top, symlinks=True)
        # The kernel interface layer `make` runs in (kernel-open/ of a checkout).
        self.tree = self.top / "kernel-open" if (self.top / "kernel-open").is_dir() else self.top
        from nvkmd.system.source import modules_of, version_of
        self.version = version_of(self.tree, self.top)
        self.modules = modules_of(self.tree, self.top)
        if not self.version or not self.modules:
            raise BenchError(f"cannot read the version and modules of {self.top}")
        self.kind = "NVIDIA open " + self.version if nvidia else "tiny test tree " + self.version

    def copy_into(self, dest: Path) -> Path:
        """The whole source (a checkout's top, or Debian's tree)."""
        shutil.copytree(self.top, dest, symlinks=True)
        return dest

    def copy_tree_into(self, dest: Path) -> Path:
        """Only the tree `make` runs in, as DKMS wants it under /usr/src."""
        shutil.copytree(self.tree, dest, symlinks=True)
        return dest


# -- scratch roots -----------------------------------------------------------------

class BenchRoot:
    """A scratch system root: lib/modules/<K> with build/source links to the
    real headers, the source under usr/src, a config file."""

    def __init__(self, path: Path, source: SourceTree, config: str = ""):
        self.path = path
        self.modules = path / "lib" / "modules"
        self.modules.mkdir(parents=True, exist_ok=True)
        (path / "etc" / "nvkmd").mkdir(parents=True, exist_ok=True)
        self.src = source.copy_into(path / "usr" / "src" / "nvidia-bench")
        self.configure(config)

    def configure(self, extra: str = "") -> None:
        (self.path / "etc" / "nvkmd" / "nvkmd.toml").write_text(
            f'[source]\npath = "/usr/src/nvidia-bench"\n[install]\ninitramfs = "never"\n{extra}')

    def add_kernel(self, release: str, headers_of: str | None = None) -> Path:
        """A kernel directory; with ``headers_of``, linked to that real kernel's headers."""
        d = self.modules / release
        (d / "kernel").mkdir(parents=True, exist_ok=True)
        if headers_of:
            self.link_headers(release, headers_of)
        return d

    def link_headers(self, release: str, headers_of: str | None = None) -> None:
        d = self.modules / release
        real = SYSTEM_MODULES / (headers_of or release)
        for name in ("build", "source"):
            if not (d / name).is_symlink():
                os.symlink((real / name).resolve(), d / name)

    def nvkmd_dir(self, release: str) -> Path:
        return self.modules / release / "updates" / "nvkmd"

    def installed(self, release: str) -> bool:
        return (self.nvkmd_dir(release) / "nvkmd.json").is_file()


# -- the daemon -------------------------------------------------------------------

LINE_FIELDS = re.compile(r"(\w+)=('(?:[^'\\]|\\.)*'|\S+)")


def fields(line: str) -> dict[str, str]:
    """structlog key=value pairs of one log line."""
    return {k: v.strip("'") for k, v in LINE_FIELDS.findall(line)}


class DaemonProc:
    """``python -m nvkmd.main`` with every log line kept as (arrival time, line)."""

    def __init__(self, root: Path, log_path: Path, *, bus: str = "none",
                 config: Path | None = None, env: dict[str, str] | None = None):
        self.root = root
        self.log_path = log_path
        self.bus = bus
        self.config = config
        self.env = env or {}
        self.lines: list[tuple[float, str]] = []
        self.proc: subprocess.Popen | None = None
        self._cv = threading.Condition()

    def start(self) -> "DaemonProc":
        e = dict(os.environ, PYTHONUNBUFFERED="1")
        e.pop("NOTIFY_SOCKET", None)
        e.pop("WATCHDOG_USEC", None)
        e.update(self.env)
        cmd = [PY, "-m", "nvkmd.daemon", "--root", str(self.root), "--bus", self.bus]
        if self.config:
            cmd += ["--config", str(self.config)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, cwd=REPO, env=e, text=True,
                                     start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc and self.proc.stderr
        with open(self.log_path, "a") as out:
            for line in self.proc.stderr:
                now = time.monotonic()
                out.write(line)
                with self._cv:
                    self.lines.append((now, line.rstrip("\n")))
                    self._cv.notify_all()

    @property
    def pid(self) -> int:
        assert self.proc
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def mark(self) -> int:
        with self._cv:
            return len(self.lines)

    def find(self, event: str, since: int = 0, **want: str) -> list[tuple[float, dict[str, str]]]:
        with self._cv:
            lines = self.lines[since:]
        out = []
        for t, line in lines:
            f = fields(line)
            if f.get("event") == event and all(f.get(k) == v for k, v in want.items()):
                out.append((t, f))
        return out

    def wait_event(self, event: str, since: int = 0, timeout: float = 120,
                   **want: str) -> tuple[float, dict[str, str]]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.find(event, since, **want)
            if got:
                return got[0]
            if not self.alive():
                raise BenchError(f"nvkmd exited ({self.proc.returncode}) before '{event}'; "
                                 f"log: {self.log_path}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"nvkmd did not log '{event}' {want or ''} within {timeout:g}s; "
                                 f"log: {self.log_path}")
            with self._cv:
                self._cv.wait(min(left, 0.5))

    def settled(self, since: int = 0) -> bool:
        """Every job queued since ``since`` has finished."""
        return len(self.find("job queued", since)) <= len(self.find("build finished", since)) \
            + len(self.find("job dropped", since))

    def wait_settled(self, since: int = 0, timeout: float = 900) -> None:
        wait_for(lambda: self.settled(since) or not self.alive(), timeout, "nvkmd's builds to finish",
                 interval=0.1)
        if not self.alive():
            raise BenchError(f"nvkmd exited ({self.proc.returncode}); log: {self.log_path}")

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# -- a private bus ----------------------------------------------------------------

# Debian's /usr/share/dbus-1/system.conf default policy: deny unless a
# service's busconfig allows.  The project's busconfig is included as is.
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
  </policy>
"""


def bus_available() -> str:
    """'' if the D-Bus adapter and the client exist, else why not."""
    import importlib.util
    missing = [m for m in ("nvkmd.bus", "nvkmd.clients.manager") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not landed yet"
    if not shutil.which("dbus-daemon"):
        return "dbus-daemon is not installed"
    if not BUSCONFIG.is_file():
        return f"{BUSCONFIG.relative_to(REPO)} not landed yet"
    return ""


class PrivateBus:
    """``dbus-daemon`` on a private socket, with the system bus's default
    policy and limits and the project's busconfig: loopback only."""

    def __init__(self, ws: Workspace, limits: dict[str, int] | None = None):
        self.dir = ws.new("bus")
        self.limits = dict(limits or {})
        limit_xml = "".join(f'  <limit name="{k}">{v}</limit>\n' for k, v in self.limits.items())
        self.socket = self.dir / "bus"
        conf = self.dir / "bus.conf"
        conf.write_text(
            '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
            ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
            "<busconfig>\n  <type>system</type>\n  <auth>EXTERNAL</auth>\n"
            f"  <listen>unix:path={self.socket}</listen>\n{limit_xml}{SYSTEM_POLICY}"
            f"  <include>{BUSCONFIG}</include>\n</busconfig>\n")
        self.proc = subprocess.Popen(["dbus-daemon", f"--config-file={conf}", "--print-address",
                                      "--nofork"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.address = self.proc.stdout.readline().strip()
        if not self.address:
            raise BenchError(f"dbus-daemon did not start: {self.proc.stderr.read().strip()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def bus_owner(address: str) -> str:
    """The unique name owning io.github.nvkmd on ``address`` ('' if none)."""
    import asyncio

    from nvkmd.clients import manager as client

    async def go() -> str:
        c = await client.connect(address)
        try:
            return await c.owner()
        finally:
            c.close()
    try:
        return asyncio.run(go())
    except Exception:
        return ""


def wait_on_bus(d: DaemonProc, address: str, timeout: float = 60) -> str:
    def up() -> str:
        if not d.alive():
            raise BenchError(f"nvkmd exited ({d.proc.returncode}); log: {d.log_path}")
        return bus_owner(address)
    return wait_for(up, timeout, "nvkmd to own io.github.nvkmd", interval=0.1)


# -- /proc ------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its waited-for children, in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    rest = text[text.rindex(")") + 2:].split()
    # fields 14..17 (utime stime cutime cstime) are rest[11..14]
    ticks = sum(int(x) for x in rest[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS"):
            out[k] = int(v.split()[0])
    return out
