"""The initramfs step: after a successful install only, and only when the
NVIDIA modules are part of the initramfs.

Checked with real dracut (Debian's dracut-core) regenerating a test root's
image from the test root's modules and dracut configuration, read back with
lsinitrd; and with a configured command.  A failed build never runs it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import need_kernels, run_nvkmd
from nvkmd.install import initramfs

BROKEN_C = "this is not C;\n"


def break_source(tree: Path) -> None:
    """A real compile error in the tiny tree (its content hash changes, so
    nvkmd sees a new source and rebuilds)."""
    (tree / "kernel-open" / "nvidia" / "nv.c").write_text(BROKEN_C)


def build_log(root, kernel: str) -> str:
    return (root.path / "var/log/nvkmd" / kernel / "latest.log").read_text()


def test_configured_command_runs_after_success_only(root):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    tree = root.add_tiny_source()
    record = root.path / "initramfs.log"
    root.configure(root.config_text + f"[install]\ninitramfs = \"sh -c 'echo {{kernel}} >> {record}'\"\n")
    ok = run_nvkmd("--once", "--root", str(root.path))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert record.read_text() == f"{k}\n"
    assert f"$ sh -c 'echo {k} >> {record}'" in build_log(root, k)

    break_source(tree)
    bad = run_nvkmd("--once", "--root", str(root.path))
    assert bad.returncode == 1 and f"{k}: failed" in bad.stdout, bad.stdout + bad.stderr
    assert record.read_text() == f"{k}\n", "the step ran after a failed build"
    assert "initramfs" not in build_log(root, k)


def test_failing_initramfs_command_fails_the_build_with_its_output(root):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    root.configure(root.config_text + "[install]\ninitramfs = \"sh -c 'echo cannot write {kernel} >&2; exit 3'\"\n")
    proc = run_nvkmd("--once", "--root", str(root.path))
    assert proc.returncode == 1 and f"{k}: failed" in proc.stdout, proc.stdout + proc.stderr
    log = build_log(root, k)
    assert f"cannot write {k}" in log
    assert f"{initramfs.MARK} sh exited 3: cannot write {k}" in log


def dracut_root(root, kernel: str, nvidia_in_config: bool) -> Path:
    """The test root's dracut configuration (kept small so dracut takes a
    second) and the kernel's existing image, as a kernel package left it."""
    etc = root.path / "etc"
    (etc / "dracut.conf.d").mkdir(parents=True, exist_ok=True)
    (etc / "dracut.conf").write_text('hostonly="no"\ndracutmodules+=" kernel-modules "\n'
                                     'early_microcode="no"\ndo_strip="no"\ncompress="cat"\n')
    if nvidia_in_config:
        # Early KMS, as a user following NVIDIA's advice would set it up.
        (etc / "dracut.conf.d" / "nvidia.conf").write_text(
            '# early KMS\nadd_drivers+=" nvidia nvidia-modeset "\n')
    image = root.path / "boot" / f"initramfs-{kernel}.img"
    image.parent.mkdir(exist_ok=True)
    image.write_bytes(b"the image the kernel package made\n")
    return image


def image_file(image: Path, path: str) -> bytes:
    return subprocess.run(["lsinitrd", "-f", path, str(image)], capture_output=True,
                          check=True, timeout=60).stdout


def test_real_dracut_regenerates_the_image_after_success_only(root):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    tree = root.add_tiny_source()
    image = dracut_root(root, k, nvidia_in_config=True)
    ok = run_nvkmd("--once", "--root", str(root.path))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    log = build_log(root, k)
    assert f"{initramfs.MARK} regenerating with dracut: the configuration puts nvidia, " \
           f"nvidia_modeset into {image.name}" in log
    assert f"$ dracut --force --kmoddir {root.modules / k}" in log
    installed = (root.nvkmd_dir(k) / "nvidia.ko").read_bytes()
    inside = image_file(image, f"usr/lib/modules/{k}/updates/nvkmd/nvidia.ko")
    assert inside == installed, "the image does not carry the module nvkmd just installed"

    before = (image.read_bytes(), image.stat().st_mtime_ns)
    break_source(tree)
    bad = run_nvkmd("--once", "--root", str(root.path))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert (image.read_bytes(), image.stat().st_mtime_ns) == before
    assert initramfs.MARK not in build_log(root, k) and "$ dracut" not in build_log(root, k)


