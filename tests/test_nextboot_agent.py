"""nvkmd-agent and the next boot, end to end: the real daemon on a private
bus serving a root whose GRUB configuration came from the real
grub-mkconfig, the real dunst on a private session bus.  The agent warns
about the kernel GRUB boots (not merely the newest), says what to do, once
for a (kernel, cause), and takes the warning down when the boot default
moves to a kernel with a ready module."""

from __future__ import annotations

import bootloaders as bl
from helpers import need_kernels, wait_for

BOOT_SUMMARY = "Rebooting now would start without the NVIDIA driver"


def test_the_warning_names_the_kernel_grub_boots_and_what_to_do(root, bus, bus_daemon, desktop,
                                                                agent_factory, tmp_path):
    bl.need_tools()
    old, new = need_kernels(2)[-2:]
    for k in (old, new):
        root.add_kernel(k)
    tree = root.add_tiny_source()
    root.configure(root.config_text + "[daemon]\ndebounce_s = 0.2\n")
    # GRUB boots the OLDER kernel (saved_entry), whose build fails; the
    # newest one builds fine: a newest-first guess would see no risk.
    bl.grub_root(root.path, [old, new], default="saved")
    bl.run("grub-set-default", f"--boot-directory={root.path / 'boot'}", "1>2")
    assert bl.grub_boots(root.path, tmp_path) == old
    kbuild = tree / "kernel-open" / "Kbuild"
    kbuild.write_text(kbuild.read_text() + f"ifeq ($(KERNELRELEASE),{old})\n"
                      "$(error the arguments of pci_resize_resource() changed)\nendif\n")
    desktop.start_server()
    agent = agent_factory(bus.address)
    daemon = bus_daemon(root, bus, env={"NVKMD_RUNNING_KERNEL": new})
    mon = desktop.monitor
    (boot,) = mon.wait_notify(BOOT_SUMMARY, timeout=240)
    assert boot["body"].startswith(f"{old} boots next and has no working NVIDIA module: the build failed")
    assert boot["body"].endswith(f"Or boot {new} once, which has its module: nvkmctl boot try {new}.")
    assert boot["hints"]["urgency"] == 2 and boot["timeout"] == 0
    daemon.wait_status(lambda s: s.next_boot and s.next_boot.reason == "failed", "NextBoot failed")
    # The user moves GRUB to the newest kernel: the warning goes (and was
    # not shown twice on the way, through the rebuilds and rescans).
    bl.run("grub-set-default", f"--boot-directory={root.path / 'boot'}", "0")
    wait_for(lambda: any(c["call"] == "Close" and c["id"] == boot["id"] for c in mon.calls()),
             60, "the boot warning to be closed")
    assert len(mon.notifies(BOOT_SUMMARY)) == 1
    shown = [n for n in desktop.dunst.history() if n["summary"] == BOOT_SUMMARY]
    assert [(n["urgency"], n["body"]) for n in shown] == [("critical", boot["body"])]
    assert agent.stop() == 0
    assert daemon.stop() == 0


# -- the rules, pure -------------------------------------------------------------------

def test_rules_follow_the_daemons_next_boot_not_the_newest():
    from nvkmd.agent.rules import boot_at_risk, boot_notice, progress_notice, ready_fallback
    from nvkmd.model import DaemonStatus, KernelStatus, LastBuild, SourceInfo, next_boot_of

    def k(release, state, cause=""):
        lb = LastBuild("failed", f"/l/{release}.log", cause, "hint", 1.0) if cause else None
        return KernelStatus(release, False, True, "", state, "none", "", last_build=lb)
    ks = [k("6.1.0-56-amd64", "ready"), k("6.1.0-47-amd64", "failed", "API change")]
    st = DaemonStatus("0.1.0", "idle", SourceInfo("/s", "9", "git"), ks, [],
                      next_boot=next_boot_of("6.1.0-47-amd64", ks, loader="grub"))
    at_risk = boot_at_risk(st)
    assert at_risk is not None and at_risk.release == "6.1.0-47-amd64"
    n = boot_notice(at_risk, ready_fallback(st, at_risk.release))
    assert "nvkmctl boot try 6.1.0-56-amd64" in n.body and "API change" in n.body
    # Without the daemon's answer (older daemon) or with a guess: the newest, as before.
    assert boot_at_risk(DaemonStatus("0.1.0", "idle", SourceInfo("/s", "9", "git"), ks, [])) is None
    p = progress_notice("6.1.0-47-amd64", "compile", 40, boots_next=True)
    assert p.body == "Compiling: 40%\n6.1.0-47-amd64 boots next: wait for this build before rebooting."
    assert progress_notice("6.1.0-47-amd64", "compile", 40).body == "Compiling: 40%"


def test_guard_off_means_no_warning_from_the_agent():
    import dataclasses

    from nvkmd.agent.rules import boot_at_risk
    from nvkmd.model import DaemonStatus, KernelStatus, SourceInfo, next_boot_of
    ks = [KernelStatus("6.1.0-47-amd64", False, False, "", "waiting-for-headers", "none", "")]
    nb = next_boot_of("6.1.0-47-amd64", ks, loader="grub", guard="warn")
    st = DaemonStatus("0.1.0", "idle", SourceInfo("/s", "9", "git"), ks, [], next_boot=nb)
    assert boot_at_risk(st).release == "6.1.0-47-amd64"
    off = dataclasses.replace(st, next_boot=dataclasses.replace(nb, guard="off"))
    assert boot_at_risk(off) is None
