"""The installed, hardened service builds Debian's real NVIDIA source.

`apt-get install nvidia-open-kernel-source` (contrib, 535.x) beside nvkmd
with its shipped configuration (source "auto"); nvkmd then builds it for
the one kernel with headers, GOOD, under its sandbox.  Minutes: marked
`nvidia` like the other real-NVIDIA tests.  (6.1.0-56 changed
pci_resize_resource() and does not build; tests/test_nvidia_e2e.py covers
that diagnosis.)
"""

from __future__ import annotations

import json

import pytest

from sysimage import GOOD
from sysnvkmd import apt, assert_depmod_current, jobs, module_files, modules_dep, wait_kernel_ready

pytestmark = [pytest.mark.system, pytest.mark.nvidia]

MODULES = {"nvidia.ko", "nvidia-modeset.ko", "nvidia-drm.ko", "nvidia-uvm.ko"}


def test_installed_service_builds_debians_nvidia_open_source(installed):
    c = installed
    apt(c, "install nvidia-open-kernel-source")
    s = wait_kernel_ready(c, GOOD, timeout=1800)
    assert s["source"]["kind"] == "debian" and s["source"]["version"].startswith("535."), s["source"]
    done = [j for j in jobs(c) if j["kernel"] == GOOD]
    assert done and done[-1]["state"] == "succeeded", done
    assert MODULES <= set(module_files(c, GOOD))
    for ko in MODULES:
        vermagic = c.run(f"modinfo -F vermagic /lib/modules/{GOOD}/updates/nvkmd/{ko}").stdout
        assert vermagic.split()[0] == GOOD, (ko, vermagic)
    version = c.run(f"modinfo -F version /lib/modules/{GOOD}/updates/nvkmd/nvidia.ko").stdout.strip()
    assert version == s["source"]["version"]
    assert ("updates/nvkmd/nvidia-drm.ko: updates/nvkmd/nvidia-modeset.ko updates/nvkmd/nvidia.ko"
            in modules_dep(c, GOOD))
    assert_depmod_current(c, GOOD)
    # The journal has the build as this kernel's event, with its fields.
    r = c.run(f"journalctl -u nvkmd -o json --no-pager NVKMD_KERNEL={GOOD}")
    events = [json.loads(line) for line in r.stdout.splitlines()]
    finished = [e for e in events if e.get("NVKMD_EVENT") == "build finished"]
    assert finished and finished[-1].get("NVKMD_RESULT") == "success", finished[-1:] or events[-5:]