def test_auto_and_never_leave_other_images_alone(root):
    """Each case reinstalls from nvkmd's cache (--force), so only the first compiles."""
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    image = dracut_root(root, k, nvidia_in_config=False)
    ok = run_nvkmd("--once", "--root", str(root.path))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert image.read_bytes() == b"the image the kernel package made\n"
    assert f"{initramfs.MARK} skipped: the NVIDIA modules are not part of {image.name}" \
        in build_log(root, k)

    image.unlink()
    assert run_nvkmd("--once", "--root", str(root.path), "--force").returncode == 0
    assert not image.exists()
    assert f"{initramfs.MARK} skipped: the kernel has no initramfs image" in build_log(root, k)

    image = dracut_root(root, k, nvidia_in_config=True)
    root.configure(root.config_text + '[install]\ninitramfs = "never"\n')
    assert run_nvkmd("--once", "--root", str(root.path), "--force").returncode == 0
    assert image.read_bytes() == b"the image the kernel package made\n"
    assert initramfs.MARK not in build_log(root, k)


# -- the decisions ---------------------------------------------------------------

def test_configured_modules_per_generator():
    assert initramfs.configured_modules("update-initramfs", [
        "# List of modules\nnvidia-drm modeset=1\n  nvidia_modeset\n#nvidia_uvm\n", "ext4\n"]) == \
        {"nvidia_drm", "nvidia_modeset", "ext4"}
    assert initramfs.configured_modules("mkinitcpio", [
        "MODULES=(i915 nvidia\n nvidia_modeset) # early KMS\nHOOKS=(base udev)\n",
        "MODULES+=(nvidia-drm)\n#MODULES=(nvidia_uvm)\n"]) == \
        {"i915", "nvidia", "nvidia_modeset", "nvidia_drm"}
    assert initramfs.configured_modules("dracut", [
        'add_drivers+=" nvidia nvidia-drm "\nforce_drivers+="nvidia_modeset"\n',
        "# add_drivers+=\" nvidia_uvm \"\nomit_drivers+=\" nvidia-drm \"\n"]) == \
        {"nvidia", "nvidia_modeset"}


def test_image_modules_from_listers():
    lsinitrd = ("-rw-r--r--   1 root root 6480 Nov 21 16:32 usr/lib/modules/6.1.0-47-amd64/"
                "updates/nvkmd/nvidia.ko\n"
                "-rw-r--r--   1 root root 99 Nov 21 16:32 usr/lib/modules/6.1.0-47-amd64/"
                "kernel/fs/ext4/ext4.ko.xz\n")
    lsinitramfs = "usr/lib/modules/6.1.0-47-amd64/updates/dkms/nvidia-drm.ko.zst\nusr/bin/kmod\n"
    assert initramfs.image_modules(lsinitrd) == {"nvidia", "ext4"}
    assert initramfs.image_modules(lsinitramfs) == {"nvidia_drm"}


def test_decide():
    img = Path("/boot/initrd.img-6.1.0-47-amd64")
    nv = {"nvidia", "nvidia-modeset"}
    assert not initramfs.decide(nv, {"nvidia"}, None, None).run
    assert initramfs.decide(nv, {"nvidia_modeset"}, None, img).run
    assert initramfs.decide(nv, set(), {"nvidia", "ext4"}, img).run
    assert not initramfs.decide(nv, {"i915"}, {"ext4"}, img).run
    assert not initramfs.decide(nv, set(), None, img).run


def test_custom_command_keeps_words():
    assert initramfs.custom_command("sh -c 'mkinitrd {kernel} > /x'", "6.1.0-47-amd64") == \
        ["sh", "-c", "mkinitrd 6.1.0-47-amd64 > /x"]
