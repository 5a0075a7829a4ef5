"""The boot guard with the boot loaders' real tools on a test root: pin,
restore, a default changed by hand in between, refusals; each result
checked with what real GRUB (grub-emu) or the real bootctl would boot."""

from __future__ import annotations

import json

import pytest

import bootloaders as bl
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.install import bootguard, guardrules
from nvkmd.paths import Paths

OLD, NEW = "6.1.0-47-amd64", "6.1.0-56-amd64"
K = [OLD, NEW]
MID = bl.MACHINE_ID


@pytest.fixture(autouse=True)
def _tools():
    bl.need_tools()


def _paths(root):
    return Paths.build(root)


def _grub(tmp_path, default="saved"):
    root = tmp_path / "r"
    bl.grub_root(root, K, default=default)
    return root


def test_pin_moves_grub_off_a_failed_kernel_and_restores_after_the_rebuild(tmp_path):
    root = _grub(tmp_path)
    paths = _paths(root)
    assert bl.grub_boots(root, tmp_path) == NEW
    r = bootguard.run(paths, "pin", {NEW: "failed", OLD: "ready"})
    assert r.action == "pin" and r.pin.target == OLD and r.pin.protected == NEW
    assert r.choice.kernel == OLD and bl.grub_boots(root, tmp_path) == OLD
    env = bl.editenv(root, "list")
    assert f"saved_entry={r.pin.value}" in env and ">" in r.pin.value
    assert r.pin.previous is None and "unset saved_entry" in r.undo and "/boot/grub/grubenv" in r.undo
    assert json.loads(paths.bootguard_state.read_text())["pin"]["target"] == OLD
    # Still failed: the pin stays, nothing is written again.
    r = bootguard.run(paths, "pin", {NEW: "failed", OLD: "ready"})
    assert r.action == "none" and r.pin is not None and "until the module" in r.message
    # Rebuilt: the user's default (no saved_entry: the first entry) is back.
    r = bootguard.run(paths, "pin", {NEW: "ready", OLD: "ready"})
    assert r.action == "restore" and r.choice.kernel == NEW
    assert "saved_entry" not in bl.editenv(root, "list")
    assert bl.grub_boots(root, tmp_path) == NEW
    assert not paths.bootguard_state.exists()


def test_restore_puts_back_the_users_own_saved_entry(tmp_path):
    root = _grub(tmp_path)
    bl.run("grub-set-default", f"--boot-directory={root / 'boot'}", "1>0")      # NEW, by id path
    paths = _paths(root)
    r = bootguard.run(paths, "pin", {NEW: "building", OLD: "ready"})
    assert r.action == "pin" and bl.grub_boots(root, tmp_path) == OLD and r.pin.previous == "1>0"
    r = bootguard.run(paths, "pin", {NEW: "ready", OLD: "ready"})
    assert r.action == "restore"
    assert "saved_entry=1>0" in bl.editenv(root, "list") and bl.grub_boots(root, tmp_path) == NEW


def test_a_default_changed_by_hand_meanwhile_is_left_alone(tmp_path):
    root = _grub(tmp_path)
    paths = _paths(root)
    assert bootguard.run(paths, "pin", {NEW: "failed", OLD: "ready"}).action == "pin"
    # The user picks the failed kernel on purpose (e.g. to debug it).
    bl.run("grub-set-default", f"--boot-directory={root / 'boot'}", "1>0")
    r = bootguard.run(paths, "pin", {NEW: "failed", OLD: "ready"})
    assert r.action == "forget" and "left as it is" in r.message
    assert "saved_entry=1>0" in bl.editenv(root, "list") and bl.grub_boots(root, tmp_path) == NEW
    # Later rounds do not pin over it either, nor does the rebuild "restore" anything.
    r = bootguard.run(paths, "pin", {NEW: "failed", OLD: "ready"})
    assert r.action == "none" and "set by hand" in r.message
    assert bootguard.run(paths, "pin", {NEW: "ready", OLD: "ready"}).action == "none"
    assert "saved_entry=1>0" in bl.editenv(root, "list")


