"""Driving a real ``nvkmd`` daemon process on a test root.

The daemon runs as ``python -m nvkmd.daemon --root R --bus none -v``; tests
watch its job database (read-only) and the files it installs, and wait on
conditions; its log, for what only a log line can show.  Its log is
printed at teardown, which pytest shows for a failed test.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from harness.processes import LoggedProcess, Started
from harness.waiting import wait_for

if TYPE_CHECKING:
    from helpers import TestRoot


class NvkmdDaemon(LoggedProcess):
    name = "nvkmd"
    dump_signal = signal.SIGUSR1

    def __init__(self, root: TestRoot, log_path: Path, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()):
        super().__init__(log_path, env)
        self.root = root
        self.args = args

    @property
    def db(self) -> Path:
        return self.root.path / "var" / "lib" / "nvkmd" / "nvkmd.sqlite3"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "nvkmd.daemon", "--root", str(self.root.path),
                "--bus", "none", "-v", *self.args]

    # -- the job database, read-only -------------------------------------------
    def jobs(self) -> list[dict]:
        if not self.db.exists():
            return []
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute("SELECT * FROM jobs ORDER BY id")]
        except sqlite3.OperationalError as e:
            # A (re)started daemon has created the file but not yet its
            # schema: no jobs yet, as before the file existed.
            if "no such table" in str(e):
                return []
            raise
        finally:
            con.close()

    def jobs_for(self, kernel: str) -> list[dict]:
        return [j for j in self.jobs() if j["kernel"] == kernel]

    def wait_job(self, kernel: str, state: str, timeout: float = 120, version: str | None = None,
                 after: int = 0) -> dict:
        """The newest job for ``kernel`` in ``state`` (with id > ``after``:
        a job queued later than a known one, not that one again)."""
        def cond():
            gone = self.exited()
            for j in reversed(self.jobs_for(kernel)):
                if j["id"] > after and j["state"] == state and \
                        (version is None or j["source_version"] == version):
                    return j
            if gone:
                raise AssertionError(gone)
            return None
        return wait_for(cond, timeout, f"a {state} job for {kernel}")


@pytest.fixture
def nvkmd_daemon(tmp_path):
    """Factory: ``nvkmd_daemon(root, env={...})`` -> a started NvkmdDaemon."""
    made = Started()

    def make(root: TestRoot, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
             start: bool = True) -> NvkmdDaemon:
        d = made.add(NvkmdDaemon(root, tmp_path / f"nvkmd-{len(made)}.log", env, args))
        return d.start() if start else d

    yield make
    made.close()


def installed_version(root: TestRoot, kernel: str) -> str | None:
    """The version of the nvidia module nvkmd installed for ``kernel``."""
    from nvkmd.system.modinfo import modinfo
    ko = root.nvkmd_dir(kernel) / "nvidia.ko"
    if not ko.exists():
        return None
    try:
        return modinfo(ko).get("version")
    except Exception:
        return None


def assert_install_whole(root: TestRoot, kernel: str) -> None:
    """nvkmd's directory for ``kernel`` is absent or complete: the manifest
    names its modules and each of them is a readable module for this kernel."""
    import json
    from nvkmd.system.modinfo import modinfo
    d = root.nvkmd_dir(kernel)
    if not d.exists():
        return
    manifest = json.loads((d / "nvkmd.json").read_text())
    kos = sorted(p.name for p in d.glob("*.ko*"))
    assert kos == sorted(f"{m}.ko" for m in manifest["modules"]), (kos, manifest)
    for ko in kos:
        assert modinfo(d / ko)["vermagic"].split()[0] == kernel


class NotifySocket:
    """A real sd_notify datagram socket, recording (pid, message) pairs."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        # SO_PASSCRED: the kernel tells us which process sent each datagram.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import struct
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except socket.timeout:
                continue
            except OSError:
                return
            pid = 0
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:12])[0]
            with self._lock:
                self.messages.append((pid, data.decode("ascii", errors="replace")))

    def assignments(self, key: str) -> list[str]:
        """Every value sent for ``KEY=``, in order."""
        with self._lock:
            msgs = list(self.messages)
        out = []
        for _, m in msgs:
            for line in m.split("\n"):
                if line.startswith(key + "="):
                    out.append(line[len(key) + 1:])
        return out

    def senders(self) -> set[int]:
        with self._lock:
            return {pid for pid, _ in self.messages}

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()
