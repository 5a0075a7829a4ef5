"""Next boot end to end: the daemon on a private bus serving a test root
whose GRUB configuration came from the real grub-mkconfig, a tiny source
that fails to build for the newest kernel only, the NextBoot property, the
first line of `nvkmctl status`, `nvkmctl next-boot`'s exit codes, and the
boot guard's pin, restore, and respect for a default changed by hand."""

from __future__ import annotations

import subprocess
import sys

import pytest

import bootloaders as bl
from dbus_helpers import FAST_CONFIG, run, serve_root
from helpers import wait_for

BREAK = "# nvkmd test: this kernel's build fails\n"


def _prepare(default: str):
    def prepare(root):
        ks = sorted(p.name for p in root.modules.iterdir())
        new = max(ks, key=lambda r: [int(x) if x.isdigit() else x for x in r.replace("-", ".").split(".")])
        bl.grub_root(root.path, ks, default=default)
        kbuild = root.path / "usr/src/nvidia-tiny/kernel-open/Kbuild"
        kbuild.write_text(kbuild.read_text() + f"{BREAK}ifeq ($(KERNELRELEASE),{new})\n"
                          "$(error the arguments of pci_resize_resource() changed)\nendif\n")
    return prepare


def _fix_source(root):
    kbuild = root.path / "usr/src/nvidia-tiny/kernel-open/Kbuild"
    kbuild.write_text(kbuild.read_text().split(BREAK)[0])


def nvkmctl(address: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nvkmd.cli", "--bus", address, *args],
                          capture_output=True, text=True, timeout=120)


def next_boot(s):
    return run(s.address, lambda c: c.next_boot())


def wait_next_boot(s, pred, what, timeout=180):
    seen = []

    def cond():
        nb = next_boot(s)
        seen[:] = [nb]
        return nb if pred(nb) else None
    try:
        return wait_for(cond, timeout, what)
    except AssertionError as e:
        raise AssertionError(f"{e}; last NextBoot: {seen}") from None


@pytest.fixture(autouse=True)
def _tools():
    bl.need_tools()


def _states(s, new, old, new_state="failed"):
    return s.daemon.wait_status(
        lambda st: {k.release: k.state for k in st.kernels} == {new: new_state, old: "ready"},
        f"{new} {new_state} and {old} ready", 300)


def test_next_boot_property_status_line_and_exit_codes(tmp_path):
    with serve_root(tmp_path, prepare=_prepare("saved"), ready=False) as s:
        new, old = s.kernels
        _states(s, new, old)
        nb = wait_next_boot(s, lambda nb: nb.kernel == new and nb.reason == "failed", "NextBoot: failed")
        assert not nb.ready and nb.loader == "grub" and nb.guard == "warn" and not nb.pinned
        assert "pci_resize_resource" in nb.cause or nb.cause, nb
        assert nb.detail == f"build failed: {nb.cause}"
        r = nvkmctl(s.address, "status")
        assert r.stdout.splitlines()[:1] == [f"Next boot: {new} — NOT READY: build failed: {nb.cause}"], r.stdout + r.stderr
        r = nvkmctl(s.address, "next-boot")
        assert r.returncode == 1 and "NOT READY" in r.stdout
        r = nvkmctl(s.address, "next-boot", "--json")
        assert r.returncode == 1 and '"reason": "failed"' in r.stdout
        # "warn" changed nothing in the boot loader.
        assert "saved_entry" not in bl.editenv(s.root.path, "list")
        # The user points GRUB at the older kernel: NextBoot follows the file.
        bl.run("grub-set-default", f"--boot-directory={s.root.path / 'boot'}", "1>2")
        assert bl.grub_boots(s.root.path, tmp_path) == old
        nb = wait_next_boot(s, lambda nb: nb.kernel == old, "NextBoot to follow grubenv")
        assert nb.ready and nb.source == "saved_entry in grubenv"
        assert nvkmctl(s.address, "status").stdout.splitlines()[0] == f"Next boot: {old} — ready"
        assert nvkmctl(s.address, "next-boot").returncode == 0
        # No boot loader any more: a guess, and not every kernel is ready.
        (s.root.path / "boot/grub/grub.cfg").unlink()
        s.call("Rescan")
        nb = wait_next_boot(s, lambda nb: nb.guess, "NextBoot to be a guess")
        assert nb.reason == "unknown" and nb.loader == "unknown"
        assert nvkmctl(s.address, "next-boot").returncode == 2


def test_pin_moves_the_default_and_restores_it_after_a_successful_rebuild(tmp_path):
    config = FAST_CONFIG + '[boot]\nguard = "pin"\n'
    with serve_root(tmp_path, config=config, prepare=_prepare("saved"), ready=False) as s:
        new, old = s.kernels
        _states(s, new, old)
        nb = wait_next_boot(s, lambda nb: nb.pinned == old, "the guard to pin the older kernel")
        assert nb.kernel == old and nb.ready and "unset saved_entry" in nb.undo
        assert bl.grub_boots(s.root.path, tmp_path) == old
        lines = nvkmctl(s.address, "status").stdout.splitlines()
        assert lines[0] == f"Next boot: {old} — ready"
        assert any(f"pointed the default at {old}" in ln and "undo:" in ln for ln in lines), lines
        _fix_source(s.root)
        nb = wait_next_boot(s, lambda nb: nb.kernel == new and nb.ready and not nb.pinned,
                            "the rebuilt kernel to be the default again", 300)
        assert "saved_entry" not in bl.editenv(s.root.path, "list")
        assert bl.grub_boots(s.root.path, tmp_path) == new


