"""End to end with Debian contrib's real nvidia-open-kernel-dkms.

Installing it runs DKMS inside apt for every kernel with headers: NVIDIA
535 builds for 6.1.0-47 (about 2.5 minutes on 2 cores) and fails for
6.1.0-56 (pci_resize_resource() changed), so the package's postinst fails
and apt reports an error while 6.1.0-47 has DKMS's module.  The package
depends on firmware-nvidia-gsp (non-free-firmware) and, through
nvidia-open-kernel-support, on nvidia-alternative (non-free): the test
enables those components for the duration (an apt sources file of its own)
and purges every package it brought in afterwards.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from helpers import need_kernels
from nvkmd.system import dkms
from nvkmd.inspect import origin
from nvkmd.system import source as sources
from nvkmd.inspect import versions
from nvkmd.config import Config
from nvkmd.install.engine import Engine
from nvkmd.paths import Paths

PACKAGE = "nvidia-open-kernel-dkms"
DKMS_NAME = "nvidia-current-open"
VERSION = "535.261.03"
GOOD_KERNEL = "6.1.0-47-amd64"
SOURCES = Path("/etc/apt/sources.list.d/nvkmd-test-non-free.sources")
SOURCES_TEXT = """\
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: non-free non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
APT_ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive")


def apt(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", "-y", "-q", *args], capture_output=True, text=True,
                          env=APT_ENV, timeout=timeout, stdin=subprocess.DEVNULL)


def installed_packages() -> set[str]:
    p = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package}\\n"],
                       capture_output=True, text=True, check=True)
    return {line.split()[1] for line in p.stdout.splitlines()
            if len(line.split()) == 2 and not line.startswith(("un", "pn"))}


def installed(pkg: str) -> bool:
    p = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", pkg],
                       capture_output=True, text=True)
    return p.returncode == 0 and p.stdout.startswith(("ii", "iF", "iU", "iH"))


@pytest.fixture
def package_system():
    if installed(PACKAGE):
        pytest.fail(f"{PACKAGE} is already installed; this test installs and purges it itself")
    if GOOD_KERNEL not in need_kernels(1):
        pytest.fail(f"this test needs the headers of {GOOD_KERNEL} (scripts/setup installs them)")
    modules = Path("/lib/modules")
    before = {d.name: set(os.listdir(d)) for d in modules.iterdir() if d.is_dir()}
    had_mok = Path("/var/lib/dkms/mok.key").exists()
    packages_before = installed_packages()
    SOURCES.write_text(SOURCES_TEXT)
    try:
        up = apt("update")
        assert up.returncode == 0, up.stdout + up.stderr
        yield
    finally:
        brought = sorted(installed_packages() - packages_before)
        purge = apt("purge", *brought) if brought else None
        SOURCES.unlink(missing_ok=True)
        apt("update")
        for d in modules.iterdir():
            for entry in set(os.listdir(d)) - before.get(d.name, set()):
                p = d / entry
                subprocess.run(["rm", "-rf", "--one-file-system", str(p)], check=False)
        if not had_mok:
            for f in ("mok.key", "mok.pub"):
                Path("/var/lib/dkms", f).unlink(missing_ok=True)
        assert not installed(PACKAGE), purge.stdout + purge.stderr if purge else ""
        assert installed_packages() == packages_before
        assert not any(e.name == DKMS_NAME for e in dkms.parse_status(
            subprocess.run(["dkms", "status"], capture_output=True, text=True).stdout))


@pytest.mark.nvidia
def test_debian_nvidia_open_kernel_dkms(package_system, tmp_path):
    started = time.monotonic()
    inst = apt("install", "--no-install-recommends", PACKAGE)
    took = time.monotonic() - started
    print(f"apt-get install {PACKAGE}: exit {inst.returncode} after {took:.0f}s")
    out = inst.stdout + inst.stderr
    # DKMS ran inside apt, for every kernel with headers
    assert f"Building initial module for {GOOD_KERNEL}" in out, out[-4000:]

    config = Config(state_dir=str(tmp_path / "state"), logs_dir=str(tmp_path / "logs"))
    paths = Paths.build("/", tmp_path / "nvkmd.toml", config)
    # nvkmd sees DKMS's registration and picks the package's tree as its source
    regs = {r.spec: r for r in dkms.registrations(paths)}
    assert f"{DKMS_NAME}/{VERSION}" in regs
    src = sources.discover(paths, config, unpack=False)
    assert (src.kind, src.version) == ("dkms", VERSION)
    assert src.origin == Path(f"/usr/src/{DKMS_NAME}-{VERSION}")
    choice = dkms.choose("auto", paths, src)
    assert choice.backend == "dkms" and choice.registration.spec == f"{DKMS_NAME}/{VERSION}"

    # origin dkms for the kernel DKMS built, with Debian's renamed modules
    kind, files, owner = origin.details(paths, GOOD_KERNEL)
    assert (kind, owner) == ("dkms", f"{DKMS_NAME}/{VERSION}")
    assert any(f.name.startswith(DKMS_NAME) and "/updates/dkms/" in str(f) for f in files), files
    assert versions.module_version(paths, GOOD_KERNEL) == VERSION
    assert versions.check(paths, VERSION).firmware == "present"     # firmware-nvidia-gsp came along

    # nothing to do for nvkmd there: DKMS's module is current, and no second one is made
    import asyncio
    outcome = asyncio.run(Engine(paths, config).build(GOOD_KERNEL, src))
    assert outcome.result == "up-to-date", outcome
    assert not (Path("/lib/modules") / GOOD_KERNEL / "updates" / "nvkmd").exists()
