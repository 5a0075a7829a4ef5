"""End to end with Debian contrib's real nvidia-open-kernel-source (535.x).

6.1.0-47 builds; 6.1.0-56 changed pci_resize_resource() and must fail with
that diagnosis and nothing installed.  Minutes per kernel: marked `nvidia`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from helpers import header_kernels, run_nvkmd
from nvkmd.system import source as sources
from nvkmd.config import Config
from nvkmd.install.engine import Engine
from nvkmd.system.modinfo import elf_section, modinfo
from nvkmd.paths import Paths

TARBALL = Path("/usr/src/nvidia-open-kernel.tar.xz")
GOOD, BAD = "6.1.0-47-amd64", "6.1.0-56-amd64"

pytestmark = pytest.mark.nvidia


@pytest.fixture
def nvidia_root(root):
    if not TARBALL.exists():
        pytest.fail(f"{TARBALL} is missing: scripts/setup installs nvidia-open-kernel-source")
    missing = {GOOD, BAD} - set(header_kernels())
    if missing:
        pytest.fail(f"headers for {sorted(missing)} are missing: scripts/setup installs them")
    os.symlink(TARBALL, root.path / "usr/src" / TARBALL.name)
    return root


def test_real_nvidia_source_builds_for_one_kernel_and_is_diagnosed_on_another(nvidia_root):
    root = nvidia_root
    root.add_kernel(GOOD)
    paths = Paths.build(root.path)
    config = Config()
    src = sources.discover(paths, config)
    assert src.kind == "debian" and src.version.startswith("535.")
    assert {"nvidia", "nvidia-modeset", "nvidia-drm", "nvidia-uvm"} <= set(src.modules)

    progress = []
    outcome = asyncio.run(Engine(paths, config).build(GOOD, src, on_progress=progress.append))
    assert outcome.result == "success", outcome
    phases = [p.phase for p in progress]
    for phase in ("conftest", "compile", "link", "install", "done"):
        assert phase in phases, phases
    assert phases.index("conftest") < phases.index("compile") < phases.index("install")
    percents = [p.percent for p in progress]
    assert percents == sorted(percents) and percents[-1] == 100

    d = root.nvkmd_dir(GOOD)
    built = {p.name.removesuffix(".ko") for p in d.glob("*.ko")}
    assert built == set(src.modules)
    for ko in d.glob("*.ko"):
        info = modinfo(ko)
        assert info["vermagic"].split()[0] == GOOD
        assert elf_section(ko.read_bytes(), ".debug_info") is None      # stripped
    assert modinfo(d / "nvidia.ko")["version"] == src.version
    dep = (root.modules / GOOD / "modules.dep").read_text()
    assert "updates/nvkmd/nvidia-drm.ko: updates/nvkmd/nvidia-modeset.ko updates/nvkmd/nvidia.ko" in dep

    # The second kernel, through the command line: a kernel API change.
    root.add_kernel(BAD)
    proc = run_nvkmd("--once", "--root", str(root.path), timeout=1200)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{BAD}: failed: the driver source does not support this kernel's API: " \
           "the arguments of pci_resize_resource() changed" in proc.stdout, proc.stdout
    assert "error: too few arguments to function" in proc.stdout
    assert f"{GOOD}:" not in proc.stdout      # already current: not rebuilt
    assert not root.nvkmd_dir(BAD).exists()
    assert not (root.modules / BAD / "modules.dep").exists()
    assert (root.path / "var/log/nvkmd" / BAD / "latest.log").read_text().count("# result: failed") == 1