def test_a_default_changed_by_hand_meanwhile_is_left_alone(tmp_path):
    config = FAST_CONFIG + '[boot]\nguard = "pin"\n'
    with serve_root(tmp_path, config=config, prepare=_prepare("saved"), ready=False) as s:
        new, old = s.kernels
        _states(s, new, old)
        wait_next_boot(s, lambda nb: nb.pinned == old, "the guard to pin")
        # The user boots the failing kernel on purpose, by its menu entry id.
        cfg = s.root.path / "boot/grub/grub.cfg"
        from nvkmd.inspect import grub
        from nvkmd.paths import Paths
        spec = grub.path_spec(grub.find_kernel(grub.read_config(Paths.build(s.root.path)).menu, new))
        bl.run("grub-set-default", f"--boot-directory={s.root.path / 'boot'}", spec)
        nb = wait_next_boot(s, lambda nb: nb.kernel == new and not nb.pinned, "the guard to let go")
        assert "left as it is" in nb.guard_note and not nb.ready
        assert cfg.exists() and f"saved_entry={spec}" in bl.editenv(s.root.path, "list")
        _fix_source(s.root)
        _states(s, new, old, new_state="ready")
        nb = wait_next_boot(s, lambda nb: nb.ready, "the next boot to be ready")
        assert nb.kernel == new
        assert f"saved_entry={spec}" in bl.editenv(s.root.path, "list")
        assert bl.grub_boots(s.root.path, tmp_path) == new


def test_boot_try_guard_changes_and_properties_changed(tmp_path):
    import asyncio

    from dbus_helpers import as_nobody
    from nvkmd.clients import manager
    from nvkmd.model import NextBootChanged
    with serve_root(tmp_path, prepare=_prepare("0"), ready=False) as s:
        new, old = s.kernels
        _states(s, new, old)
        wait_next_boot(s, lambda nb: nb.kernel == new and nb.reason == "failed", "NextBoot: failed")
        r = nvkmctl(s.address, "boot", "try", new)
        assert r.returncode == 2 and "has no ready module" in r.stderr, r.stderr
        assert "next_entry" not in bl.editenv(s.root.path, "list")
        r = nvkmctl(s.address, "boot", "try", old)
        assert r.returncode == 0 and "unset next_entry" in r.stdout, r.stderr
        assert bl.grub_boots(s.root.path, tmp_path) == old
        nb = wait_next_boot(s, lambda nb: nb.kernel == old and nb.one_shot, "the one-shot in NextBoot")
        assert nb.ready and nb.source == "next_entry in grubenv"
        assert nvkmctl(s.address, "status").stdout.splitlines()[0] == f"Next boot: {old} (once) — ready"
        # Changing the guard is privileged: nobody is refused (no polkit here: fail closed).
        r = as_nobody(["-m", "nvkmd.cli", "--bus", s.address, "boot", "guard", "pin"])
        assert r.returncode == 4, r.stderr
        assert nvkmctl(s.address, "boot", "guard", "pin").stdout == "boot guard: pin\n"
        assert (s.root.path / "var/lib/nvkmd/bootguard-mode").read_text() == "pin\n"
        # GRUB_DEFAULT=0: pin cannot act, and says why; the one-shot is gone first.
        bl.editenv(s.root.path, "unset", "next_entry")
        nb = wait_next_boot(s, lambda nb: nb.guard == "pin" and "GRUB_DEFAULT=saved" in nb.guard_note,
                            "the guard to say what it needs")
        assert nb.kernel == new and not nb.pinned
        assert "next_entry" not in bl.editenv(s.root.path, "list")

        # PropertiesChanged carries NextBoot when the boot loader's file changes.
        async def watch():
            c = await manager.connect(s.address)
            got: asyncio.Queue = asyncio.Queue()
            try:
                await c.subscribe(lambda ev: isinstance(ev, NextBootChanged) and got.put_nowait(ev))
                p = await asyncio.create_subprocess_exec(
                    "grub-reboot", f"--boot-directory={s.root.path / 'boot'}", "1>2")
                assert await p.wait() == 0
                while True:
                    ev = await asyncio.wait_for(got.get(), 60)
                    if ev.next_boot.kernel == old:
                        return ev.next_boot
            finally:
                c.close()
        nb = asyncio.run(watch())
        assert nb.one_shot and nb.ready
        assert nvkmctl(s.address, "boot", "guard", "config").stdout == \
            "boot guard: warn (from the configuration)\n"
