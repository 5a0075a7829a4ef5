"""The daemon reacting to real filesystem events on a test root: kernels and
headers appearing and vanishing, source upgrades, failures, signals.  The
daemon serves on a private bus, so what it noticed is read from its API
(GetStatus) and its job database, not from its log."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
from pathlib import Path

from daemon_helpers import assert_install_whole, installed_version
from helpers import need_kernels, set_tiny_version, wait_for

FAST = "[daemon]\ndebounce_s = 0.2\n"


def tiny(root, name: str = "nvidia-tiny", version: str | None = None) -> Path:
    tree = root.add_tiny_source(name, version)
    root.configure(root.config_text + FAST)
    return tree


def test_kernel_and_headers_appearing_are_built_and_installed(root, bus, bus_daemon):
    k = need_kernels(1)[-1]
    tiny(root)
    d = bus_daemon(root, bus)
    d.wait_ready()
    assert d.jobs() == []
    root.add_kernel(k, headers=False)
    d.wait_kernel(k, "waiting-for-headers")
    assert d.jobs() == []
    root.link_headers(k)
    job = d.wait_job(k, "succeeded")
    assert job["source_version"] == "9.9.1" and job["result"] == "success"
    assert installed_version(root, k) == "9.9.1"
    assert_install_whole(root, k)
    assert "updates/nvkmd/nvidia-modeset.ko: updates/nvkmd/nvidia.ko" in \
        (root.modules / k / "modules.dep").read_text()
    assert Path(job["log"]).is_file() and "# result: success" in Path(job["log"]).read_text()
    assert job["queued_at"] <= job["started_at"] <= job["finished_at"]
    ready = d.wait_kernel(k, "ready")
    assert ready.module_version == "9.9.1" and ready.origin == "nvkmd"
    assert ready.last_build.log == job["log"] and ready.last_build.result == "success"
    assert len(d.jobs()) == 1
    assert d.stop() == 0


def test_headers_removed_while_queued_drops_the_job(root, bus, bus_daemon):
    k1, k2 = need_kernels(2)[-2:]
    tiny(root)
    # k1 is the running kernel, so it is built first.  The test holds k1's
    # build lock, as a concurrent `nvkmd --once` would: k1's build waits for
    # it, and k2's job stays queued for as long as the test needs.
    locks = root.path / "var" / "lib" / "nvkmd" / "locks"
    locks.mkdir(parents=True)
    fd = os.open(locks / f"{k1}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        d = bus_daemon(root, bus, env={"NVKMD_RUNNING_KERNEL": k1})
        d.wait_ready()
        root.add_kernel(k1)
        root.add_kernel(k2)
        # Only the log tells a build waiting for its lock from one compiling.
        d.wait_log(rf"event='waiting for build lock' kernel='{k1}'")
        d.wait_job(k1, "running")
        queued = d.wait_job(k2, "queued")
        root.unlink_headers(k2)
        dropped = d.wait_job(k2, "cancelled")
        assert dropped["id"] == queued["id"]
        assert dropped["cause"] == "headers removed"
        assert dropped["started_at"] == 0          # it never ran
    finally:
        os.close(fd)
    d.wait_job(k1, "succeeded")
    assert installed_version(root, k1) == "9.9.1"
    assert not root.nvkmd_dir(k2).exists()
    assert [j["state"] for j in d.jobs_for(k2)] == ["cancelled"]
    # Headers back: the kernel is queued again (a drop does not hold back a retry).
    root.link_headers(k2)
    d.wait_job(k2, "succeeded")
    assert installed_version(root, k2) == "9.9.1"
    assert d.stop() == 0


def test_source_version_change_rebuilds_every_kernel(root, bus, bus_daemon):
    k1, k2 = need_kernels(2)[-2:]
    tree = tiny(root)
    root.add_kernel(k1)
    root.add_kernel(k2)
    d = bus_daemon(root, bus)
    d.wait_ready()
    for k in (k1, k2):
        d.wait_job(k, "succeeded", version="9.9.1")
    assert d.status().source.version == "9.9.1"
    set_tiny_version(tree, "9.9.2")
    d.wait_status(lambda s: s.source.version == "9.9.2", "the daemon to see source 9.9.2")
    for k in (k1, k2):
        d.wait_job(k, "succeeded", version="9.9.2")
        assert installed_version(root, k) == "9.9.2"
        assert_install_whole(root, k)
    # One job per (kernel, source version), no more.
    pairs = [(j["kernel"], j["source_version"]) for j in d.jobs()]
    assert sorted(pairs) == sorted({(k, v) for k in (k1, k2) for v in ("9.9.1", "9.9.2")})
    assert d.stop() == 0


def test_failed_build_is_not_retried_until_the_source_changes(root, bus, bus_daemon):
    k = need_kernels(1)[-1]
    tree = tiny(root)
    nv = tree / "kernel-open" / "nvidia" / "nv.c"
    good = nv.read_text()
    nv.write_text(good + "\n#error nvkmd test: broken on purpose\n")
    root.add_kernel(k)
    d = bus_daemon(root, bus)
    d.wait_ready()
    failed = d.wait_job(k, "failed")
    assert failed["cause"] and "broken on purpose" in Path(failed["log"]).read_text()
    assert d.wait_kernel(k, "failed").last_build.log == failed["log"]
    # Other changes make the daemon look again (it lists the new kernel);
    # the same inputs are not rebuilt.
    for i in range(3):
        root.add_kernel(f"9.9.{i}-other", headers=False)
        d.wait_kernel(f"9.9.{i}-other", "waiting-for-headers")
        assert d.kernel(k).state == "failed"
    assert len(d.jobs_for(k)) == 1
    # Nor after a restart.
    assert d.stop() == 0
    d.start()
    d.wait_ready()
    assert len(d.jobs_for(k)) == 1
    # Mending the source changes the build's inputs: built again, and fixed.
    nv.write_text(good)
    ok = d.wait_job(k, "succeeded")
    assert ok["source_version"] == "9.9.1" and ok["id"] != failed["id"]
    assert installed_version(root, k) == "9.9.1"
    assert d.stop() == 0


def test_sighup_reloads_the_config_and_a_bad_one_keeps_the_old(root, bus, bus_daemon):
    k = need_kernels(1)[-1]
    second = root.add_tiny_source("nvidia-tiny-2", version="9.9.7")
    first = tiny(root)
    root.add_kernel(k)
    d = bus_daemon(root, bus)
    d.wait_ready()
    d.wait_job(k, "succeeded", version="9.9.1")

    root.configure('[source]\npath = 12\n')
    d.signal(signal.SIGHUP)
    # What the admin reads in the journal: the key that is wrong.
    d.wait_log(r"event='configuration reload refused; keeping the old one' "
               r"reason='config .*: source\.path: expected .*'")
    assert d.status().source.path.endswith(f"/usr/src/{first.name}")
    # Still running on the old configuration: it follows the old source.
    set_tiny_version(first, "9.9.3")
    d.wait_job(k, "succeeded", version="9.9.3")

    root.configure(f'[source]\npath = "/usr/src/{second.name}"\n' + FAST)
    d.signal(signal.SIGHUP)
    d.wait_status(lambda s: s.source.path.endswith(f"/usr/src/{second.name}"), "the new source path")
    d.wait_job(k, "succeeded", version="9.9.7")
    assert installed_version(root, k) == "9.9.7"
    assert d.stop() == 0


def test_sigusr1_writes_every_threads_stack_and_the_daemon_goes_on(root, bus, bus_daemon):
    k = need_kernels(1)[-1]
    tiny(root)
    root.add_kernel(k)
    d = bus_daemon(root, bus)
    d.wait_ready()
    d.wait_job(k, "succeeded")
    d.signal(signal.SIGUSR1)
    # faulthandler's dump: the event loop's thread, in the daemon's code
    d.wait_log(r"^(Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\):\n"
               r"(  File .*\n)*  File \".*/asyncio/base_events\.py\"")
    assert d.alive() and d.kernel(k).state == "ready"
    assert d.stop() == 0


def _make_under(build_root: Path) -> list[int]:
    """Processes whose working directory is inside nvkmd's build root."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cwd = os.readlink(p / "cwd")
            except OSError:
                continue
            if cwd.startswith(str(build_root) + "/"):
                found.append(int(p.name))
    return found


