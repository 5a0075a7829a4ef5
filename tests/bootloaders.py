"""Boot loader configurations made by the boot loaders' own tools on a test
root, and the boot loaders' own answer to "what boots next".

- GRUB: the real ``grub-mkconfig`` with the real /etc/grub.d scripts runs in
  a private mount namespace where the test root's boot/ and etc/default/ are
  bind-mounted over /boot and /etc/default (grub-mkconfig has no --root);
  ``grub-editenv`` / ``grub-set-default`` / ``grub-reboot`` take the test
  root's files directly.  The oracle is GRUB itself: ``grub-emu`` (GRUB's
  normal mode as a program) runs a copy of the generated grub.cfg in which
  each entry's ``linux`` command prints its kernel image instead of loading
  it, so GRUB's own menu code picks the entry.
- systemd-boot: the real ``kernel-install`` (layout=bls) writes the entries;
  the real ``bootctl --esp-path= --boot-path= list`` marks the default it
  computes from loader.conf (bootctl wants the ESP to be a mount point, and
  SYSTEMD_RELAX_ESP_CHECKS=1 to accept a non-FAT one).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nvkmd.inspect.bls import release_of_image

TOOLS = ("grub-mkconfig", "grub-editenv", "grub-set-default", "grub-reboot", "grub-emu",
         "bootctl", "kernel-install", "unshare")
MACHINE_ID = "0123456789abcdef0123456789abcdef"


def need_tools() -> None:
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        pytest.fail(f"the boot loader tests need {missing} (scripts/setup installs "
                    "grub-common grub2-common grub-pc-bin grub-emu systemd-boot)")
    if os.geteuid() != 0:
        pytest.fail("grub-mkconfig and bootctl run in a private mount namespace: needs root")


def run(*cmd: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env={**os.environ, **(env or {})})
    if check and r.returncode:
        raise AssertionError(f"{cmd} exited {r.returncode}: {r.stderr or r.stdout}")
    return r


# -- GRUB ----------------------------------------------------------------------------

def stand_in_kernels(root: Path, releases: list[str]) -> None:
    boot = root / "boot"
    boot.mkdir(parents=True, exist_ok=True)
    for k in releases:
        (boot / f"vmlinuz-{k}").write_text(f"stand-in kernel image {k}\n")
        (boot / f"initrd.img-{k}").write_text(f"stand-in initrd {k}\n")


def grub_root(root: Path, releases: list[str], default: str = "0", extra: str = "") -> Path:
    """Kernel images, /etc/default/grub, an empty grubenv (as grub-install
    makes it) and grub.cfg from the real grub-mkconfig.  Returns grub.cfg."""
    stand_in_kernels(root, releases)
    (root / "boot" / "grub").mkdir(parents=True, exist_ok=True)
    etc_default = root / "etc" / "default"
    etc_default.mkdir(parents=True, exist_ok=True)
    (etc_default / "grub").write_text(
        f'GRUB_DEFAULT="{default}"\nGRUB_TIMEOUT=5\nGRUB_DISTRIBUTOR=Debian\n'
        f'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n{extra}')
    env = root / "boot" / "grub" / "grubenv"
    if not env.exists():
        run("grub-editenv", str(env), "create")
    return grub_mkconfig(root)


def grub_mkconfig(root: Path) -> Path:
    script = ('mount --bind "$1/boot" /boot && mount --bind "$1/etc/default" /etc/default '
              '&& exec grub-mkconfig -o /boot/grub/grub.cfg')
    run("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(root))
    return root / "boot" / "grub" / "grub.cfg"


def editenv(root: Path, *args: str) -> str:
    return run("grub-editenv", str(root / "boot" / "grub" / "grubenv"), *args).stdout


def grub_boots(root: Path, tmp: Path) -> str:
    """The kernel release real GRUB boots from the root's grub.cfg and grubenv."""
    prefix = tmp / "grub-emu"
    if prefix.exists():
        shutil.rmtree(prefix)
    prefix.mkdir(parents=True)
    cfg = (root / "boot" / "grub" / "grub.cfg").read_text()
    # The menu, the default and grubenv stay as they are; only what an
    # entry does when booted changes, and the graphical terminal that
    # grub-emu cannot show.
    cfg = re.sub(r"^(\s*)linux\s+(\S+).*$",
                 lambda m: f'{m.group(1)}echo "K={release_of_image(m.group(2))}"; halt', cfg, flags=re.M)
    cfg = re.sub(r"set timeout=\d+", "set timeout=0", cfg)
    cfg = re.sub(r"^terminal_output gfxterm$", "terminal_output console", cfg, flags=re.M)
    cfg = re.sub(r"^(\s*)(load_video|insmod gfxterm)$", r"\1true", cfg, flags=re.M)
    (prefix / "grub.cfg").write_text(cfg)
    shutil.copy(root / "boot" / "grub" / "grubenv", prefix / "grubenv")
    r = subprocess.run(["grub-emu", "-d", str(prefix)], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60, env={**os.environ, "TERM": "dumb"})
    # grub-emu's console wraps long lines: join them again.
    out = (r.stdout + r.stderr).replace(b"\n\r", b"")
    m = re.search(rb"K=([0-9][^\s\x1b]*)", out)
    assert m, f"grub-emu booted nothing: {out[-2000:]!r}"
    return m.group(1).decode()


