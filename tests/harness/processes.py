"""Programs a test or a figure runs: started with their output in a log
file (each start marked in it), waited on, stopped with SIGTERM and, if
need be, SIGKILL, and their logs printed at teardown (pytest shows what a
failed test printed)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from harness.roots import REPO
from harness.waiting import wait_for


def stop(proc: subprocess.Popen, timeout: float = 10.0, *, what: str = "",
         group: bool = False, dump: signal.Signals | None = None) -> int:
    """SIGTERM, then SIGKILL (to the process group with ``group``) after
    ``timeout``; the exit status.  With ``what``, needing SIGKILL fails:
    for nvkmd that is a bug (systemd would wait, then kill it mid-build).
    ``dump`` is sent first to a process that did not stop (nvkmd's SIGUSR1
    writes its threads' stacks to its log)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if dump is not None:
                proc.send_signal(dump)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(2)
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait()
            if what:
                raise AssertionError(f"{what} did not stop within {timeout:g}s of SIGTERM") from None
    return proc.returncode


def pids_with(tag: str) -> list[int]:
    """The processes whose command line contains ``tag`` (what a test's
    build left running, if anything)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if tag in (p / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(p.name))
            except OSError:
                pass
    return out


class LoggedProcess:
    """One program, restartable, its stdout and stderr appended to
    ``log_path``.  Subclasses say what runs (``command``)."""

    name = "process"        # in the log's start marks and in failures
    strict = True           # not stopping on SIGTERM fails (see ``stop``)
    new_session = False     # its own process group: a Ctrl-C reaches only the runner
    timestamped = False     # keep every line with its arrival time in ``lines``

    def __init__(self, log_path: Path, env: dict[str, str] | None = None):
        self.log_path = log_path
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self._mark = 0
        self.lines: list[tuple[float, str]] = []
        self._cv = threading.Condition()

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        e = dict(os.environ)
        e.setdefault("PYTHONUNBUFFERED", "1")
        # Only the process under test may talk to systemd (tests give it their own socket).
        e.pop("NOTIFY_SOCKET", None)
        e.update(self.env)
        return e

    def start(self) -> "LoggedProcess":
        assert not self.alive(), f"{self.name} is already running"
        self.runs += 1
        banner = f"----- {self.name} start #{self.runs}\n"
        with open(self.log_path, "a") as out:
            out.write(banner)
        self._mark = self.log_text().rfind(banner)
        kw = dict(stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                  env=self.environment(), start_new_session=self.new_session)
        if self.timestamped:
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, text=True,
                                         errors="replace", **kw)
            threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        else:
            with open(self.log_path, "a") as out:
                self.proc = subprocess.Popen(self.command(), stdout=out, **kw)
        return self

    def _read(self, proc: subprocess.Popen) -> None:
        with open(self.log_path, "a") as out:
            for line in proc.stdout:
                now = time.monotonic()
                out.write(line)
                out.flush()
                with self._cv:
                    self.lines.append((now, line.rstrip("\n")))
                    self._cv.notify_all()

    @property
    def pid(self) -> int:
        assert self.proc
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exited(self) -> str:
        """Why waiting is over: "" while it runs."""
        if self.proc is None or self.proc.poll() is None:
            return ""
        return f"{self.name} exited with {self.proc.returncode}"

    def log_text(self, this_run: bool = False) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text[self._mark:] if this_run else text

    def wait_log(self, pattern: str, timeout: float = 60, count: int = 1,
                 this_run: bool = True) -> list[re.Match]:
        """For what only the log can show (what a log line says); state
        belongs to the API and the files."""
        rx = re.compile(pattern, re.M)

        def found():
            gone = self.exited()        # before reading: its last lines count
            hits = list(rx.finditer(self.log_text(this_run)))
            if len(hits) >= count:
                return hits
            if gone:
                raise AssertionError(f"{gone} while waiting for /{pattern}/:\n"
                                     f"{self.log_text(this_run)[-3000:]}")
            return None
        return wait_for(found, timeout, f"/{pattern}/ x{count} in the log of {self.name}")

    def wait_ready(self, timeout: float = 60) -> None:
        self.wait_log(r"event='ready'", timeout)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    dump_signal: signal.Signals | None = None     # what makes it write its stacks

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM; the exit status (None if it never started).  A strict
        process that needed SIGKILL fails with the end of its log."""
        if self.proc is None:
            return None
        try:
            return stop(self.proc, timeout, what=self.name if self.strict else "",
                        group=self.new_session, dump=self.dump_signal)
        except AssertionError as e:
            raise AssertionError(f"{e}; the end of its log:\n{self.log_text()[-6000:]}") from None

    def kill9(self) -> None:
        assert self.proc is not None
        if self.new_session and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.kill()
        self.proc.wait()


class Started:
    """What one fixture started: at teardown, whatever still runs is
    stopped and every log printed."""

    def __init__(self) -> None:
        self.all: list[LoggedProcess] = []

    def add(self, p: LoggedProcess) -> LoggedProcess:
        self.all.append(p)
        return p

    def __len__(self) -> int:
        return len(self.all)

    def close(self) -> None:
        for p in self.all:
            if p.alive():
                try:
                    p.stop()
                except AssertionError:
                    pass
            print(f"===== {p.name} log {p.log_path}")
            print(p.log_text())
