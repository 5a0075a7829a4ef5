"""fix: rescan, tidy, rebuild what is missing, depmod what is stale, say so."""

from __future__ import annotations

import asyncio
import os
import shutil

from helpers import need_kernels
from nvkmd.admin import fix
from nvkmd.system import source as sources
from nvkmd.config import Config
from nvkmd.install.engine import Engine
from nvkmd.paths import Paths


def test_fix_rebuilds_missing_runs_stale_depmod_tidies_and_reports(root):
    k47, k56 = need_kernels(2)[:2]
    root.add_kernel(k47)
    root.add_kernel(k56)
    root.add_tiny_source()
    config = Config.load(root.path / "etc/nvkmd/nvkmd.toml")
    paths = Paths.build(root.path, root.path / "etc/nvkmd/nvkmd.toml", config)
    built: list[str] = []

    def build(release: str) -> str:
        built.append(release)
        o = asyncio.run(Engine(paths, config).build(release, sources.discover(paths, config)))
        return o.result

    assert build(k47) == "success"
    built.clear()
    # k47: depmod's index older than the modules, and a staging dir a killed install left
    dep = root.modules / k47 / "modules.dep"
    os.utime(dep, (1, 1))
    (root.nvkmd_dir(k47).parent / ".nvkmd-stage-4242").mkdir()
    # a kernel without headers whose only nvidia module was copied by hand
    manual = root.add_kernel("6.1.0-3-amd64", headers=False)
    (manual / "extra").mkdir()
    shutil.copy2(root.nvkmd_dir(k47) / "nvidia.ko", manual / "extra" / "nvidia.ko")

    steps = fix.plan(paths, config)
    assert {(s.kernel, s.action) for s in steps} == {
        (k56, "rebuild"), (k47, "depmod"), (k47, "tidy"), ("6.1.0-3-amd64", "report"),
        ("6.1.0-3-amd64", "depmod")}     # its module cannot load without modules.dep
    report = fix.run(paths, config, build)
    assert built == [k56]
    text = "\n".join(report)
    assert f"{k56}: rebuild (no nvidia module): success" in text
    assert f"{k47}: ran depmod (modules.dep is older than the modules" in text
    assert f"{k47}: removed leftovers of an interrupted install: .nvkmd-stage-4242" in text
    assert "6.1.0-3-amd64: its nvidia module is manual" in text
    assert "6.1.0-3-amd64: ran depmod (modules.dep is missing)" in text
    assert dep.stat().st_mtime > 1
    assert not (root.nvkmd_dir(k47).parent / ".nvkmd-stage-4242").exists()
    assert (root.nvkmd_dir(k56) / "nvidia.ko").is_file()
    # the hand-copied module is reported, never replaced
    assert (manual / "extra" / "nvidia.ko").is_file() and not (manual / "updates").exists()
    again = fix.run(paths, config, build)
    assert again == ["6.1.0-3-amd64: its nvidia module is manual, not nvkmd's or DKMS's; "
                     "nvkmd leaves it alone"]


def test_fix_with_nothing_to_do_says_so(root):
    config = Config()
    paths = Paths.build(root.path, root.path / "etc/nvkmd/nvkmd.toml", config)
    root.add_tiny_source()
    config = Config.load(root.path / "etc/nvkmd/nvkmd.toml")
    assert fix.run(paths, config, lambda r: "unexpected") == \
        ["nothing to fix: every kernel with headers has a current module"]