# -- systemd-boot and BLS --------------------------------------------------------------

def kernel_install(root: Path, boot_root: Path, releases: list[str],
                   machine_id: str = MACHINE_ID) -> None:
    """BLS Type #1 entries for ``releases`` under ``boot_root`` by the real
    kernel-install (layout=bls from the test root's install.conf)."""
    conf = root / "etc" / "kernel"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "install.conf").write_text("layout=bls\n")
    (conf / "cmdline").write_text("root=/dev/vda ro quiet\n")
    boot_root.mkdir(parents=True, exist_ok=True)
    images = root / "kernel-images"
    images.mkdir(exist_ok=True)
    for k in releases:
        img = images / f"vmlinuz-{k}"
        img.write_text(f"stand-in kernel image {k}\n")
        run("kernel-install", "add", k, str(img), env={
            "BOOT_ROOT": str(boot_root), "KERNEL_INSTALL_CONF_ROOT": str(conf),
            "MACHINE_ID": machine_id,
            # only the plugin that writes the entry: depmod and initrd
            # generation would act on the host for these releases.
            "KERNEL_INSTALL_PLUGINS": "/usr/lib/kernel/install.d/90-loaderentry.install"})


def bootctl(esp: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    script = 'mount --bind "$1" "$1" && shift && exec bootctl --no-pager "$@"'
    return run("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
               str(esp), f"--esp-path={esp}", f"--boot-path={esp}", *args,
               env={"SYSTEMD_RELAX_ESP_CHECKS": "1"}, check=check)


def bootctl_default(esp: Path) -> str:
    """The entry id bootctl marks "(default)" (its own reading of loader.conf)."""
    out = bootctl(esp, "list").stdout
    ident = None
    for block in out.split("\n\n"):
        if "(default)" in block:
            m = re.search(r"^\s*id: (\S+)", block, re.M)
            ident = m.group(1) if m else None
    assert ident, f"bootctl marks no default:\n{out}"
    return ident


def write_efivar(efivars: Path, name: str, value: str) -> None:
    """An EFI variable as efivarfs shows it: attributes (NV|BS|RT) then the
    NUL-terminated UTF-16LE value.  bootctl refuses to write them here (no
    EFI boot in this container), so the test writes the bytes."""
    from nvkmd.inspect.sdboot import LOADER_GUID
    efivars.mkdir(parents=True, exist_ok=True)
    (efivars / f"{name}-{LOADER_GUID}").write_bytes(
        (7).to_bytes(4, "little") + (value + "\0").encode("utf-16-le"))
