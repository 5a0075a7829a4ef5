"""Version consistency and Secure Boot, on test roots holding modules the real
engine built (and signed with real sign-file), packages installed with the
real dpkg, real openssl certificates and efivars files in the kernel's format."""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from helpers import need_kernels
from nvkmd.inspect import origin
from nvkmd.inspect import secureboot
from nvkmd.system import source as sources
from nvkmd.inspect import versions
from nvkmd.config import Config
from nvkmd.install.engine import Engine
from nvkmd.paths import Paths

GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
SHIM = "605dab50-e046-4300-abb6-3dd810dd8b23"
NV_ATTRS = struct.pack("<I", 0x7)     # non-volatile, boot service, runtime access


def make_paths(root, config: Config) -> Paths:
    return Paths.build(root.path, root.path / "etc/nvkmd/nvkmd.toml", config)


def build_tiny(root, config_text: str = "") -> tuple[Paths, Config, str]:
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    root.configure(root.config_text + config_text)
    config = Config.load(root.path / "etc/nvkmd/nvkmd.toml")
    paths = make_paths(root, config)
    outcome = asyncio.run(Engine(paths, config).build(k, sources.discover(paths, config)))
    assert outcome.result == "success", outcome
    return paths, config, k


def dpkg_install(root, name: str, version: str, files: dict[str, Path], tmp: Path) -> None:
    """Install a package with the real dpkg into the test root."""
    admin = root.path / "var/lib/dpkg"
    for d in ("info", "updates"):
        (admin / d).mkdir(parents=True, exist_ok=True)
    (admin / "status").touch()
    pkg = tmp / f"{name}-pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text(f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
                                        "Maintainer: nvkmd tests <t@nvkmd.invalid>\n"
                                        "Description: test package\n")
    for dest, src in files.items():
        (pkg / dest.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, pkg / dest.lstrip("/"))
    subprocess.run(["dpkg-deb", "--build", str(pkg), str(tmp / f"{name}.deb")], check=True,
                   capture_output=True)
    subprocess.run(["dpkg", f"--root={root.path}", "--force-not-root", "--force-script-chrootless",
                    "--log=/dev/null", "-i", str(tmp / f"{name}.deb")], check=True, capture_output=True)


