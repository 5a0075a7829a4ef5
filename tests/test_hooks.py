"""The package-manager hooks (hooks/): each one tells the real daemon to
rescan and returns at once, and none of them builds.

Run the way their package managers run them: the kernel-install plugin by
the real ``kernel-install`` (KERNEL_INSTALL_PLUGINS, a scratch BOOT_ROOT),
the Debian hook by the real ``run-parts``, the pacman hook's Exec= line as
written.  Each runs under strace: the programs it starts are listed, and
no compiler, make, dkms or depmod may be among them.  The daemon serves a
private dbus-daemon with the project's busconfig.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import REPO, need_kernels, run_nvkmd

HOOKS = REPO / "hooks"
RESCAN = HOOKS / "nvkmd-rescan"
BUILDERS = {"make", "gcc", "gcc-12", "cc", "cc1", "ld", "as", "dkms", "depmod", "nvkmd", "python3",
            "dracut", "update-initramfs"}


def run_traced(cmd: list[str], tmp: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, set[str]]:
    trace = tmp / f"trace-{Path(cmd[0]).name}"
    e = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NVKMD_RESCAN": str(RESCAN), **env}
    proc = subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve", "-o", str(trace), *cmd],
                          capture_output=True, text=True, env=e, timeout=60, stdin=subprocess.DEVNULL)
    programs = {Path(m.group(1)).name for m in
                re.finditer(r'execve\("([^"]+)".*= 0$', trace.read_text(), re.M)}
    return proc, programs


def requests(daemon) -> int:
    """Rescan calls the daemon accepted: a call without a reply leaves no
    trace but the daemon's record of privileged calls."""
    return daemon.log_text(True).count("method='Rescan'")


@pytest.fixture
def served(root, bus, bus_daemon):
    """The daemon with nothing to do: the kernel's module is built already."""
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    assert run_nvkmd("--once", "--root", str(root.path)).returncode == 0
    daemon = bus_daemon(root, bus, env={"NVKMD_RUNNING_KERNEL": k})
    daemon.wait_kernel(k, "ready")
    return k, bus, daemon


def check(served, proc, programs, before: int) -> None:
    k, bus, daemon = served
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not proc.stdout and not proc.stderr, proc.stdout + proc.stderr
    assert "busctl" in programs, programs
    assert not programs & BUILDERS, programs
    daemon.wait_log(r"method='Rescan'", count=before + 1)
    # Accepted, not refused: the caller was still there to be checked.
    assert "authorization refused" not in daemon.log_text(True), daemon.log_text(True)


def test_kernel_install_plugin(served, tmp_path):
    k, bus, daemon = served
    boot = tmp_path / "boot"
    boot.mkdir()
    image = tmp_path / "vmlinuz"
    image.write_bytes(b"a kernel image\n")
    env = {"DBUS_SYSTEM_BUS_ADDRESS": bus.address, "BOOT_ROOT": str(boot),
           "MACHINE_ID": "0123456789abcdef0123456789abcdef",
           "KERNEL_INSTALL_PLUGINS": str(HOOKS / "kernel-install" / "95-nvkmd.install")}
    for command in (["add", k, str(image)], ["remove", k]):
        before = requests(daemon)
        proc, programs = run_traced(["kernel-install", *command], tmp_path, env)
        check(served, proc, programs, before)
        assert "kernel-install" in programs


def test_debian_postinst_hook_through_run_parts(served, tmp_path):
    k, bus, daemon = served
    hookdir = tmp_path / "postinst.d"
    hookdir.mkdir()
    shutil.copy2(HOOKS / "kernel-postinst.d" / "zz-nvkmd", hookdir)
    before = requests(daemon)
    proc, programs = run_traced(["run-parts", "--report", "--exit-on-error", f"--arg={k}",
                                 f"--arg=/boot/vmlinuz-{k}", str(hookdir)], tmp_path,
                                {"DBUS_SYSTEM_BUS_ADDRESS": bus.address})
    check(served, proc, programs, before)


def test_pacman_hook(served, tmp_path):
    k, bus, daemon = served
    text = (HOOKS / "alpm" / "nvkmd.hook").read_text()
    assert re.search(r"^When = PostTransaction$", text, re.M)
    (execline,) = re.findall(r"^Exec = (.*)$", text, re.M)
    assert execline == "/usr/lib/nvkmd/nvkmd-rescan"
    before = requests(daemon)
    # The file pacman runs from there is this one.
    proc, programs = run_traced([str(RESCAN)], tmp_path, {"DBUS_SYSTEM_BUS_ADDRESS": bus.address})
    check(served, proc, programs, before)


def test_returns_at_once_when_the_daemon_does_not_answer(served, tmp_path):
    """A stopped daemon (SIGSTOP) cannot hold the transaction: the call
    expects no reply.  The rescan is delivered once the daemon runs again."""
    k, bus, daemon = served
    before = requests(daemon)
    daemon.signal(signal.SIGSTOP)
    try:
        # Not under strace, which would wait for the detached caller too.
        proc = subprocess.run([str(RESCAN)], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus.address},
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0 and not proc.stdout and not proc.stderr
        assert requests(daemon) == before
    finally:
        daemon.signal(signal.SIGCONT)
    daemon.wait_log(r"method='Rescan'", count=before + 1)
    assert "authorization refused" not in daemon.log_text(True)


def test_no_daemon_and_no_bus_is_not_an_error(tmp_path, bus):
    for address in (bus.address, f"unix:path={tmp_path}/no-bus"):
        proc, programs = run_traced([str(RESCAN)], tmp_path, {"DBUS_SYSTEM_BUS_ADDRESS": address})
        assert proc.returncode == 0 and not proc.stdout and not proc.stderr
    # Without its helper installed a hook still lets the transaction go on.
    proc = subprocess.run([str(HOOKS / "kernel-postinst.d" / "zz-nvkmd"), "6.1.0-1-amd64"],
                          env={**os.environ, "NVKMD_RESCAN": str(tmp_path / "absent")},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
