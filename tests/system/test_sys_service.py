"""The installed service, as systemd and a user see it: READY and its
status, the sandbox's score, the system bus with real polkitd, D-Bus
activation, nvkmd-ready.service, a bad config file.

One container for the module; the tests run in file order and each leaves
the service running with the tiny source configured.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from sysimage import GOOD, USER
from sysnvkmd import (CONFIG, TINY_CONFIG, TINY_INSIDE, assert_depmod_current, build,
                      close_gate, jobs, kernel, module_files, open_gate, running_kernel_dropin,
                      status, use_tiny_source, wait_gated, wait_job, wait_kernel_ready)

pytestmark = pytest.mark.system

BUS_CALL = "busctl call io.github.nvkmd /io/github/nvkmd io.github.nvkmd.Manager1"


def test_installed_service_is_ready_and_its_status_counts_kernels(installed):
    c = installed
    p = c.show("nvkmd", "Type", "ActiveState", "SubState", "StatusText", "UnitFileState")
    # Type=notify: systemd reports "active" only after READY=1 arrived.
    assert (p["Type"], p["ActiveState"], p["SubState"]) == ("notify", "active", "running"), p
    assert p["UnitFileState"] == "enabled", p
    # The postinst's start went through (deb-systemd-invoke says so when not).
    assert "Could not execute systemctl" not in c.install_output, c.install_output
    # No source yet: GOOD has headers but nothing to build from.
    assert p["StatusText"] == "idle: 0 kernels ready of 1", p

    use_tiny_source(c)
    wait_kernel_ready(c, GOOD)
    c.wait("systemctl show -p StatusText --value nvkmd", 30, "the status text to count the build",
           ok=lambda r: r.stdout.strip() == "idle: 1 kernel ready")
    assert "nvidia.ko" in module_files(c, GOOD)
    assert_depmod_current(c, GOOD)
    # journald has the build as this kernel's events, as fields.
    r = c.run(f"journalctl -u nvkmd -o json --no-pager NVKMD_KERNEL={GOOD}")
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert {e["NVKMD_KERNEL"] for e in events} == {GOOD}
    assert [e.get("NVKMD_RESULT") for e in events if e.get("NVKMD_EVENT") == "build finished"] == ["success"]


def test_sandbox_exposure_is_at_most_2(installed):
    r = installed.run("systemd-analyze security --no-pager nvkmd.service")
    m = re.search(r"Overall exposure level for nvkmd\.service: (\d+\.\d+)", r.stdout)
    assert m, r.out
    print(f"systemd-analyze security nvkmd.service: {m.group(1)}")
    assert float(m.group(1)) <= 2.0, r.stdout


def test_a_user_reads_status_over_the_system_bus_but_polkit_refuses_their_build(installed):
    c = installed
    r = c.run("nvkmctl status", user=USER)
    assert GOOD in r.stdout, r.out
    s = c.run("nvkmctl status --json", user=USER)
    assert '"state": "ready"' in s.stdout

    before = [j["id"] for j in jobs(c)]
    refused = c.run(f"nvkmctl build -k {GOOD} --force", user=USER, check=False)
    assert refused.returncode == 4, refused.out
    assert "not authorized" in refused.stderr.lower() or "denied" in refused.stderr.lower(), refused.out
    assert [j["id"] for j in jobs(c)] == before, "a refused build must queue nothing"
    # The refusal came from polkitd itself, which the call started.
    assert c.run("systemctl is-active polkit").stdout.strip() == "active"

    job_id = build(c, GOOD)
    assert job_id not in before
    assert wait_job(c, job_id, ("succeeded", "failed"))["state"] == "succeeded"


def test_a_plain_busctl_call_starts_the_stopped_service(installed):
    c = installed
    old_pid = c.show("nvkmd", "MainPID")["MainPID"]
    c.run("systemctl stop nvkmd")
    assert c.run("systemctl is-active nvkmd", check=False).stdout.strip() == "inactive"
    r = c.run(f"{BUS_CALL} GetStatus", user=USER, timeout=60)
    assert r.stdout.startswith("a{sv}"), r.out
    p = c.show("nvkmd", "ActiveState", "MainPID")
    assert p["ActiveState"] == "active" and p["MainPID"] not in ("0", old_pid), p
    # Activation came from the bus, not from anything else starting it.
    assert "Activating via systemd: service name='io.github.nvkmd'" in \
        c.journal("-u", "dbus", "--since", "-5min", lines=50)


def test_ready_unit_is_ordered_before_logins_and_returns_at_once_when_healthy(installed):
    c = installed
    # (The drop-ins' daemon-reload also loads the unit's inverse ordering,
    # as the next boot would.)
    running_kernel_dropin(c, "nvkmd-ready.service")
    running_kernel_dropin(c, "nvkmd.service")
    before = c.show("nvkmd-ready", "Before", "After", "Wants")
    assert {"display-manager.service", "systemd-user-sessions.service"} <= set(before["Before"].split())
    assert "nvkmd.service" in before["After"].split() and "nvkmd.service" in before["Wants"].split()
    # The other side sees the same order, so a real display manager waits.
    assert "nvkmd-ready.service" in c.show("systemd-user-sessions", "After")["After"].split()

    c.run("systemctl restart nvkmd")
    wait_kernel_ready(c, GOOD)
    n_jobs = len(jobs(c))
    t = time.monotonic()
    c.run("systemctl restart nvkmd-ready", timeout=60)
    took = time.monotonic() - t
    print(f"nvkmd-ready.service on a healthy system: {took:.2f}s")
    assert c.show("nvkmd-ready", "ActiveState", "Result") == {"ActiveState": "active", "Result": "success"}
    assert len(jobs(c)) == n_jobs, "a healthy system needs no build"
    assert took < 10, f"nvkmd-ready took {took:.1f}s although the module was there"


def test_ready_unit_waits_for_the_build_when_the_module_is_missing(installed):
    c = installed
    close_gate(c)
    try:
        # As at a boot into a kernel whose module is gone: nvkmd starts
        # with nvkmd-ready (Wants=), finds it missing and builds; the gate
        # holds that build in conftest.
        c.run("systemctl stop nvkmd-ready nvkmd")
        c.run(f"rm -r /lib/modules/{GOOD}/updates/nvkmd && depmod {GOOD}")
        c.run("systemctl start --no-block nvkmd-ready")
        c.wait("nvkmctl jobs --json", 60, "wait-ready to queue a build",
                        ok=lambda r: r.returncode == 0 and '"running"' in r.stdout)
        running = [j for j in jobs(c) if j["state"] == "running"]
        assert len(running) == 1 and running[0]["kernel"] == GOOD, running
        job_id = running[0]["id"]
        wait_gated(c, job_id)
        assert c.show("nvkmd-ready", "ActiveState")["ActiveState"] == "activating"
    finally:
        open_gate(c)
    c.wait("systemctl show -p ActiveState --value nvkmd-ready", 120, "nvkmd-ready to finish",
           ok=lambda r: r.stdout.strip() != "activating")
    assert c.show("nvkmd-ready", "ActiveState", "Result") == {"ActiveState": "active", "Result": "success"}
    assert wait_job(c, job_id, ("succeeded", "failed"))["state"] == "succeeded"
    assert "nvidia.ko" in module_files(c, GOOD)
    assert_depmod_current(c, GOOD)


def test_bad_config_reload_keeps_old_settings_and_restart_fails_with_78_once(installed):
    c = installed
    pid = c.show("nvkmd", "MainPID")["MainPID"]
    # A new source path and a bad value: nothing of it may be applied.
    c.path(CONFIG).write_text(TINY_CONFIG.replace(TINY_INSIDE, "/usr/src/elsewhere")
                              .replace("cache_keep = 0", "cache_keep = \"x\""))
    c.run("systemctl reload nvkmd")
    # SIGHUP handled: still the same process, still serving, old source.
    p = c.show("nvkmd", "ActiveState", "MainPID")
    assert p == {"ActiveState": "active", "MainPID": pid}, p
    assert status(c)["source"]["path"] == TINY_INSIDE
    assert kernel(status(c), GOOD)["state"] == "ready"

    c.path(CONFIG).write_text(TINY_CONFIG.replace("cache_keep = 0", "cache_keep = \"x\""))
    r = c.run("systemctl restart nvkmd", check=False, timeout=60)
    assert r.returncode != 0
    p = c.show("nvkmd", "ActiveState", "Result", "ExecMainStatus", "NRestarts")
    # "failed", not "activating (auto-restart)": RestartPreventExitStatus=78 held.
    assert p == {"ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "78",
                 "NRestarts": "0"}, p
    err = c.journal("-u", "nvkmd", "-p", "err", "-b", lines=20)
    assert "cache_keep" in err, err

    c.path(CONFIG).write_text(TINY_CONFIG)
    c.run("systemctl restart nvkmd")
    wait_kernel_ready(c, GOOD)
