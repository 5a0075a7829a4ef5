"""Bad data in, daemon stays up (issue 12): a corrupt queue database, a
stray directory under /lib/modules, a full state directory, symlinks out
of the root."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.processes import pids_with
from helpers import REPO, need_kernels, run_nvkmd
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.install.modules import InstallError, install
from nvkmd.jobs.store import JobStore
from nvkmd.paths import Paths
from nvkmd.system.kernels import Kernel, list_kernels

STRAY = "6.1.0-47-amd64..evil"


def _state(root) -> Path:
    return root.path / "var" / "lib" / "nvkmd"


@pytest.mark.parametrize("damage", ["random bytes", "a directory"])
def test_a_corrupt_database_is_moved_aside_and_the_queue_rebuilt(root, nvkmd_daemon, damage):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    db = _state(root) / "nvkmd.sqlite3"
    db.parent.mkdir(parents=True)
    if damage == "random bytes":
        junk = os.urandom(64 * 1024)
        db.write_bytes(junk)
    else:
        db.mkdir()
        (db / "something").write_text("x")
    d = nvkmd_daemon(root)
    d.wait_ready()          # the test reads the database: only once it is a database
    job = d.wait_job(k, "succeeded", timeout=180)
    assert job["reason"]                      # queued by the full rescan, not by hand
    aside = sorted(_state(root).glob("nvkmd.sqlite3.corrupt-*"))
    assert len(aside) == 1
    if damage == "random bytes":
        assert aside[0].read_bytes() == junk
    else:
        assert (aside[0] / "something").read_text() == "x"
    d.wait_log(r"job database unusable; moved aside")
    assert d.alive()


def test_the_store_keeps_a_database_it_cannot_judge(tmp_path):
    """Moved aside only when the content is bad: a newer schema is an error."""
    db = tmp_path / "nvkmd.sqlite3"
    s = JobStore(db)
    s.db.execute("PRAGMA user_version=99")
    s.close()
    with pytest.raises(NvkmdError, match="written by a newer nvkmd"):
        JobStore(db)
    assert db.exists() and not list(tmp_path.glob("*.corrupt-*"))



def test_a_full_state_dir_is_reported_with_its_cause(tmp_path, tiny_tmpfs):
    state = tiny_tmpfs(tmp_path / "state")
    store = JobStore(state / "nvkmd.sqlite3")
    subprocess.run(["dd", "if=/dev/zero", f"of={state}/filler", "bs=4k"], capture_output=True)
    with pytest.raises(NvkmdError) as e:
        for i in range(2000):
            store.enqueue(f"6.1.0-{i}-amd64", "9.9.1", reason="x" * 2000)
    assert e.value.code is ErrorCode.DISK_FULL
    assert f"the state directory {state} is full" in e.value.message
    assert not list(state.glob("*.corrupt-*"))


# -- a stray directory under /lib/modules ------------------------------------------

def test_a_stray_kernel_dir_is_skipped_by_once(root):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    (root.modules / STRAY).mkdir()
    root.add_tiny_source()
    proc = run_nvkmd("--once", "--root", str(root.path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{k}: success" in proc.stdout
    assert STRAY not in proc.stdout


def test_the_daemon_keeps_building_with_a_stray_kernel_dir(root, nvkmd_daemon):
    old, new = need_kernels(2)[-2:]
    root.add_kernel(old)
    (root.modules / STRAY).mkdir()
    (root.modules / STRAY / "kernel").mkdir()
    root.add_tiny_source()
    d = nvkmd_daemon(root)
    d.wait_ready()
    first = d.wait_job(old, "succeeded", timeout=180)
    # A while with it present: every reload is a full rescan (the start made one).
    for i in range(3):
        d.signal(signal.SIGHUP)
        d.wait_log(r"event='full rescan'", count=i + 2)
    root.add_kernel(new)
    d.wait_job(new, "succeeded", timeout=180, after=first["id"])
    text = d.log_text()
    assert text.count("skipping a directory in the modules directory") == 1, text
    assert STRAY in text and "not a kernel release name" in text
    assert d.alive()


# -- symlinks out of the root ----------------------------------------------------------

def test_a_kernel_dir_linked_out_of_the_root_is_not_a_kernel(root, tmp_path):
    k = need_kernels(1)[-1]
    elsewhere = tmp_path / "elsewhere" / k
    elsewhere.mkdir(parents=True)
    (elsewhere / "kernel").mkdir()
    (root.modules / k).symlink_to(elsewhere)
    root.add_kernel("6.1.0-1-amd64", headers=False)
    (root.modules / "6.1.0-1-amd64" / "kernel").mkdir()
    paths = Paths.build(root.path)
    assert [x.release for x in list_kernels(paths)] == ["6.1.0-1-amd64"]


def test_updates_linked_out_of_the_kernel_dir_is_refused(root, tmp_path):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root.modules / k / "updates").symlink_to(outside)
    built = tmp_path / "built"
    built.mkdir()
    with pytest.raises(InstallError, match=f"updates is a symlink to {outside}, outside"):
        install(Kernel(Paths.build(root.path), k), built, {})
    assert list(outside.iterdir()) == []


# -- a build's descendants that start a session of their own ----------------------------



@pytest.mark.parametrize("how", ["timeout", "success"])
def test_setsid_descendants_do_not_outlive_the_build(root, how):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    tree = root.add_tiny_source()
    tag = "8675309.75" if how == "timeout" else "8675309.76"
    # A recipe that leaves a sleeper in a session of its own, detached from
    # make's output, and (for the timeout) then hangs itself.
    conftest = tree / "kernel-open" / "conftest.sh"
    rest = f"exec sleep {tag}\n" if how == "timeout" else conftest.read_text()
    conftest.write_text(f"#!/bin/sh\nsetsid sleep {tag} </dev/null >/dev/null 2>&1 &\n" + rest)
    root.configure(root.config_text + "[build]\ntimeout_s = 6\n")
    try:
        proc = run_nvkmd("--once", "--root", str(root.path))
        if how == "timeout":
            assert proc.returncode == 1 and f"{k}: failed: the build timed out" in proc.stdout
        else:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        assert pids_with(tag) == []
    finally:
        for pid in pids_with(tag):
            os.kill(pid, signal.SIGKILL)


# -- a build log has a size cap ------------------------------------------------------------

def test_a_noisy_build_log_is_capped_and_its_first_error_still_found(root):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    tree = root.add_tiny_source()
    (tree / "kernel-open" / "conftest.sh").write_text(
        "#!/bin/sh\necho 'conftest.c:1:1: error: the first problem'\n"
        "yes 'noise noise noise noise noise noise noise noise' | head -c 3000000\n"
        "echo 'the very last line'\nexit 1\n")
    root.configure(root.config_text + "[logs]\nmax_mib = 1\n")
    proc = run_nvkmd("--once", "--root", str(root.path))
    assert proc.returncode == 1
    assert "error: conftest.c:1:1: error: the first problem" in proc.stdout, proc.stdout
    log = root.path / "var/log/nvkmd" / k / "latest.log"
    assert log.stat().st_size < (1 << 20) + 64 * 1024
    text = log.read_text()
    assert "nvkmd: log truncated at 1 MiB (logs.max_mib)" in text
    assert "the very last line" in text and "# result: failed" in text


# -- a job resumed after a restart says so ------------------------------------------------

def test_a_resumed_job_says_resumed_not_forced(tmp_path):
    from nvkmd.cli.render import job_line
    store = JobStore(tmp_path / "nvkmd.sqlite3")
    job, _ = store.enqueue("6.1.0-47-amd64", "9.9.1", reason="kernel added: 6.1.0-47-amd64")
    store.start(job.id)
    store.close()
    store = JobStore(tmp_path / "nvkmd.sqlite3")      # the daemon died while it ran
    assert store.recover() == ([job.id], [])
    again = store.get(job.id)
    assert again.force and again.reason == "resumed after a restart"   # the install is redone
    line = job_line(again)
    assert "(resumed after a restart)" in line and "forced" not in line
    forced, _ = store.enqueue("6.1.0-56-amd64", "9.9.1", force=True, reason="requested")
    assert "(forced)" in job_line(store.get(forced.id))


def test_fix_with_a_stray_kernel_dir_does_its_work(root):
    k = need_kernels(1)[-1]
    root.add_kernel(k, headers=False)
    (root.modules / k / "kernel").mkdir()
    (root.modules / STRAY).mkdir()
    proc = subprocess.run([sys.executable, "-m", "nvkmd.cli", "--bus", "unix:path=/nonexistent",
                           "--root", str(root.path), "fix"], capture_output=True, text=True,
                          timeout=120, cwd=REPO, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nvkmctl: not a kernel release" not in proc.stdout + proc.stderr


def test_a_build_asked_over_dbus_on_a_full_state_dir_says_so_and_loses_nothing(
        root, bus, bus_daemon, tiny_tmpfs):
    """The queue's disk is full: Build is refused with DiskFull naming the
    state directory, the daemon goes on, and once there is room again the
    same call queues and builds."""
    from dbus_helpers import raw_call
    from nvkmd import api
    k = need_kernels(1)[-1]
    state = tiny_tmpfs(_state(root), size="2m")
    root.add_tiny_source()
    root.configure(root.config_text + "[build]\ncache_keep = 0\n")
    root.add_kernel(k)
    d = bus_daemon(root, bus)
    first = d.wait_job(k, "succeeded")
    subprocess.run(["dd", "if=/dev/zero", f"of={state}/filler", "bs=4k"], capture_output=True)
    refused = None
    for _ in range(200):          # until sqlite needs a page it cannot have
        r = raw_call(bus.address, "Build", "sb", [k, True])
        if r.error_name is not None:
            refused = r
            break
    assert refused is not None, "200 forced builds queued on a full disk"
    assert refused.error_name == api.error_name(ErrorCode.DISK_FULL), refused.body
    assert f"the state directory {state} is full" in refused.body[0]
    assert d.alive() and d.kernel(k) is not None
    (state / "filler").unlink()
    again = raw_call(bus.address, "Build", "sb", [k, True])
    assert again.error_name is None, again.body
    d.wait_job(k, "succeeded", after=first["id"])
    assert d.stop() == 0
