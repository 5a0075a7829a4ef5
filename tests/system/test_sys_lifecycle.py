"""The package's life: an upgrade to the next version, then a purge.

One container, in file order: install, build, upgrade (with a build in
flight), purge.
"""

from __future__ import annotations

import shutil

import pytest

from sysdeb import deb_version
from sysimage import GOOD
from sysnvkmd import (CONFIG, TINY_CONFIG, apt, assert_depmod_current, build, close_gate, job,
                      jobs, module_files, modules_dep, open_gate, use_tiny_source, wait_gated,
                      wait_job, wait_kernel_ready)

pytestmark = pytest.mark.system

# What nvkmd or its maintainer scripts create outside the package's file list.
STATE = ["/etc/nvkmd", "/var/lib/nvkmd", "/var/cache/nvkmd", "/var/log/nvkmd",
         f"/lib/modules/{GOOD}/updates/nvkmd",
         "/etc/systemd/system/multi-user.target.wants/nvkmd.service",
         "/etc/systemd/system/multi-user.target.wants/nvkmd-ready.service",
         "/etc/systemd/system/dbus-io.github.nvkmd.service",
         "/etc/systemd/user/graphical-session.target.wants/nvkmd-agent.service",
         "/var/lib/systemd/deb-systemd-helper-enabled/nvkmd.service.dsh-also",
         "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/nvkmd.service"]


def test_upgrade_restarts_the_service_and_keeps_queue_and_history(installed, nvkmd_deb, next_deb):
    c = installed
    use_tiny_source(c)
    wait_kernel_ready(c, GOOD)
    history = [j for j in jobs(c) if j["state"] == "succeeded"]
    assert history, jobs(c)
    close_gate(c)
    try:
        in_flight = build(c, GOOD)
        wait_gated(c, in_flight)
        old = c.show("nvkmd", "MainPID", "ExecMainStartTimestampMonotonic")
        shutil.copy2(next_deb, c.path(f"/root/{next_deb.name}"))
        # Keep the edited conffile without a prompt, as unattended-upgrades
        # does, should the next version ship a changed one.
        apt(c, f"install -o Dpkg::Options::=--force-confold /root/{next_deb.name}")
        assert c.run("dpkg-query -W -f '${Version}' nvkmd").stdout == deb_version(next_deb)
        assert deb_version(next_deb) != deb_version(nvkmd_deb)
        new = c.show("nvkmd", "MainPID", "ExecMainStartTimestampMonotonic", "ActiveState")
        assert new["ActiveState"] == "active" and new["MainPID"] != old["MainPID"], (old, new)
        assert int(new["ExecMainStartTimestampMonotonic"]) > int(old["ExecMainStartTimestampMonotonic"])
        # The user's configuration survived the upgrade untouched.
        assert c.path(CONFIG).read_text() == TINY_CONFIG
        # The interrupted build is the same job, running again in the new daemon.
        wait_gated(c, in_flight)
        for h in history:
            assert job(c, h["id"]) == h, "a finished job changed across the upgrade"
    finally:
        open_gate(c)
    assert wait_job(c, in_flight, ("succeeded", "failed", "cancelled"))["state"] == "succeeded"
    assert "nvidia.ko" in module_files(c, GOOD)
    assert_depmod_current(c, GOOD)


def test_purge_leaves_no_nvkmd_file(installed):
    c = installed
    listed = c.run("dpkg -L nvkmd").stdout.split()
    files = [p for p in listed if not c.path(p).is_dir() or "nvkmd" in p]
    before = [p for p in files + STATE if c.path(p).exists() or c.path(p).is_symlink()]
    assert f"/lib/modules/{GOOD}/updates/nvkmd" in before and "/var/lib/nvkmd" in before
    assert "updates/nvkmd/nvidia.ko" in modules_dep(c, GOOD)

    apt(c, "purge nvkmd")
    left = [p for p in files + STATE if c.path(p).exists() or c.path(p).is_symlink()]
    print(f"\npurge: checked {len(files)} packaged paths and {len(STATE)} state paths; "
          f"{len(before)} existed before, {len(left)} after")
    assert left == [], left
    assert c.run("dpkg-query -W -f '${Status}' nvkmd", check=False).stdout in ("", "unknown ok not-installed")
    # Nothing named after nvkmd anywhere on the system but the .debs we copied in.
    found = c.run("find / -xdev \\( -path /proc -o -path /sys -o -path /root \\) -prune "
                  "-o -name '*nvkmd*' -print").stdout.split()
    assert found == [], found
    assert "nvkmd" not in modules_dep(c, GOOD)
    assert c.run("systemctl is-active nvkmd", check=False).stdout.strip() in ("inactive", "unknown")
