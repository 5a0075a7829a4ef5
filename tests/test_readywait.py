"""``nvkmctl wait-ready`` when the module is missing: the real daemon on a
private dbus-daemon (the project's busconfig) builds, wait-ready follows.

To hold a build back deterministically the test root's pacman lock
(var/lib/pacman/db.lck) is present: nvkmd never starts a build while a
package manager is in a transaction, so the job stays queued until the
test removes it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from daemon_helpers import NotifySocket
from helpers import REPO, need_kernels, wait_for
from nvkmd.errors import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, EXIT_UNREACHABLE

NVKMCTL = Path(sys.executable).parent / "nvkmctl"


class WaitReady:
    """``nvkmctl --bus ADDR --root R wait-ready ...`` running in the background."""

    def __init__(self, tmp: Path, root: Path, address: str, *args: str,
                 env: dict[str, str] | None = None):
        self.out = tmp / f"wait-ready-{time.monotonic_ns()}.out"
        e = dict(os.environ)
        e.pop("NOTIFY_SOCKET", None)
        e.update(env or {})
        with open(self.out, "w") as f:
            self.proc = subprocess.Popen([str(NVKMCTL), "--bus", address, "--root", str(root),
                                          "wait-ready", *args], stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=e, cwd=REPO)

    def text(self) -> str:
        return self.out.read_text()

    def wait_line(self, pattern: str, timeout: float = 60) -> re.Match:
        rx = re.compile(pattern, re.M)
        return wait_for(lambda: rx.search(self.text()), timeout, f"/{pattern}/ from wait-ready")

    def result(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout)


def pacman_lock(root) -> Path:
    lck = root.path / "var/lib/pacman/db.lck"
    lck.parent.mkdir(parents=True, exist_ok=True)
    lck.write_text("")
    return lck


def test_missing_module_with_a_queued_job_waits_then_exits_0(root, bus, bus_daemon, tmp_path):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    lck = pacman_lock(root)
    daemon = bus_daemon(root, bus, env={"NVKMD_RUNNING_KERNEL": k})
    job = daemon.wait_job(k, "queued")
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        w = WaitReady(tmp_path, root.path, bus.address, "--timeout", "300",
                      env={"NVKMD_RUNNING_KERNEL": k, "NOTIFY_SOCKET": str(sock.path)})
        w.wait_line(rf"nvkmd's job {job['id']} for {re.escape(k)} is queued "
                    r"\(nvkmd waits for a package manager to finish\)$")
        # It waits for the queued job instead of asking for another.
        assert w.proc.poll() is None, w.text()
        assert [j["id"] for j in daemon.jobs_for(k)] == [job["id"]]
        extend = wait_for(lambda: sock.assignments("EXTEND_TIMEOUT_USEC"), 30, "EXTEND_TIMEOUT_USEC")
        assert 0 < int(extend[0]) <= (300 + 30) * 1_000_000

        lck.unlink()                       # the "transaction" ends: nvkmd builds
        assert w.result() == EXIT_OK, w.text()
        assert f"nvkmd-ready: {k}: NVIDIA modules built and installed" in w.text()
        assert re.search(rf"building NVIDIA modules for {re.escape(k)}: \w+ \d+%", w.text()), w.text()
        assert any(s.startswith(f"building {k}: ") for s in sock.assignments("STATUS"))
        assert (root.nvkmd_dir(k) / "nvidia.ko").exists()
    finally:
        sock.close()
    # And now the files say so: the next check never reaches the daemon.
    again = subprocess.run([str(NVKMCTL), "--bus", "unix:path=/nonexistent", "--root", str(root.path),
                            "wait-ready"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "NVKMD_RUNNING_KERNEL": k})
    assert again.returncode == EXIT_OK, again.stdout + again.stderr


def test_failing_build_is_non_zero_with_the_cause_and_log(root, bus, bus_daemon, tmp_path):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    tree = root.add_tiny_source()
    (tree / "kernel-open" / "nvidia" / "nv.c").write_text("this is not C;\n")
    daemon = bus_daemon(root, bus, env={"NVKMD_RUNNING_KERNEL": k})
    first = daemon.wait_job(k, "failed")
    # Nothing is queued now: wait-ready asks for a build and follows it.
    w = WaitReady(tmp_path, root.path, bus.address, "--timeout", "300",
                  env={"NVKMD_RUNNING_KERNEL": k})
    assert w.result() == EXIT_FAILED, w.text()
    m = re.search(rf"asked nvkmd to build {re.escape(k)} \(job (\d+)\)", w.text())
    assert m and int(m.group(1)) != first["id"], w.text()
    last = w.text().strip().splitlines()[-1]
    assert last.startswith(f"nvkmd-ready: {k}: NVIDIA module build failed: "), w.text()
    log = re.search(r"\(log: (\S+)\)$", last)
    assert log and Path(log.group(1)).is_file(), last
    assert "this is not C" in Path(log.group(1)).read_text()
    # The log's first error is on the line too, not just the cause.
    assert "nv.c:1:1: error: unknown type name" in last, last


def test_timeout_is_non_zero_and_leaves_the_build_queued(root, bus, bus_daemon, tmp_path):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    pacman_lock(root)
    daemon = bus_daemon(root, bus, env={"NVKMD_RUNNING_KERNEL": k})
    job = daemon.wait_job(k, "queued")
    w = WaitReady(tmp_path, root.path, bus.address, "--timeout", "3",
                  env={"NVKMD_RUNNING_KERNEL": k})
    assert w.result(60) == EXIT_TIMEOUT, w.text()
    assert re.search(rf"nvkmd-ready: {re.escape(k)}: timed out waiting for nvkmd's build "
                     rf"\(queued, job {job['id']}\); it goes on in the background", w.text()), w.text()
    assert daemon.jobs_for(k)[-1]["state"] == "queued"


def test_daemon_down_is_a_clear_line_within_the_timeout(root, bus, tmp_path):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    w = WaitReady(tmp_path, root.path, bus.address, "--timeout", "4",
                  env={"NVKMD_RUNNING_KERNEL": k})
    # Bounded by the test's own deadline, not asserted as a duration: the
    # check must give up by itself (4 s), far below this.
    assert w.result(60) == EXIT_UNREACHABLE, w.text()
    lines = [line for line in w.text().splitlines() if "not reachable" in line]
    assert len(lines) == 1 and "nvkmd is not running (nothing owns io.github.nvkmd" in lines[0], w.text()
    assert "Traceback" not in w.text()


def test_daemon_restart_while_waiting_is_survived(root, bus, bus_daemon, tmp_path):
    """nvkmd crashes and systemd restarts it: wait-ready reconnects and
    keeps following the (re-queued) job."""
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    lck = pacman_lock(root)
    daemon = bus_daemon(root, bus, env={"NVKMD_RUNNING_KERNEL": k})
    job = daemon.wait_job(k, "queued")
    w = WaitReady(tmp_path, root.path, bus.address, "--timeout", "300",
                  env={"NVKMD_RUNNING_KERNEL": k})
    w.wait_line(rf"nvkmd's job {job['id']} for {re.escape(k)} is queued")
    daemon.kill9()
    w.wait_line(r"nvkmd is not answering .*; waiting for it$")
    daemon.start().wait_on_bus()
    lck.unlink()
    assert w.result() == EXIT_OK, w.text()
    assert f"nvkmd-ready: {k}: NVIDIA modules built and installed" in w.text()


def test_module_files_gone_behind_the_daemons_back_are_rebuilt_not_called_ready(
        root, bus, bus_daemon, tmp_path):
    # inotify on <modules>/<K> only follows build/source links, so a module
    # deleted by hand goes unseen until a rescan: the daemon still says
    # "ready".  wait-ready, whose files said otherwise, must not believe it.
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    daemon = bus_daemon(root, bus, env={"NVKMD_RUNNING_KERNEL": k})
    first = daemon.wait_job(k, "succeeded")
    for ko in root.nvkmd_dir(k).glob("*.ko"):
        ko.unlink()
    w = WaitReady(tmp_path, root.path, bus.address, "--timeout", "300",
                  env={"NVKMD_RUNNING_KERNEL": k})
    assert w.result() == EXIT_OK, w.text()
    assert (root.nvkmd_dir(k) / "nvidia.ko").exists(), w.text()
    assert any(j["id"] != first["id"] and j["state"] == "succeeded" for j in daemon.jobs_for(k))
