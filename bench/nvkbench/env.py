"""The pieces a figure runs against: scratch roots with the machine's real
kernel headers linked in, the real ``nvkmd`` daemon as a process whose log
lines are timestamped as they arrive, a private ``dbus-daemon`` configured
with the project's own busconfig, and timed subprocesses.  Processes, the
bus, roots and waiting are the test harness's (tests/harness/), so the
bench measures the daemon exactly as the tests run it."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import bus, waiting
from harness.processes import LoggedProcess
from harness.roots import REPO, SYSTEM_MODULES, TINY, Root, header_kernels

# The harness's names the figures take from here, beside bench's own.
__all__ = ["REPO", "SYSTEM_MODULES", "TINY", "header_kernels"]
DEBIAN_TARBALL = Path("/usr/src/nvidia-open-kernel.tar.xz")
PY = sys.executable


class BenchError(Exception):
    """A figure cannot be measured; the message says why (one line)."""


def log(msg: str) -> None:
    """Progress for the person watching (stderr; stdout carries the figures)."""
    try:
        print(f"bench: {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass        # nobody is reading any more; the run (and its cleanup) goes on


# A timeout makes a figure unavailable, not the run fail.
wait_for = functools.partial(waiting.wait_for, interval=0.02, error=BenchError)


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

class BenchRoot(Root):
    """A scratch system root: lib/modules/<K> with build/source links to the
    real headers, the source under usr/src, a config file."""

    def __init__(self, path: Path, source: SourceTree, config: str = ""):
        super().__init__(path)
        self.src = source.copy_into(path / "usr" / "src" / "nvidia-bench")
        self.configure(config)

    def configure(self, extra: str = "") -> None:
        self.write_config(f'[source]\npath = "/usr/src/nvidia-bench"\n[install]\ninitramfs = "never"\n'
                          f'{extra}')

    def add_kernel(self, release: str, headers_of: str | None = None) -> Path:
        """A kernel directory; with ``headers_of``, linked to that real kernel's headers."""
        d = self.modules / release
        (d / "kernel").mkdir(parents=True, exist_ok=True)
        if headers_of:
            self.link_headers(release, headers_of)
        return d

    def installed(self, release: str) -> bool:
        return (self.nvkmd_dir(release) / "nvkmd.json").is_file()


# -- the daemon -------------------------------------------------------------------

LINE_FIELDS = re.compile(r"(\w+)=('(?:[^'\\]|\\.)*'|\S+)")


def fields(line: str) -> dict[str, str]:
    """structlog key=value pairs of one log line."""
    return {k: v.strip("'") for k, v in LINE_FIELDS.findall(line)}


class DaemonProc(LoggedProcess):
    """``python -m nvkmd.daemon`` with every log line kept as (arrival time, line)."""

    name = "nvkmd"
    strict = False          # a figure measures; the tests judge shutdown
    new_session = True
    timestamped = True

    def __init__(self, root: Path, log_path: Path, *, bus: str = "none",
                 config: Path | None = None, env: dict[str, str] | None = None):
        super().__init__(log_path, env)
        self.root = root
        self.bus = bus
        self.config = config

    def environment(self) -> dict[str, str]:
        e = super().environment()
        e.pop("WATCHDOG_USEC", None)
        return e

    def command(self) -> list[str]:
        cmd = [PY, "-m", "nvkmd.daemon", "--root", str(self.root), "--bus", self.bus]
        return cmd + (["--config", str(self.config)] if self.config else [])

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

    def stop(self, timeout: float = 30) -> int | None:
        return super().stop(timeout)


# -- a private bus ----------------------------------------------------------------

def bus_available() -> str:
    """'' if the D-Bus adapter and the client exist, else why not."""
    import importlib.util
    missing = [m for m in ("nvkmd.bus", "nvkmd.clients.manager") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not landed yet"
    if not shutil.which("dbus-daemon"):
        return "dbus-daemon is not installed"
    if not bus.BUSCONFIG.is_file():
        return f"{bus.BUSCONFIG.relative_to(REPO)} not landed yet"
    return ""


def PrivateBus(ws: Workspace, limits: dict[str, int] | None = None) -> bus.PrivateBus:
    """The harness's private bus (the system bus's default policy and the
    project's busconfig), in the workspace, out of the terminal's reach."""
    return bus.PrivateBus(ws.new("bus"), limits=limits, new_session=True)


def bus_owner(address: str) -> str:
    """The unique name owning io.github.nvkmd on ``address`` ('' if none)."""
    try:
        return bus.owner(address)
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
