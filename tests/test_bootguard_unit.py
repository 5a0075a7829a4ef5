"""The boot guard's drop-in for the hardened nvkmd.service: clean for
systemd-analyze verify, the sandbox still scored at most 3, and the paths
it opens are exactly the boot loaders' files the guard writes."""

from __future__ import annotations

import shutil

from test_systemd_units import UNITS, exposure, make_root, unit_values, verify

DROPIN = UNITS / "nvkmd.service.d" / "bootguard.conf"


def _root(tmp_path):
    root = make_root(tmp_path)
    d = root / "etc/systemd/system/nvkmd.service.d"
    d.mkdir()
    shutil.copy2(DROPIN, d)
    return root


def test_the_dropin_verifies_clean_and_keeps_the_sandbox(tmp_path):
    root = _root(tmp_path)
    proc = verify(root, "nvkmd.service")
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr
    score = exposure(root, "nvkmd.service")
    assert score <= 3.0, f"with the boot guard drop-in: {score}"


def test_the_dropin_opens_only_the_boot_loaders_files():
    rw = " ".join(unit_values(DROPIN, "ReadWritePaths")).split()
    assert set(rw) == {"-/boot/grub", "-/boot/grub2", "-/efi/loader", "-/boot/efi/loader",
                       "-/boot/loader", "-/sys/firmware/efi/efivars"}
    assert unit_values(DROPIN, "CapabilityBoundingSet") == ["CAP_LINUX_IMMUTABLE"]
