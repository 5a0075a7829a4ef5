"""A booted Debian 12: systemd-nspawn --boot on an overlay of the cached image.

Each container gets its own overlay (upper layer in a scratch directory), so
booting one costs no copy and leaves the image untouched.  Its files are
reachable from here through ``path()``; commands run inside through
``nsenter`` into the namespaces of the container's PID 1, with a clean
environment, so nothing of this machine leaks in.

There is no machined on this host, hence --register=no and --keep-unit.
Everything has a deadline; ``stop()`` powers off, then kills, then unmounts.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

WORK = Path(os.environ.get("NVKMD_TEST_WORK", "/var/tmp/nvkmd-systest"))
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "LANG=C.UTF-8", "TERM=dumb", "DEBIAN_FRONTEND=noninteractive", "SYSTEMD_PAGER=",
       "SYSTEMD_COLORS=0"]


class ContainerError(RuntimeError):
    pass


class Result(subprocess.CompletedProcess):
    @property
    def out(self) -> str:
        return self.stdout + self.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _umount(path: Path) -> None:
    if os.path.ismount(path):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _owner_alive(d: Path) -> bool:
    try:
        return _alive(int((d / "owner").read_text()))
    except (OSError, ValueError):
        return False


def _nspawns() -> dict[int, Path]:
    """Our systemd-nspawn processes: pid -> the container directory."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"systemd-nspawn") and b"-D" in argv:
            root = Path(os.fsdecode(argv[argv.index(b"-D") + 1]))
            if root.parent.parent == WORK:
                found[int(proc.name)] = root.parent
    return found


def reap_stale() -> None:
    """Containers of test sessions that died without cleaning up (SIGKILL,
    a lost machine): kill their nspawn, unmount, remove."""
    for pid, d in _nspawns().items():
        if not _owner_alive(d):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
    if not WORK.is_dir():
        return
    for d in WORK.iterdir():
        if not _owner_alive(d):
            _umount(d / "root")
            shutil.rmtree(d, ignore_errors=True)


class Container:
    def __init__(self, image: Path, name: str):
        self.image = image
        WORK.mkdir(parents=True, exist_ok=True)
        self.dir = WORK / f"{name}-{os.getpid()}-{time.monotonic_ns()}"
        self.root = self.dir / "root"
        self.console = self.dir / "console.log"
        self.nspawn: subprocess.Popen | None = None
        self.pid1 = 0

    # -- lifecycle ------------------------------------------------------------
    def start(self, boot_timeout: float = 90.0) -> "Container":
        for sub in ("upper", "work", "root"):
            (self.dir / sub).mkdir(parents=True)
        (self.dir / "owner").write_text(str(os.getpid()))
        mount = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                                f"lowerdir={self.image},upperdir={self.dir / 'upper'},"
                                f"workdir={self.dir / 'work'}", str(self.root)],
                               capture_output=True, text=True)
        if mount.returncode != 0:
            # No overlayfs here (or not on this file system): a full copy
            # costs seconds and 900 MB, but works anywhere.
            subprocess.run(["cp", "-a", "--reflink=auto", f"{self.image}/.", str(self.root)],
                           check=True, capture_output=True)
        with self.console.open("w") as log:
            self.nspawn = subprocess.Popen(
                ["systemd-nspawn", "-q", "-D", str(self.root), "--register=no", "--keep-unit",
                 "--boot", "--console=passive", "--resolv-conf=copy-host",
                 f"--machine=nvkmd-test-{os.getpid()}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        (self.dir / "nspawn.pid").write_text(str(self.nspawn.pid))
        try:
            self._wait_booted(boot_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_booted(self, timeout: float) -> None:
        assert self.nspawn is not None
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited with status {self.nspawn.returncode} "
                                     f"before the container booted:\n{self.console_tail()}")
            if not self.pid1:
                kids = _children(self.nspawn.pid)
                if kids and Path(f"/proc/{kids[0]}/comm").read_text().strip() == "systemd":
                    self.pid1 = kids[0]
            if self.pid1:
                r = self.run("systemctl is-system-running", check=False, timeout=10)
                state = r.stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.1)
        raise ContainerError(f"the container did not boot within {timeout:.0f}s "
                             f"(is-system-running: {state or 'no answer'}):\n{self.console_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        p = self.nspawn
        if p is not None and p.poll() is None:
            if self.pid1:
                subprocess.run(["nsenter", "-t", str(self.pid1), "-a", "systemctl", "poweroff"],
                               capture_output=True, timeout=10, check=False)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        _umount(self.root)
        shutil.rmtree(self.dir, ignore_errors=True)

    def console_tail(self, lines: int = 40) -> str:
        try:
            return "".join(self.console.read_text(errors="replace").splitlines(True)[-lines:])
        except OSError:
            return ""

    # -- inside ---------------------------------------------------------------
    def path(self, inside: str) -> Path:
        """A file of the container, seen from here (through the overlay).
        Not below /run, /tmp, /dev, /proc or /sys: those are mounted over
        inside, so what is written here would not be seen there."""
        top = inside.lstrip("/").split("/", 1)[0]
        if top in ("run", "tmp", "dev", "proc", "sys"):
            raise ValueError(f"{inside}: mounted over inside the container; use run()")
        return self.root / inside.lstrip("/")

    def run(self, cmd: str | list[str], *, user: str = "", check: bool = True,
            timeout: float = 120.0, input: str | None = None) -> Result:
        """Run ``cmd`` inside (a string goes to /bin/sh -c), as root or ``user``."""
        if not self.pid1:
            raise ContainerError("the container is not running")
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        env = list(ENV)
        if user:
            # setpriv, not su/runuser: no PAM session, just that user's ids,
            # as a process a user would start from a shell.
            env += [f"HOME=/home/{user}", f"USER={user}", f"LOGNAME={user}"]
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"] + argv
        else:
            env += ["HOME=/root", "USER=root", "LOGNAME=root"]
        full = ["nsenter", "-t", str(self.pid1), "-a", "--", "/usr/bin/env", "-i", *env, *argv]
        try:
            p = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout,
                               errors="replace", stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise ContainerError(f"{shlex.join(argv)} took more than {timeout:.0f}s; output so far:\n"
                                 f"{e.stdout or ''}{e.stderr or ''}") from None
        r = Result(p.args, p.returncode, p.stdout, p.stderr)
        if check and r.returncode != 0:
            raise ContainerError(f"{cmd if isinstance(cmd, str) else shlex.join(cmd)}: exit status "
                                 f"{r.returncode}\n{r.out}")
        return r

    def wait(self, cmd: str, timeout: float, what: str, *, user: str = "",
             ok=lambda r: r.returncode == 0) -> Result:
        """Run ``cmd`` until ``ok(result)``; fail with the last output after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.run(cmd, user=user, check=False, timeout=max(5.0, timeout))
            if ok(r):
                return r
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; "
                                     f"last `{cmd}`: status {r.returncode}\n{r.out}")
            time.sleep(0.2)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        r = self.run(["systemctl", "show", unit, *(f"--property={p}" for p in props)])
        return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)

    def journal(self, *args: str, lines: int = 200) -> str:
        r = self.run(["journalctl", "--no-pager", "-o", "short-monotonic", "-n", str(lines), *args],
                     check=False, timeout=30)
        return r.out
