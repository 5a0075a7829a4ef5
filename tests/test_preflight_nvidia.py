"""Preflight with Debian contrib's real nvidia-open-kernel-source (535.x):
Debian's newest linux-headers-6.1.0-N-amd64 (not installed; fetched by
the preflight with apt-get download) will break on pci_resize_resource(),
6.1.0-47's package is ready.  Nothing is installed.  Minutes each: `nvidia`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import aptrepo
from nvkmd.config import Config
from nvkmd.paths import Paths
from nvkmd.system import source as sources
from nvkmd.verdict import READY, WILL_BREAK, PreflightResult

TARBALL = Path("/usr/src/nvidia-open-kernel.tar.xz")

pytestmark = pytest.mark.nvidia


@pytest.fixture
def nvidia(root):
    if not TARBALL.exists():
        pytest.fail(f"{TARBALL} is missing: scripts/setup installs nvidia-open-kernel-source")
    os.symlink(TARBALL, root.path / "usr/src" / TARBALL.name)
    paths = Paths.build(root.path)
    src = sources.discover(paths, Config())
    assert src.kind == "debian" and src.version.startswith("535.")
    before = aptrepo.kernel_packages_state()

    def check(target: str) -> PreflightResult:
        # /lib/modules and dpkg's database read-only: nothing is written there.
        return PreflightResult.from_dict(aptrepo.isolated_preflight(root.path, "auto", target))
    yield check, src, paths
    assert aptrepo.kernel_packages_state() == before
    assert not any(paths.preflight_work.iterdir())
    assert not Path("/lib/modules", aptrepo.newest_abi()).exists()


def test_newest_debian_kernel_will_break_on_pci_resize_resource(nvidia):
    check, src, paths = nvidia
    release = aptrepo.newest_abi()
    res = check(f"linux-headers-{release}")
    assert res.verdict == WILL_BREAK, res
    assert res.message() == ("will break: the driver source does not support this kernel's API: "
                             "the arguments of pci_resize_resource() changed")
    assert "too few arguments to function" in res.first_error and "pci_resize_resource" in res.first_error
    assert res.driver_version == src.version and res.kernel == release
    assert Path(res.log).parent == paths.preflight_logs / release
    assert res.exit_status == 1


def test_debian_6_1_0_47_package_is_ready(nvidia):
    check, src, paths = nvidia
    res = check("linux-headers-6.1.0-47-amd64")
    assert res.verdict == READY, res
    assert res.message() == f"ready: 6.1.0-47-amd64 builds with NVIDIA {src.version}"
    assert "# result: success" in Path(res.log).read_text()
