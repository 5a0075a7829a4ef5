"""The shutdown inhibitor: while the daemon swaps modules in (and while it
rewrites an initramfs) it holds a logind "delay" lock on shutdown, taken
from the real systemd-logind on the daemon's (private) bus."""

from __future__ import annotations

import os

from helpers import need_kernels, wait_for

WHY = "installing NVIDIA kernel modules"


def test_install_holds_a_delay_inhibitor_from_real_logind(root, logind_bus, bus_daemon):
    bus, logind = logind_bus
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    # The initramfs command stops inside the window until the test opens the gate.
    gate, entered = root.path / "gate", root.path / "entered"
    os.mkfifo(gate)
    root.configure(root.config_text + "[install]\ninitramfs = "
                   f"\"sh -c 'echo {{kernel}} > {entered}; cat {gate} > /dev/null'\"\n")
    assert logind.inhibitors() == []
    daemon = bus_daemon(root, bus, env={"NVKMD_RUNNING_KERNEL": k})
    wait_for(entered.exists, 120, "the build to reach the initramfs step")

    held = logind.inhibitors()
    assert [(w, who, why, mode, uid, pid) for w, who, why, mode, uid, pid in held] == \
        [("shutdown", "nvkmd", WHY, "delay", 0, daemon.pid)], held
    with open(gate, "w") as g:
        g.write("go\n")
    daemon.wait_job(k, "succeeded")
    wait_for(lambda: logind.inhibitors() == [], 30, "the inhibitor to be released")
    # Taken and released twice: around the module swap and depmod, then
    # around the initramfs step.  The first is too short to catch in
    # logind's list; the daemon's log is the record of both.
    log = daemon.log_text(True)
    assert log.count("shutdown inhibitor taken") == 2, log
    assert log.count("shutdown inhibitor released") == 2, log
    assert daemon.stop() == 0


def test_without_logind_the_build_proceeds_and_says_so_once(root, bus, bus_daemon):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    daemon = bus_daemon(root, bus, env={"NVKMD_RUNNING_KERNEL": k})
    daemon.wait_job(k, "succeeded")
    assert (root.nvkmd_dir(k) / "nvidia.ko").exists()
    log = daemon.log_text(True)
    assert log.count("no logind: module installs will not delay shutdown") == 1, log
    assert "org.freedesktop.login1 is not on the bus" in log
    assert "shutdown inhibitor taken" not in log
