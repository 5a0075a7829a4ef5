"""Next boot under systemd-boot: BLS entries written by the real
kernel-install (layout=bls), loader.conf globs checked against the default
the real bootctl computes for the same ESP, and the EFI variables."""

from __future__ import annotations

import re

import pytest

import bootloaders as bl
from nvkmd.inspect import bls
from nvkmd.inspect.nextboot import next_boot
from nvkmd.paths import Paths

K = ["6.1.0-9-amd64", "6.1.0-47-amd64", "6.1.0-56-amd64"]
MID = bl.MACHINE_ID


@pytest.fixture(autouse=True)
def _tools():
    bl.need_tools()


@pytest.fixture
def esp_root(tmp_path):
    root = tmp_path / "r"
    bl.kernel_install(root, root / "efi", K)
    return root


def _conf(root, text):
    (root / "efi/loader/loader.conf").write_text(text)


def _agree(root, want):
    """nvkmd's choice is bootctl's "(default)" and ``want``."""
    nb = next_boot(Paths.build(root), K)
    assert bl.bootctl_default(root / "efi") == f"{MID}-{want}.conf"
    assert nb.kernel == want and nb.loader == "systemd-boot" and not nb.guess, nb
    return nb


def test_entries_from_kernel_install_in_bootctls_order(esp_root):
    entries = bls.sort_entries(bls.read_entries([esp_root / "efi/loader/entries"]))
    listed = bl.bootctl(esp_root / "efi", "list").stdout
    ids = re.findall(r"^\s+id: (\S+)$", listed, re.M)
    assert [e.id for e in entries] == ids == [f"{MID}-{k}.conf" for k in reversed(K)]
    assert all(e.sort_key == "debian" and e.machine_id == MID for e in entries)


def test_no_default_boots_the_first_entry(esp_root):
    nb = _agree(esp_root, "6.1.0-56-amd64")
    assert nb.source == "the first entry of the menu"


@pytest.mark.parametrize("pattern,want", [
    (f"{MID}-6.1.0-47-amd64.conf", "6.1.0-47-amd64"),
    ("*-6.1.0-9-amd64.conf", "6.1.0-9-amd64"),
    ("*6.1.0-4?-amd64*", "6.1.0-47-amd64"),
    (f"{MID}-*", "6.1.0-56-amd64"),          # a glob matching many: the first in menu order
    ("nothing-*", "6.1.0-56-amd64"),         # matching none: the first entry
])
def test_loader_conf_default_glob(esp_root, pattern, want):
    _conf(esp_root, f"timeout 3\ndefault {pattern}\n")
    nb = _agree(esp_root, want)
    if pattern == "nothing-*":
        assert "names no entry" in nb.note
    else:
        assert nb.source == "default in loader.conf" and nb.value == pattern


def test_efi_variables_one_shot_then_default_then_loader_conf(esp_root):
    """bootctl cannot read or write EFI variables here (no EFI boot in this
    container: "Not booted with UEFI"), so the variables are written as
    efivarfs shows them and the answer is systemd-boot's documented order."""
    assert bl.bootctl(esp_root / "efi", "set-oneshot", "x.conf", check=False).returncode != 0
    _conf(esp_root, f"default {MID}-6.1.0-47-amd64.conf\n")
    efivars = esp_root / "sys/firmware/efi/efivars"
    bl.write_efivar(efivars, "LoaderEntryDefault", f"{MID}-6.1.0-9-amd64.conf")
    nb = next_boot(Paths.build(esp_root), K)
    assert (nb.kernel, nb.source, nb.one_shot) == ("6.1.0-9-amd64", "LoaderEntryDefault (EFI variable)", False)
    bl.write_efivar(efivars, "LoaderEntryOneShot", f"{MID}-6.1.0-56-amd64.conf")
    nb = next_boot(Paths.build(esp_root), K)
    assert (nb.kernel, nb.one_shot) == ("6.1.0-56-amd64", True)
    assert nb.source == "LoaderEntryOneShot (EFI variable)"


def test_systemd_boot_named_in_loaderinfo_wins_over_a_grub_cfg(esp_root, tmp_path):
    bl.grub_root(esp_root, K, default="1>4")          # GRUB would boot 6.1.0-9
    _conf(esp_root, f"default {MID}-6.1.0-47-amd64.conf\n")
    assert next_boot(Paths.build(esp_root), K).loader == "grub"
    bl.write_efivar(esp_root / "sys/firmware/efi/efivars", "LoaderInfo", "systemd-boot 252.39-1~deb12u2")
    nb = next_boot(Paths.build(esp_root), K)
    assert (nb.loader, nb.kernel) == ("systemd-boot", "6.1.0-47-amd64")


def test_boot_counting_suffix_is_not_part_of_the_id(tmp_path):
    root = tmp_path / "r"
    (root / "etc/kernel").mkdir(parents=True)
    (root / "etc/kernel/tries").write_text("3\n")
    bl.kernel_install(root, root / "efi", ["6.1.0-47-amd64"])
    names = [p.name for p in (root / "efi/loader/entries").iterdir()]
    assert names == [f"{MID}-6.1.0-47-amd64+3.conf"]
    _conf(root, f"default {MID}-6.1.0-47-amd64.conf\n")
    nb = next_boot(Paths.build(root), ["6.1.0-47-amd64"])
    assert bl.bootctl_default(root / "efi") == nb.entry == f"{MID}-6.1.0-47-amd64.conf"
    assert nb.kernel == "6.1.0-47-amd64"


def test_nothing_to_read_is_a_guess_newest_first(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    nb = next_boot(Paths.build(root), K)
    assert (nb.kernel, nb.loader, nb.guess) == ("6.1.0-56-amd64", "unknown", True)
    assert nb.describe() == "a guess: newest first"
