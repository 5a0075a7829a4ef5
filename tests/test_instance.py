"""One daemon per root (issue 12): the second one exits at once naming the
first, before it kills or builds anything; the orphan sweep kills only the
builds nvkmd recorded, never a shell that happens to be in the cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from helpers import REPO, need_kernels, run_nvkmd, wait_for


def _slow_build(root, tag: str) -> None:
    """The tiny tree, with a conftest that sleeps until the file ``go`` appears."""
    tree = root.add_tiny_source()
    conftest = tree / "kernel-open" / "conftest.sh"
    go = root.path.parent / "go"
    conftest.write_text(f"#!/bin/sh\n# {tag}\nwhile [ ! -e {go} ]; do sleep 0.1; done\n"
                        + conftest.read_text().split("\n", 1)[1])


def test_a_second_daemon_exits_at_once_and_the_first_one_s_build_finishes(root, nvkmd_daemon):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    _slow_build(root, "slow-build-1")
    first = nvkmd_daemon(root)
    first.wait_ready()
    job = first.wait_job(k, "running", timeout=60)
    started = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "nvkmd.daemon", "--root", str(root.path),
                             "--bus", "none"], capture_output=True, text=True, timeout=60,
                            cwd=REPO, stdin=subprocess.DEVNULL)
    assert time.monotonic() - started < 20
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"another nvkmd (pid {first.pid}) is already running" in lines[0], \
        second.stderr
    (root.path.parent / "go").touch()
    done = first.wait_job(k, "succeeded", timeout=120)
    assert done["id"] == job["id"] and done["attempts"] == 1
    assert first.alive()


def test_the_sweep_kills_recorded_builds_only(root, nvkmd_daemon):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    _slow_build(root, "slow-build-3")
    d = nvkmd_daemon(root)
    d.wait_ready()
    d.wait_job(k, "running", timeout=60)

    def conftest_pids() -> list[int]:
        out = []
        for p in os.listdir("/proc"):
            try:
                cmd = open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if "conftest.sh" in cmd and str(root.path) in cmd:
                out.append(int(p))
        return out
    wait_for(conftest_pids, 60, "the build's conftest")
    build = root.path / "var/lib/nvkmd/cache/build"
    # An administrator's shell, cd'd into the cache, in a session of its own.
    shell = subprocess.Popen(["setsid", "sh", "-c", "sleep 8675309.5"], cwd=build,
                             stdin=subprocess.DEVNULL)
    d.kill9()                                 # the build lives on, outside systemd
    assert conftest_pids()
    d.start()
    d.wait_ready()
    d.wait_log(r"killing a build left over by a previous nvkmd")
    wait_for(lambda: not conftest_pids(), 30, "the old build to be gone")
    assert shell.poll() is None, "the admin's shell was killed"
    (root.path.parent / "go").touch()
    d.wait_job(k, "succeeded", timeout=120)
    shell.send_signal(signal.SIGKILL)
    shell.wait()


def test_a_malformed_bus_is_refused_before_anything_else(root):
    state = root.path / "var/lib/nvkmd"
    proc = run_nvkmd("--root", str(root.path), "--bus", "tcp-nonsense", timeout=30)
    assert proc.returncode == 2 and "--bus must be system, session or a D-Bus address" in proc.stderr
    assert not state.exists()