def test_sigterm_during_a_build_requeues_it_and_a_restart_finishes_it(root, bus, bus_daemon):
    k = need_kernels(1)[-1]
    tiny(root)
    root.add_kernel(k)
    d = bus_daemon(root, bus)
    d.wait_ready()
    running = d.wait_job(k, "running")
    latest = root.path / "var" / "log" / "nvkmd" / k / "latest.log"
    wait_for(lambda: latest.exists() and "  CC [M] " in latest.read_text(), 60, "compiling")
    assert d.stop(timeout=15) == 0
    # Interrupted and queued again, forced so that it is not skipped as seen.
    [job] = d.jobs_for(k)
    assert job["id"] == running["id"] and job["state"] == "queued" and job["force"] == 1
    assert not root.nvkmd_dir(k).exists()
    assert _make_under(root.path / "var" / "lib" / "nvkmd" / "cache" / "build") == []
    d.start()
    done = d.wait_job(k, "succeeded")
    assert done["id"] == running["id"]
    assert installed_version(root, k) == "9.9.1"
    assert_install_whole(root, k)
    assert d.stop() == 0


def test_kernel_removed_and_installed_again_is_built_again(root, bus, bus_daemon):
    k = need_kernels(1)[-1]
    tiny(root)
    root.add_kernel(k)
    d = bus_daemon(root, bus)
    d.wait_ready()
    first = d.wait_job(k, "succeeded")
    # The whole directory goes (a purge, then a cleanup), and the watch on it.
    shutil.rmtree(root.modules / k)
    d.wait_kernel(k, None)
    # Installed again: a new directory of the same name, watched afresh.
    root.add_kernel(k, headers=False)
    d.wait_kernel(k, "waiting-for-headers")
    root.link_headers(k)
    again = d.wait_job(k, "succeeded", timeout=120, after=first["id"])
    assert installed_version(root, k) == "9.9.1"
    assert d.stop() == 0
