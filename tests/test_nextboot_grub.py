"""Next boot under GRUB: grub.cfg from the real grub-mkconfig, grubenv
changed by the real grub-editenv / grub-set-default / grub-reboot, and every
answer checked against what real GRUB (grub-emu) boots."""

from __future__ import annotations

import pytest

import bootloaders as bl
from nvkmd.inspect import grub
from nvkmd.inspect.nextboot import next_boot
from nvkmd.paths import Paths

K = ["6.1.0-9-amd64", "6.1.0-47-amd64", "6.1.0-56-amd64"]   # 10_linux lists 56, 47, 9


@pytest.fixture(autouse=True)
def _tools():
    bl.need_tools()


def _ids(root):
    cfg = grub.read_config(Paths.build(root))
    sub = cfg.menu[1]
    return sub, {e.release: e for e in sub.children if "recovery" not in e.title}


def _check(root, tmp_path, want, **expect):
    """nvkmd's answer equals real GRUB's, and both are ``want``."""
    nb = next_boot(Paths.build(root), K)
    assert bl.grub_boots(root, tmp_path) == want
    assert nb.kernel == want, nb
    assert nb.loader == "grub" and not nb.guess
    for k, v in expect.items():
        assert getattr(nb, k) == v, (k, nb)
    return nb


def test_the_generated_menu_has_ids_submenus_and_linux_lines(tmp_path):
    root = tmp_path / "r"
    bl.grub_root(root, K)
    cfg = grub.read_config(Paths.build(root))
    assert [e.submenu for e in cfg.menu] == [False, True]
    assert cfg.menu[0].release == "6.1.0-56-amd64" and cfg.menu[0].id.startswith("gnulinux-simple-")
    sub = cfg.menu[1]
    assert sub.title == "Advanced options for Debian GNU/Linux"
    assert [e.release for e in sub.children] == [K[2], K[2], K[1], K[1], K[0], K[0]]
    assert all(e.id.startswith(f"gnulinux-{e.release}-") for e in sub.children)
    assert cfg.default == "0" and not cfg.saved


@pytest.mark.parametrize("default,want", [
    ("0", "6.1.0-56-amd64"),           # the first entry
    ("1", "6.1.0-56-amd64"),           # a submenu boots its first entry
    ("1>2", "6.1.0-47-amd64"),         # index path into the submenu
    ("1>4", "6.1.0-9-amd64"),
    ("7", "6.1.0-56-amd64"),           # out of range: GRUB falls back to the first
])
def test_numeric_default(tmp_path, default, want):
    root = tmp_path / "r"
    bl.grub_root(root, K, default=default)
    _check(root, tmp_path, want, source="default in grub.cfg" if default != "7"
           else "first menu entry (default in grub.cfg names none)", one_shot=False)


def test_id_default(tmp_path):
    root = tmp_path / "r"
    bl.grub_root(root, K)
    sub, by = _ids(root)
    spec = f"{sub.id}>{by['6.1.0-47-amd64'].id}"
    bl.grub_root(root, K, default=spec)
    _check(root, tmp_path, "6.1.0-47-amd64", value=spec)


def test_title_default_with_submenu_path(tmp_path):
    root = tmp_path / "r"
    spec = "Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux 6.1.0-9-amd64"
    bl.grub_root(root, K, default=spec)
    _check(root, tmp_path, "6.1.0-9-amd64")


def test_saved_default_set_by_grub_set_default(tmp_path):
    root = tmp_path / "r"
    bl.grub_root(root, K, default="saved")
    # No saved_entry yet: GRUB boots the first entry.
    _check(root, tmp_path, "6.1.0-56-amd64")
    bl.run("grub-set-default", f"--boot-directory={root / 'boot'}", "1>2")
    assert "saved_entry=1>2" in bl.editenv(root, "list")
    _check(root, tmp_path, "6.1.0-47-amd64", source="saved_entry in grubenv", one_shot=False)
    sub, by = _ids(root)
    bl.run("grub-set-default", f"--boot-directory={root / 'boot'}", f"{sub.id}>{by[K[0]].id}")
    _check(root, tmp_path, K[0], source="saved_entry in grubenv")


def test_next_entry_from_grub_reboot_wins_once(tmp_path):
    root = tmp_path / "r"
    bl.grub_root(root, K, default="saved")
    bl.run("grub-set-default", f"--boot-directory={root / 'boot'}", "1>2")
    bl.run("grub-reboot", f"--boot-directory={root / 'boot'}", "1>4")
    assert "next_entry=1>4" in bl.editenv(root, "list")
    _check(root, tmp_path, "6.1.0-9-amd64", source="next_entry in grubenv", one_shot=True)
    bl.editenv(root, "unset", "next_entry")
    _check(root, tmp_path, "6.1.0-47-amd64", one_shot=False)


