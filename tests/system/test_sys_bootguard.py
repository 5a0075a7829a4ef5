"""The boot guard in a booted Debian 12, the installed hardened service
with the bootguard.conf drop-in from the package's examples, Debian's GRUB
tools installed with apt, and grub.cfg from the container's own
grub-mkconfig: the newest kernel (GRUB's first entry) waits for headers,
so "pin" points saved_entry at the kernel whose module is ready (first
without the drop-in: the sandbox refuses, and the guard says so); once apt
brings the headers and the module is built, the user's default (no
saved_entry) is back; `nvkmctl boot try` sets a one-shot.  Real GRUB (grub-emu, outside) reads the container's
grub.cfg and grubenv at each step and says what it boots."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from sysimage import GOOD, OTHER
from sysnvkmd import CONFIG, TINY_CONFIG, add_tiny_source, apt, wait_kernel_ready, wait_status

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bootloaders as bl  # noqa: E402

pytestmark = pytest.mark.system

HEADERS = f"linux-headers-{OTHER} linux-headers-{OTHER.removesuffix('-amd64')}-common"
DROPIN = "/etc/systemd/system/nvkmd.service.d/bootguard.conf"


def next_boot(c) -> dict:
    r = c.run("nvkmctl next-boot --json", check=False)
    return {**json.loads(r.stdout), "exit": r.returncode}


def wait_next_boot(c, cond, what, timeout=300.0) -> dict:
    last = {}

    def ok(r):
        nonlocal last
        try:
            last = {**json.loads(r.stdout), "exit": r.returncode}
        except ValueError:
            return False
        return cond(last)
    c.wait("nvkmctl next-boot --json", timeout, f"{what} (last: {last})", ok=ok)
    return last


def grubenv(c) -> str:
    return c.run("grub-editenv /boot/grub/grubenv list").stdout


@pytest.fixture(scope="module")
def grub(installed, tmp_path_factory):
    c = installed
    apt(c, "install grub-common grub2-common")
    for k in (GOOD, OTHER):
        c.path(f"/boot/vmlinuz-{k}").write_text(f"stand-in kernel image {k}\n")
    # The newest kernel is installed (its modules directory), its headers not yet.
    c.run(f"mkdir -p /lib/modules/{OTHER}/kernel")
    c.path("/etc/default/grub").write_text(
        'GRUB_DEFAULT=saved\nGRUB_TIMEOUT=5\nGRUB_DISTRIBUTOR=Debian\n')
    c.run("mkdir -p /boot/grub && grub-editenv /boot/grub/grubenv create")
    r = c.run("grub-mkconfig -o /boot/grub/grub.cfg", check=False, timeout=120)
    if r.returncode != 0:
        # grub-probe cannot name a device for an overlay ("failed to get
        # canonical path of `overlay'"), inside or bind-mounted outside: the
        # same real grub-mkconfig runs outside on a copy of the container's
        # /boot and /etc/default/grub in a plain directory, and its grub.cfg
        # goes in.
        out = tmp_path_factory.mktemp("grub-mkconfig")
        (out / "boot/grub").mkdir(parents=True)
        (out / "etc/default").mkdir(parents=True)
        for k in (GOOD, OTHER):
            shutil.copy2(c.path(f"/boot/vmlinuz-{k}"), out / "boot")
        shutil.copy2(c.path("/etc/default/grub"), out / "etc/default/grub")
        shutil.copy2(c.path("/boot/grub/grubenv"), out / "boot/grub/grubenv")
        shutil.copy2(bl.grub_mkconfig(out), c.path("/boot/grub/grub.cfg"))
    return c


def test_pin_in_a_booted_system_with_real_grub(grub, tmp_path):
    c = grub
    assert bl.grub_boots(c.path("/"), tmp_path) == OTHER
    add_tiny_source(c)
    c.path(CONFIG).write_text(TINY_CONFIG + '\n[boot]\nguard = "pin"\n')
    # Without the drop-in the sandbox keeps /boot read-only: the guard
    # says it could not, and nothing changed.
    c.run("systemctl restart nvkmd")
    wait_kernel_ready(c, GOOD)
    nb = wait_next_boot(c, lambda nb: "could not pin" in nb.get("guard_note", ""),
                        "the guard to say it could not pin")
    assert nb["kernel"] == OTHER and not nb["ready"] and not nb["pinned"] and nb["exit"] == 1
    assert "saved_entry" not in grubenv(c)
    c.run(f"mkdir -p {Path(DROPIN).parent} && "
          f"cp /usr/share/doc/nvkmd/examples/bootguard.conf {DROPIN} && "
          "systemctl daemon-reload && systemctl restart nvkmd")
    nb = wait_next_boot(c, lambda nb: nb.get("pinned") == GOOD, "the guard to pin")
    assert nb["kernel"] == GOOD and nb["ready"] and nb["exit"] == 0 and nb["loader"] == "grub"
    assert "saved_entry=" in grubenv(c) and bl.grub_boots(c.path("/"), tmp_path) == GOOD
    status = c.run("nvkmctl status").stdout.splitlines()
    assert status[0] == f"Next boot: {GOOD} — ready", status
    assert any("unset saved_entry" in line for line in status), status
    journal = c.journal("-u", "nvkmd")
    assert "boot guard: default pinned" in journal, journal
    # The headers arrive through apt; the module is built; the user's default is back.
    apt(c, f"install {HEADERS}")
    wait_kernel_ready(c, OTHER, timeout=300)
    nb = wait_next_boot(c, lambda nb: nb["kernel"] == OTHER and nb["ready"] and not nb["pinned"],
                        "the user's default to be back")
    assert "saved_entry" not in grubenv(c)
    assert bl.grub_boots(c.path("/"), tmp_path) == OTHER
    assert "boot guard: default restored" in c.journal("-u", "nvkmd")
    s = wait_status(c, lambda s: s.get("next_boot", {}).get("ready"), "status to agree")
    assert s["next_boot"]["kernel"] == OTHER
    # A one-shot boot of the other ready kernel, through grub-reboot.
    assert "unset next_entry" in c.run(f"nvkmctl boot try {GOOD}").stdout
    assert "next_entry=" in grubenv(c) and bl.grub_boots(c.path("/"), tmp_path) == GOOD
    nb = wait_next_boot(c, lambda nb: nb["kernel"] == GOOD and nb["one_shot"], "the one-shot")
    assert nb["ready"] and nb["exit"] == 0