def make_cert(d: Path, cn: str) -> tuple[Path, Path]:
    d.mkdir(parents=True, exist_ok=True)
    key, cert = d / f"{cn}.key", d / f"{cn}.pem"
    subprocess.run(["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={cn}/", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return key, cert


def der(cert: Path) -> bytes:
    return subprocess.run(["openssl", "x509", "-in", str(cert), "-outform", "DER"], check=True,
                          capture_output=True).stdout


def signature_list(*certs: bytes) -> bytes:
    """EFI_SIGNATURE_LISTs (one X.509 certificate each), as shim stores MokListRT."""
    out = b""
    x509 = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072").bytes_le
    owner = uuid.UUID(SHIM).bytes_le
    for c in certs:
        size = 16 + len(c)
        out += x509 + struct.pack("<III", 28 + size, 0, size) + owner + c
    return out


def efivar(root, name: str, guid: str, data: bytes) -> None:
    d = root.path / "sys/firmware/efi/efivars"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}-{guid}").write_bytes(NV_ATTRS + data)


# -- versions -------------------------------------------------------------------

def test_compare_is_pure():
    assert versions.compare("535.261.03", "535.261.03", True) == (True, "")
    ok, hint = versions.compare("535.261.03", "550.54.14", True)
    assert not ok and "535.261.03" in hint and "550.54.14" in hint and "user-space driver is newer" in hint
    ok, hint = versions.compare("535.261.03", "", False)
    assert not ok and "GSP firmware for 535.261.03 is missing" in hint
    assert versions.compare("", "535.261.03", None) == (True, "")


def test_versions_from_library_names_module_and_firmware(root):
    paths, config, k = build_tiny(root)
    assert versions.module_version(paths, k) == "9.9.1"
    libdir = root.path / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    for name in ("libnvidia-glcore.so.9.9.1", "libcuda.so.9.9.1", "libnvidia-ml.so.9.9.1",
                 "libnvidia-ml.so.1", "libcuda.so.1"):
        (libdir / name).write_bytes(b"\x7fELF")
    report = versions.check(paths, "9.9.1")
    assert (report.userspace, report.userspace_from, report.firmware) == ("9.9.1", "libraries", "missing")
    assert not report.consistent and "GSP firmware for 9.9.1 is missing" in report.hint
    fw = root.path / "lib/firmware/nvidia/9.9.1"
    fw.mkdir(parents=True)
    (fw / "gsp_ga10x.bin").write_bytes(b"gsp")
    report = versions.check(paths, "9.9.1")
    assert report.firmware == "present" and report.consistent and report.hint == ""
    info = versions.driver_info(paths, config)
    assert (info.kernel, info.module_version, info.userspace_version, info.firmware) == \
        (k, "9.9.1", "9.9.1", "present")


def test_userspace_version_from_dpkg_and_a_mismatch_hint(root, tmp_path):
    paths, config, k = build_tiny(root)
    dpkg_install(root, "libnvidia-glcore", "535.261.03-1", {}, tmp_path)
    assert versions.userspace_from_packages(paths) == ("535.261.03", "dpkg")
    report = versions.check(paths, versions.module_version(paths, k))
    assert report.userspace_from == "dpkg" and not report.consistent
    assert "kernel module is 9.9.1 but the user-space driver is 535.261.03" in report.hint


def test_origin_distro_and_manual(root, tmp_path):
    paths, config, k = build_tiny(root)
    built = tmp_path / "nvidia.ko"
    shutil.copy2(root.nvkmd_dir(k) / "nvidia.ko", built)
    shutil.rmtree(root.nvkmd_dir(k))
    dest = f"/lib/modules/{k}/kernel/drivers/video/nvidia.ko"
    (root.modules / k / "extra").mkdir()
    shutil.copy2(built, root.modules / k / "extra" / "nvidia.ko")
    assert origin.of(paths, k) == "manual"
    (root.modules / k / "extra" / "nvidia.ko").unlink()
    dpkg_install(root, "nvidia-kernel-test", "1.0", {dest: built}, tmp_path)
    assert origin.details(paths, k)[0::2] == ("distro", "nvidia-kernel-test")
    assert versions.module_version(paths, k) == "9.9.1"


# -- Secure Boot ------------------------------------------------------------------

def test_secure_boot_state_from_efivars(root):
    config = Config()
    paths = make_paths(root, config)
    assert secureboot.sb_state(paths) == ("unknown", "")
    efivar(root, "SecureBoot", GLOBAL, b"\x01")
    assert secureboot.sb_state(paths) == ("enabled", "efivars")
    efivar(root, "SecureBoot", GLOBAL, b"\x00")
    assert secureboot.sb_state(paths) == ("disabled", "efivars")


def test_this_machine_without_efi_is_unknown_through_mokutil():
    if Path("/sys/firmware/efi").exists():
        pytest.skip("this machine has EFI variables; the case is a machine without them")
    if not shutil.which("mokutil"):
        pytest.fail("mokutil is not installed (scripts/setup installs it)")
    out = subprocess.run(["mokutil", "--sb-state"], capture_output=True, text=True)
    assert "EFI variables are not supported" in out.stdout + out.stderr   # the real tool says so
    paths = Paths.build("/")
    assert secureboot.sb_state(paths) == ("unknown", "")
    assert secureboot.parse_sb_state("SecureBoot enabled\n") == "enabled"


def test_module_signed_with_a_key_that_is_not_enrolled(root, tmp_path):
    key, cert = make_cert(root.path / "etc/nvkmd", "nvkmd-test-signing")
    _, other = make_cert(tmp_path / "other", "someone-else")
    paths, config, k = build_tiny(root, '[signing]\nkey = "/etc/nvkmd/nvkmd-test-signing.key"\n'
                                        'cert = "/etc/nvkmd/nvkmd-test-signing.pem"\n')
    efivar(root, "SecureBoot", GLOBAL, b"\x01")
    efivar(root, "MokListRT", SHIM, signature_list(der(other)))
    module = root.nvkmd_dir(k) / "nvidia.ko"
    sb = secureboot.check(paths, config, module)
    assert sb.state == "enabled"
    assert [(c.used_by, c.enrolled) for c in sb.certs] == [("nvkmd", "no")]
    assert sb.module.signed and sb.module.key == sb.certs[0].serial
    assert sb.module.signer == "nvkmd-test-signing" and sb.module.enrolled == "no"
    assert "signed with a key that is not enrolled" in sb.hint and "will not load" in sb.hint
    info = versions.driver_info(paths, config)
    assert (info.secure_boot, info.signing_key, info.module_signature) == \
        ("enabled", "not enrolled", "signed, key not enrolled")
    # enrolled: the same answer from shim's list
    efivar(root, "MokListRT", SHIM, signature_list(der(other), der(cert)))
    sb = secureboot.check(paths, config, module)
    assert sb.certs[0].enrolled == "yes" and sb.module.enrolled == "yes" and sb.hint == ""


def test_unsigned_module_under_secure_boot_and_unknown_without_efivars(root):
    paths, config, k = build_tiny(root)
    module = root.nvkmd_dir(k) / "nvidia.ko"
    sb = secureboot.check(paths, config, module)
    assert (sb.state, sb.module.signed, sb.hint) == ("unknown", False, "")
    efivar(root, "SecureBoot", GLOBAL, b"\x01")
    sb = secureboot.check(paths, config, module)
    assert "unsigned: it will not load" in sb.hint
