"""Each failure gives its own clear cause, through the real engine."""

from __future__ import annotations

import os
import re


from harness.processes import pids_with
from helpers import need_kernels, run_nvkmd


def test_bad_config_is_one_line_and_exit_78(root):
    root.configure('[build]\njobs = "many"\n')
    proc = run_nvkmd("--once", "--root", str(root.path))
    assert proc.returncode == 78
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "build.jobs" in lines[0] and "expected an integer" in lines[0]
    root.configure("[build]\nturbo = true\n")
    proc = run_nvkmd("--once", "--root", str(root.path))
    assert proc.returncode == 78 and "build.turbo: unknown key" in proc.stderr


def test_missing_headers_is_its_own_cause(root):
    k = need_kernels(1)[-1]
    root.add_kernel(k, headers=False)
    root.add_tiny_source()
    proc = run_nvkmd("--once", "--root", str(root.path))
    assert proc.returncode == 1
    assert f"{k}: failed: kernel headers are missing" in proc.stdout
    assert "hint: install the headers package" in proc.stdout
    assert not root.nvkmd_dir(k).exists()


def test_source_writable_by_others_is_refused(root):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    tree = root.add_tiny_source()
    victim = tree / "kernel-open" / "Kbuild"
    victim.chmod(0o666)
    proc = run_nvkmd("--once", "--root", str(root.path))
    assert proc.returncode == 1
    assert re.search(r"refusing source .*Kbuild is writable by everyone", proc.stderr), proc.stderr
    victim.chmod(0o644)
    os.chown(tree / "kernel-open", 65534, 65534)     # owned by nobody
    proc = run_nvkmd("--once", "--root", str(root.path))
    assert proc.returncode == 1 and "owned by uid 65534" in proc.stderr
    assert not root.nvkmd_dir(k).exists()




def test_hung_build_is_killed_at_the_timeout(root):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    tree = root.add_tiny_source()
    tag = "8675309.25"        # a sleep nobody else runs
    (tree / "kernel-open" / "conftest.sh").write_text(f"#!/bin/sh\nexec sleep {tag}\n")
    root.configure(root.config_text + "[build]\ntimeout_s = 4\n")
    proc = run_nvkmd("--once", "--root", str(root.path))
    assert proc.returncode == 1
    assert f"{k}: failed: the build timed out" in proc.stdout
    log = root.path / "var/log/nvkmd" / k / "latest.log"
    assert "nvkmd: build timed out after 4s" in log.read_text()
    assert pids_with(tag) == []          # the whole process group is gone
    assert not root.nvkmd_dir(k).exists()



def test_full_log_dir_is_reported(root, tiny_tmpfs):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    logdir = tiny_tmpfs(root.path / "var/log/nvkmd", fill=True)
    proc = run_nvkmd("--once", "--root", str(root.path))
    assert proc.returncode == 1
    assert f"{k}: failed: out of disk space" in proc.stdout
    assert f"no space left on device for the build log {logdir}/{k}/build-" in proc.stdout
    assert not root.nvkmd_dir(k).exists()


def test_full_cache_dir_is_reported_and_nothing_installed(root, tiny_tmpfs):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    tiny_tmpfs(root.path / "var/lib/nvkmd/cache", fill=True)
    proc = run_nvkmd("--once", "--root", str(root.path))
    assert proc.returncode == 1
    assert f"{k}: failed: out of disk space" in proc.stdout
    log = (root.path / "var/log/nvkmd" / k / "latest.log").read_text()
    assert "nvkmd: no space left: copying the source into" in log
    assert not root.nvkmd_dir(k).exists()