def test_saved_entry_of_a_removed_kernel_falls_back_to_the_first(tmp_path):
    root = tmp_path / "r"
    bl.grub_root(root, K, default="saved")
    bl.editenv(root, "set", "saved_entry=gnulinux-6.1.0-1-amd64-advanced-gone")
    nb = _check(root, tmp_path, "6.1.0-56-amd64")
    assert "names no menu entry" in nb.note


def test_grub_cfg_older_than_etc_default_grub_is_said(tmp_path):
    root = tmp_path / "r"
    bl.grub_root(root, K, default="0")
    (root / "etc/default/grub").write_text('GRUB_DEFAULT=saved\n')   # update-grub not run
    bl.run("grub-set-default", f"--boot-directory={root / 'boot'}", "1>2")
    nb = _check(root, tmp_path, "6.1.0-56-amd64")       # GRUB still uses default=0
    assert "update-grub" in nb.note


def test_default_from_a_grub_d_dropin(tmp_path):
    root = tmp_path / "r"
    bl.stand_in_kernels(root, K)
    (root / "etc/default/grub.d").mkdir(parents=True)
    (root / "etc/default/grub.d/50-local.cfg").write_text('GRUB_DEFAULT="1>2"\n')
    bl.grub_root(root, K, default="0")
    assert grub.read_settings(Paths.build(root))["GRUB_DEFAULT"] == "1>2"
    _check(root, tmp_path, "6.1.0-47-amd64")


def test_blscfg_menu_lists_the_bls_entries(tmp_path):
    """Fedora's GRUB: grub.cfg's ``blscfg`` command makes the BLS entries the
    menu.  Debian's GRUB has no blscfg module and its grub-mkconfig never
    writes the command, so grub.cfg here is Fedora's 10_linux output line
    for line; the entries are the real kernel-install's."""
    root = tmp_path / "r"
    # GRUB reads a value with leading digits as a menu index (grub_strtoul;
    # grub-emu confirms "0123x" boots the first entry), so this machine id
    # starts with a letter, as the entry ids Fedora's GRUB matches do.
    mid = "fedcba98765432100123456789abcdef"
    bl.kernel_install(root, root / "boot", K, machine_id=mid)
    (root / "boot/grub2").mkdir(parents=True)
    (root / "boot/grub2/grub.cfg").write_text(
        'set default="${saved_entry}"\ninsmod blscfg\nblscfg\n')
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/grub").write_text("GRUB_DEFAULT=saved\nGRUB_ENABLE_BLSCFG=true\n")
    bl.run("grub-editenv", str(root / "boot/grub2/grubenv"), "create")
    paths = Paths.build(root)
    assert next_boot(paths, K).kernel == "6.1.0-56-amd64"      # newest first
    bl.run("grub-editenv", str(root / "boot/grub2/grubenv"), "set",
           f"saved_entry={mid}-6.1.0-47-amd64")
    nb = next_boot(paths, K)
    assert (nb.kernel, nb.source, nb.entry) == ("6.1.0-47-amd64", "saved_entry in grubenv",
                                                 f"{mid}-6.1.0-47-amd64")


ODD_MENU = """\
set timeout=5
menuentry 'first' --id 'zero' {
  linux /boot/vmlinuz-6.1.0-1-amd64
}
menuentry 'second' --id '0123x' {
  linux /boot/vmlinuz-6.1.0-2-amd64
}
menuentry 'a>b title' --id 'third' {
  linux /boot/vmlinuz-6.1.0-3-amd64
}
submenu 'More' --id 'more' {
  menuentry 'inner one' --id 'in1' {
    linux /boot/vmlinuz-6.1.0-4-amd64
  }
  menuentry 'inner two' --id 'in2' {
    linux /boot/vmlinuz-6.1.0-5-amd64
  }
}
"""


@pytest.mark.parametrize("spec", [
    "0123x",            # leading digits: GRUB reads an index (octal 0123), out of range
    "0x2",              # hex index
    "1abc",             # index 1, the rest ignored
    "a>>b title",       # ">>" is a literal ">" in a title
    "more>in2", "3>1", "more", "3>9", "more>nothing", "nothing", "", "4",
])
def test_resolution_agrees_with_real_grub_on_odd_values(tmp_path, spec):
    """A menu written in GRUB's own language, the value set as grub.cfg
    sets it; grub-emu (GRUB's normal.mod) boots one entry, nvkmd predicts it."""
    root = tmp_path / "r"
    (root / "boot/grub").mkdir(parents=True)
    (root / "boot/grub/grub.cfg").write_text(f'set default="{spec}"\n' + ODD_MENU)
    bl.run("grub-editenv", str(root / "boot/grub/grubenv"), "create")
    cfg = grub.read_config(Paths.build(root))
    path, _ = grub.resolve(cfg.menu, spec if spec else None)
    assert path[-1].release == bl.grub_boots(root, tmp_path), spec