def test_pin_needs_grub_default_saved_and_changes_nothing_otherwise(tmp_path):
    root = _grub(tmp_path, default="0")
    before = (root / "boot/grub/grubenv").read_bytes()
    r = bootguard.run(_paths(root), "pin", {NEW: "failed", OLD: "ready"})
    assert r.action == "none" and "GRUB_DEFAULT=saved" in r.message
    assert (root / "boot/grub/grubenv").read_bytes() == before
    assert bl.grub_boots(root, tmp_path) == NEW


@pytest.mark.parametrize("states,why", [
    ({NEW: "failed", OLD: "building"}, "no other installed kernel has a ready module"),
    ({NEW: "failed", OLD: "missing"}, "no other installed kernel has a ready module"),
])
def test_never_pins_a_kernel_whose_module_is_not_ready(tmp_path, states, why):
    root = _grub(tmp_path)
    r = bootguard.run(_paths(root), "pin", states)
    assert r.action == "none" and why in r.message
    assert "saved_entry" not in bl.editenv(root, "list")


def test_warn_and_off_change_nothing_and_a_one_shot_is_left_alone(tmp_path):
    root = _grub(tmp_path)
    for mode in ("warn", "off"):
        assert bootguard.run(_paths(root), mode, {NEW: "failed", OLD: "ready"}).action == "none"
    assert "saved_entry" not in bl.editenv(root, "list")
    bl.run("grub-reboot", f"--boot-directory={root / 'boot'}", "1>0")
    r = bootguard.run(_paths(root), "pin", {NEW: "failed", OLD: "ready"})
    assert r.action == "none" and "next boot only" in r.message


def test_turning_the_guard_off_undoes_its_pin(tmp_path):
    root = _grub(tmp_path)
    assert bootguard.run(_paths(root), "pin", {NEW: "failed", OLD: "ready"}).action == "pin"
    r = bootguard.run(_paths(root), "warn", {NEW: "failed", OLD: "ready"})
    assert r.action == "restore" and bl.grub_boots(root, tmp_path) == NEW


def test_systemd_boot_without_efi_variables_pins_through_loader_conf(tmp_path):
    root = tmp_path / "r"
    bl.kernel_install(root, root / "efi", K)
    (root / "efi/loader/loader.conf").write_text("timeout 3\n")
    paths = _paths(root)
    assert bl.bootctl_default(root / "efi") == f"{MID}-{NEW}.conf"
    # bootctl itself refuses here, which is why loader.conf is the way.
    assert "UEFI" in bl.bootctl(root / "efi", "set-default", f"{MID}-{OLD}.conf", check=False).stderr
    r = bootguard.run(paths, "pin", {NEW: "failed", OLD: "ready"})
    assert r.action == "pin" and r.pin.method == "loader.conf"
    assert bl.bootctl_default(root / "efi") == f"{MID}-{OLD}.conf" and r.choice.kernel == OLD
    assert "timeout 3" in (root / "efi/loader/loader.conf").read_text()
    assert "remove the 'default' line of /efi/loader/loader.conf" == r.undo
    r = bootguard.run(paths, "pin", {NEW: "ready", OLD: "ready"})
    assert r.action == "restore"
    assert (root / "efi/loader/loader.conf").read_text() == "timeout 3\n"
    assert bl.bootctl_default(root / "efi") == f"{MID}-{NEW}.conf"


