"""While the module for the kernel that boots next is being built, the
daemon holds a logind delay lock on shutdown that names the build, taken
from the real systemd-logind on the daemon's private bus."""

from __future__ import annotations

import bootloaders as bl
from helpers import need_kernels, wait_for


def test_the_next_boots_build_holds_a_delay_lock_naming_it(root, logind_bus, bus_daemon):
    bl.need_tools()
    bus, logind = logind_bus
    old, new = need_kernels(2)[-2:]
    for k in (old, new):
        root.add_kernel(k)
    tree = root.add_tiny_source()
    root.configure(root.config_text + "[daemon]\ndebounce_s = 0.2\n")
    bl.grub_root(root.path, [old, new])          # GRUB boots the newest
    gate = root.path / "gate"
    kbuild = tree / "kernel-open" / "Kbuild"
    # The newest kernel's build waits inside make until the test opens the gate.
    kbuild.write_text(kbuild.read_text() + f"ifeq ($(KERNELRELEASE),{new})\n"
                      f"$(shell while [ ! -e {gate} ]; do sleep 0.1; done)\nendif\n")
    daemon = bus_daemon(root, bus, env={"NVKMD_RUNNING_KERNEL": old})
    why = f"building the NVIDIA module for {new}, which boots next"
    held = wait_for(lambda: [i for i in logind.inhibitors() if i[2] == why], 180,
                    "the build's delay lock")
    assert held == [("shutdown", "nvkmd", why, "delay", 0, daemon.pid)]
    nb = daemon.wait_status(lambda s: s.next_boot and s.next_boot.reason == "building",
                            "NextBoot: building").next_boot
    assert nb.kernel == new and nb.detail.startswith("building: ")
    gate.touch()
    daemon.wait_job(new, "succeeded")
    wait_for(lambda: not [i for i in logind.inhibitors() if i[2] == why], 30,
             "the build's lock to be released")
    assert daemon.wait_status(lambda s: s.next_boot and s.next_boot.ready, "NextBoot: ready")
    assert daemon.stop() == 0
