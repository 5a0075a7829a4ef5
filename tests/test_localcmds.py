"""nvkmctl source / fix / status end to end: the real CLI, a real git
checkout, and the real daemon on a private bus for the builds it queues."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import REPO, need_kernels, wait_for
from nvkmd.system.modinfo import modinfo
from realdkms import git, make_repo

NO_BUS = "unix:path=/nonexistent/nvkmd-test-bus"


def nvkmctl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "nvkmd.cli", *args], capture_output=True,
                          text=True, cwd=REPO, env=e, stdin=subprocess.DEVNULL, timeout=300)


def checkout(root):
    repo = make_repo(root.path / "srv/open-gpu-kernel-modules", checkout="9.9.1")
    root.configure('[source]\npath = "/srv/open-gpu-kernel-modules"\n'
                   "[daemon]\ndebounce_s = 0.2\n[build]\ncache_keep = 0\n")
    return repo


def test_source_commands_and_fix_without_a_daemon(root):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    repo = checkout(root)
    r = str(root.path)
    init = nvkmctl("--root", r, "source", "init", str(repo))
    assert init.returncode == 0, init.stderr
    assert "Driver Version:  9.9.1" in init.stdout
    assert (root.path / "usr/src/nvidia-9.9.1").resolve() == repo / "kernel-open"

    st = nvkmctl("--root", r, "source", "status", "--json")
    assert st.returncode == 0, st.stderr
    d = json.loads(st.stdout)
    assert (d["kind"], d["current_tag"], d["latest_tag"], d["version"]) == ("git", "9.9.1", "9.9.2", "9.9.1")

    # update: the checkout moves even though no daemon can take the builds
    up = nvkmctl("--root", r, "--bus", NO_BUS, "source", "update")
    assert up.returncode == 3, up.stdout + up.stderr
    assert "Updated" in up.stdout and "9.9.1 -> 9.9.2" in up.stdout
    assert "builds not queued" in up.stderr and "nvkmd --once" in up.stderr
    assert git(repo, "describe", "--tags", "--exact-match") == "9.9.2"

    # fix without a daemon builds here, as a person would
    fx = nvkmctl("--root", r, "--bus", NO_BUS, "fix")
    assert fx.returncode == 0, fx.stderr
    assert f"{k}: rebuild (no nvidia module): built here (the daemon is unreachable): success" \
        in fx.stdout
    assert modinfo(root.nvkmd_dir(k) / "nvidia.ko")["version"] == "9.9.2"
    assert nvkmctl("--root", r, "fix", "--dry-run").stdout.strip() == "nothing to fix"

    bad = nvkmctl("--root", r, "source", "init", str(root.path / "srv"))
    assert bad.returncode == 1 and bad.stderr.startswith("nvkmctl: ") \
        and "not an open-gpu-kernel-modules clone" in bad.stderr and "Traceback" not in bad.stderr


def test_update_queues_through_the_daemon_and_status_shows_origin_and_versions(root, bus,
                                                                               bus_daemon):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    repo = checkout(root)
    assert nvkmctl("--root", str(root.path), "source", "init", str(repo)).returncode == 0
    bus_daemon(root, bus, env={"NVKMD_RUNNING_KERNEL": k})
    a = bus.address

    def status() -> dict:
        s = nvkmctl("--bus", a, "status", "--json")
        assert s.returncode == 0, s.stderr
        return json.loads(s.stdout)
    wait_for(lambda: status()["kernels"][0]["state"] == "ready", 120, "the first build")

    up = nvkmctl("--root", str(root.path), "--bus", a, "source", "update")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "Queued 1 build(s)" in up.stdout

    def rebuilt():
        ks = status()["kernels"]
        return ks[0]["state"] == "ready" and ks[0]["module_version"] == "9.9.2"
    wait_for(rebuilt, 120, "the daemon to rebuild 9.9.2")
    d = status()
    assert d["source"]["version"] == "9.9.2"
    assert d["kernels"][0]["origin"] == "nvkmd"
    wait_for(lambda: status()["driver"]["module_version"] == "9.9.2", 30, "the driver report")
    d = status()["driver"]
    assert (d["kernel"], d["firmware"], d["secure_boot"]) == (k, "missing", "unknown")
    text = nvkmctl("--bus", a, "status").stdout
    assert f"{k} [nvidia: nvkmd 9.9.2" in text
    assert "Module:         9.9.2" in text and "GSP Firmware:   missing" in text
    assert "Secure Boot:    unknown" in text and "Hint:" in text
