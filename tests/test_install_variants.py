"""Install variants: compression as the kernel's config asks, signing with
the kernel's own sign-file, and reading .modinfo from compressed modules."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import SYSTEM_MODULES, need_kernels, run_nvkmd
from nvkmd.system.modinfo import SIG_MAGIC, modinfo, read_module_bytes


def _headers_with_config(root, release: str, **options: str) -> None:
    """A copy of the real arch headers tree whose .config differs in ``options``
    (only nvkmd's install step reads those; Kbuild uses auto.conf)."""
    real = (SYSTEM_MODULES / release / "build").resolve()
    copy = root.path / real.relative_to("/")
    shutil.copytree(real, copy, symlinks=True)
    # The tree's scripts/ and tools/ are relative links into linux-kbuild.
    for link in ("scripts", "tools"):
        target = (real / link).resolve().parent
        mirror = root.path / target.relative_to("/")
        if not mirror.exists():
            mirror.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, mirror)
    config = copy / ".config"
    text = config.read_text()
    for key, value in options.items():
        text = text.replace(f"# {key} is not set", f"{key}={value}")
        text = text.replace(f"{key}=y", f"{key}={value}") if value != "y" else text
    config.write_text(text)
    d = root.modules / release
    d.mkdir(parents=True)
    os.symlink(real, d / "build")           # absolute, read inside the root
    os.symlink((SYSTEM_MODULES / release / "source").resolve(), d / "source")


@pytest.mark.parametrize("option,suffix", [("CONFIG_MODULE_COMPRESS_ZSTD", ".zst"),
                                           ("CONFIG_MODULE_COMPRESS_XZ", ".xz")])
def test_modules_are_compressed_as_the_kernel_asks(root, option, suffix):
    k = need_kernels(1)[-1]
    _headers_with_config(root, k, **{option: "y", "CONFIG_MODULE_COMPRESS_NONE": "n"})
    root.add_tiny_source()
    proc = run_nvkmd("--once", "--root", str(root.path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = sorted(p.name for p in root.nvkmd_dir(k).glob("nvidia*"))
    assert names == [f"nvidia-modeset.ko{suffix}", f"nvidia.ko{suffix}"]
    ko = root.nvkmd_dir(k) / f"nvidia.ko{suffix}"
    assert read_module_bytes(ko)[:4] == b"\x7fELF"
    assert modinfo(ko)["version"] == "9.9.1"
    dep = (root.modules / k / "modules.dep").read_text()
    assert f"updates/nvkmd/nvidia-modeset.ko{suffix}: updates/nvkmd/nvidia.ko{suffix}" in dep
    # kmod's own modinfo agrees
    out = subprocess.run(["modinfo", "-F", "version", str(ko)], capture_output=True, text=True)
    assert out.stdout.strip() == "9.9.1"


def test_modules_are_signed_with_sign_file(root):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    keydir = root.path / "etc" / "nvkmd"
    subprocess.run(["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-days", "36500", "-subj", "/CN=nvkmd test signing key/",
                    "-addext", "extendedKeyUsage=codeSigning",
                    "-keyout", str(keydir / "mok.key"), "-outform", "DER",
                    "-out", str(keydir / "mok.der")], check=True, capture_output=True)
    root.configure(root.config_text + '[signing]\nkey = "/etc/nvkmd/mok.key"\n'
                   'cert = "/etc/nvkmd/mok.der"\n')
    proc = run_nvkmd("--once", "--root", str(root.path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for ko in root.nvkmd_dir(k).glob("*.ko"):
        assert ko.read_bytes().endswith(SIG_MAGIC)
        signer = subprocess.run(["modinfo", "-F", "signer", str(ko)], capture_output=True,
                                text=True).stdout.strip()
        assert signer == "nvkmd test signing key"


def test_signing_failure_keeps_the_previous_module(root):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    assert run_nvkmd("--once", "--root", str(root.path)).returncode == 0
    before = {p.name: p.read_bytes() for p in root.nvkmd_dir(k).iterdir()}
    (root.path / "etc/nvkmd/bad.key").write_text("not a key\n")
    (root.path / "etc/nvkmd/bad.der").write_text("not a cert\n")
    root.configure(root.config_text + '[signing]\nkey = "/etc/nvkmd/bad.key"\n'
                   'cert = "/etc/nvkmd/bad.der"\n')
    proc = run_nvkmd("--once", "--force", "--root", str(root.path))
    assert proc.returncode == 1
    assert f"{k}: failed: signing the module failed" in proc.stdout
    after = {p.name: p.read_bytes() for p in root.nvkmd_dir(k).iterdir()}
    assert after == before
    assert not list(root.nvkmd_dir(k).parent.glob(".nvkmd-stage-*"))


def _dep_targets(kdir: Path) -> list[Path]:
    """Every module file modules.dep names, as paths."""
    out = []
    for line in (kdir / "modules.dep").read_text().splitlines():
        names = line.replace(":", " ").split()
        out += [p if p.is_absolute() else kdir / p for p in map(Path, names)]
    return out


def test_a_reinstall_leaves_modules_dep_naming_only_files_that_exist(root):
    # The old set waits in the stage while depmod runs: depmod must not see
    # it, or modules.dep may name the copies deleted right after (which copy
    # depmod keeps depends on directory order, so try a few stage names).
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    assert run_nvkmd("--once", "--root", str(root.path)).returncode == 0
    kdir = root.modules / k
    for _ in range(4):
        proc = run_nvkmd("--once", "--force", "--root", str(root.path))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        deps = [p for p in _dep_targets(kdir) if "nvidia" in p.name]
        assert deps and all(p.is_file() for p in deps), deps
        assert all(p.parent == root.nvkmd_dir(k) for p in deps), deps
        assert not list(root.modules.glob(".nvkmd-stage-*"))
        assert not list(root.nvkmd_dir(k).parent.glob(".nvkmd-stage-*"))