def test_systemd_boot_keeps_the_users_glob_and_puts_it_back(tmp_path):
    root = tmp_path / "r"
    bl.kernel_install(root, root / "efi", K)
    (root / "efi/loader/loader.conf").write_text(f"default {MID}-*\n")
    paths = _paths(root)
    assert bootguard.run(paths, "pin", {NEW: "unsupported", OLD: "ready"}).action == "pin"
    assert bl.bootctl_default(root / "efi") == f"{MID}-{OLD}.conf"
    bootguard.run(paths, "pin", {NEW: "ready", OLD: "ready"})
    assert (root / "efi/loader/loader.conf").read_text() == f"default {MID}-*\n"
    assert bl.bootctl_default(root / "efi") == f"{MID}-{NEW}.conf"


def test_unrecognised_boot_loader_changes_nothing(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    r = bootguard.run(_paths(root), "pin", {NEW: "failed", OLD: "ready"})
    assert r.choice.guess and r.action == "none" and "not recognised" in r.message
    assert not any(root.rglob("*"))


def test_boot_try_sets_a_grub_one_shot_of_a_ready_kernel(tmp_path):
    root = _grub(tmp_path, default="0")      # next_entry works without GRUB_DEFAULT=saved
    states = {NEW: "failed", OLD: "ready"}
    with pytest.raises(NvkmdError) as e:
        bootguard.boot_try(_paths(root), NEW, states)
    assert e.value.code is ErrorCode.INVALID_ARGUMENT and "failed" in e.value.message
    with pytest.raises(NvkmdError) as e:
        bootguard.boot_try(_paths(root), "6.1.0-1-amd64", states)
    assert e.value.code is ErrorCode.NO_SUCH_KERNEL
    msg = bootguard.boot_try(_paths(root), OLD, states)
    assert "unset next_entry" in msg
    assert "next_entry=" in bl.editenv(root, "list")
    assert bl.grub_boots(root, tmp_path) == OLD


def test_boot_try_under_systemd_boot_without_efi_variables_is_refused(tmp_path):
    root = tmp_path / "r"
    bl.kernel_install(root, root / "efi", K)
    with pytest.raises(NvkmdError) as e:
        bootguard.boot_try(_paths(root), OLD, {NEW: "failed", OLD: "ready"})
    assert e.value.code is ErrorCode.NOT_SUPPORTED and "EFI variable" in e.value.message


def test_decision_is_pure():
    d = guardrules.decide("pin", NEW, False, False, {NEW: "failed", OLD: "ready", "6.1.0-9-amd64": "ready"},
                          None, None, "", "")
    assert (d.action, d.target) == ("pin", OLD)       # the newest ready one
    assert guardrules.decide("pin", NEW, True, False, {NEW: "failed", OLD: "ready"},
                             None, None, "", "").action == "none"    # a guess is not acted on


def test_a_change_the_tool_did_not_make_is_not_believed(tmp_path):
    """grub-set-default exits 0 when grub-editenv under it could not write
    grubenv (here: immutable, as a read-only /boot is in the hardened
    service without its drop-in); the guard reads the value back."""
    root = _grub(tmp_path)
    env = root / "boot/grub/grubenv"
    made = bl.run("chattr", "+i", str(env), check=False)
    if made.returncode:
        pytest.fail(f"chattr +i {env}: {made.stderr.strip()}: this test needs a file system with "
                    "the immutable attribute (ext4, xfs, btrfs) under the pytest temp dir")
    try:
        r = bl.run("grub-set-default", f"--boot-directory={root / 'boot'}", "1>2", check=False)
        assert r.returncode == 0 and "Operation not permitted" in r.stderr    # the tool's lie
        r = bootguard.run(_paths(root), "pin", {NEW: "failed", OLD: "ready"})
        assert r.action == "none" and r.pin is None
        assert "could not pin" in r.message and "Operation not permitted" in r.message, r.message
        assert not _paths(root).bootguard_state.exists()
        assert bl.grub_boots(root, tmp_path) == NEW
        with pytest.raises(NvkmdError) as e:
            bootguard.boot_try(_paths(root), OLD, {NEW: "failed", OLD: "ready"})
        assert "next_entry" in e.value.message
    finally:
        bl.run("chattr", "-i", str(env))
