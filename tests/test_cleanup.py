"""cleanup: dry run, --keep, --execute, and the running kernel, on a test
root holding modules the real engine built against real headers."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from helpers import need_kernels
from nvkmd.install import cleanup as cl
from nvkmd.system import source as sources
from nvkmd.config import Config
from nvkmd.install.engine import Engine
from nvkmd.errors import NvkmdError
from nvkmd.paths import Paths

RUNNING = "6.1.0-5-amd64"          # running, its image already removed
OLD = ("6.1.0-10-amd64", "6.1.0-20-amd64", "6.1.0-30-amd64")   # installed
GONE = "6.1.0-7-amd64"             # removed kernel: only our updates/ left


@pytest.fixture
def machine(root, monkeypatch):
    """Kernels with nvkmd modules: the real header kernel built by the engine,
    the others given copies of its modules (cleanup never loads them)."""
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    config = Config.load(root.path / "etc/nvkmd/nvkmd.toml")
    paths = Paths.build(root.path, root.path / "etc/nvkmd/nvkmd.toml", config)
    outcome = asyncio.run(Engine(paths, config).build(k, sources.discover(paths, config)))
    assert outcome.result == "success", outcome
    boot = root.path / "boot"
    boot.mkdir()
    (boot / f"vmlinuz-{k}").write_bytes(b"image")
    for r in (RUNNING, GONE, *OLD):
        shutil.copytree(root.nvkmd_dir(k), root.nvkmd_dir(r))
    for r in OLD:
        (boot / f"vmlinuz-{r}").write_bytes(b"image")
    # a module someone copied by hand into the removed kernel: never ours to delete
    (root.modules / GONE / "extra").mkdir()
    shutil.copy2(root.nvkmd_dir(k) / "nvidia.ko", root.modules / GONE / "extra" / "nvidia.ko")
    (root.modules / GONE / "modules.dep").write_text("updates/nvkmd/nvidia.ko:\n")
    monkeypatch.setenv("NVKMD_RUNNING_KERNEL", RUNNING)
    return paths, k


def removed(plan):
    return [i.release for i in plan.to_remove]


def test_decide_is_pure_and_never_removes_the_running_kernel():
    F = cl.Facts
    facts = [F("5.0", True, True, ()), F("6.0", True, True, ()), F("4.0", False, True, ()),
             F("3.0", False, True, (("nvidia", "1.0"),)), F("7.0", True, False, ())]
    items = cl.decide(facts, running="4.0", keep=1)
    assert [(i.release, i.action, i.reason) for i in items] == [
        ("6.0", "keep", "newest 1"), ("5.0", "remove", "older than the 1 newest"),
        ("4.0", "keep", "running"), ("3.0", "remove", "not installed")]
    assert "7.0" not in [i.release for i in items]       # nothing of ours or DKMS's there
    assert all(i.action == "keep" for i in cl.decide(facts, running="3.0", keep=1)
               if i.release == "3.0")
    assert [i.reason for i in cl.decide(facts, "9.9", 0, busy="3.0") if i.release == "3.0"] \
        == ["building"]


def test_dry_run_lists_what_would_go_and_changes_nothing(machine, root):
    paths, k = machine
    plan = cl.cleanup(paths)
    assert removed(plan) == [GONE]
    text = "\n".join(plan.lines())
    assert "nvkmd cleanup (dry run)" in text
    assert f"Running kernel: {RUNNING}" in text
    assert f"✓ {RUNNING} (running): nvkmd" in text
    assert f"✗ {GONE} (not installed): nvkmd" in text
    assert "Dry run - no changes made." in text
    for r in (RUNNING, GONE, k, *OLD):
        assert (root.nvkmd_dir(r) / "nvidia.ko").is_file()


def test_keep_keeps_the_newest_installed_kernels_plus_the_running_one(machine, root):
    paths, k = machine
    plan = cl.cleanup(paths, keep=2)
    newest_two = sorted([k, *OLD], key=lambda r: [int(x) for x in r.split("-")[1:2]])[-2:]
    assert sorted(i.release for i in plan.kept) == sorted([RUNNING, *newest_two])
    assert sorted(removed(plan)) == sorted({k, *OLD, GONE} - set(newest_two))
    assert "Keeping: the 2 newest kernels (plus the running one)" in plan.lines()
    with pytest.raises(NvkmdError):
        cl.cleanup(paths, keep=-1)


def test_execute_removes_and_tidies_but_never_the_running_kernel(machine, root):
    paths, k = machine
    plan = cl.cleanup(paths, keep=1, execute=True)
    assert plan.executed and "(dry run)" not in plan.lines()[0]
    gone = set(removed(plan))
    assert RUNNING not in gone and GONE in gone
    assert all(i.done == "removed" for i in plan.to_remove), plan.to_remove
    assert (root.nvkmd_dir(RUNNING) / "nvidia.ko").is_file()
    for r in gone:
        assert not root.nvkmd_dir(r).exists()
    # the removed kernel: our modules and depmod's output gone, the hand-copied module kept
    assert sorted(p.name for p in (root.modules / GONE).rglob("*")) == ["extra", "nvidia.ko"]
    # an installed kernel loses our modules, and depmod forgets them
    older = next(r for r in OLD if r in gone)
    assert (root.path / "boot" / f"vmlinuz-{older}").exists()
    assert "nvkmd" not in (root.modules / older / "modules.dep").read_text()
    # nothing more to do, and the summary says what went
    assert cl.cleanup(paths, keep=1).to_remove == []
    assert any(line.startswith(f"removed {GONE}: nvkmd") for line in plan.summary())


def test_a_removed_kernel_with_only_our_modules_disappears(root, machine, monkeypatch):
    paths, k = machine
    shutil.rmtree(root.modules / GONE / "extra")
    # headers alone keep a kernel installed (nvkmd would rebuild for it at once) ...
    (root.path / "boot" / f"vmlinuz-{k}").unlink()
    assert cl.kernel_installed(paths, k)
    build = root.modules / GONE / "build"
    build.symlink_to((root.modules / k / "build").resolve())
    assert cl.kernel_installed(paths, GONE)
    # ... dangling header links (the headers package is gone too) do not
    build.unlink()
    build.symlink_to("/usr/src/linux-headers-0.0-gone")
    assert not cl.kernel_installed(paths, GONE)
    plan = cl.cleanup(paths, execute=True)
    assert plan.paths(paths) == [str(root.nvkmd_dir(GONE))]
    assert not (root.modules / GONE / "updates").exists()
    assert [p.name for p in (root.modules / GONE).iterdir()] == ["build"]   # not ours to delete
    assert (root.modules / k / "build").is_symlink()


def test_a_gone_kernels_cached_products_go_with_their_digests(machine):
    """The engine records each cached product's SHA-256 in the state dir;
    once the kernel is gone, both its products and its records go."""
    paths, k = machine
    products, digests = paths.products_root / k, paths.product_digests / k
    assert any(products.iterdir()) and [p.suffix for p in digests.iterdir()] == [".json"]
    assert digests.is_relative_to(paths.state_dir)
    others = {RUNNING, *OLD}
    assert {products, digests} <= set(cl.logs_and_cache(paths, others, 5, None))
    for keep in (cl.logs_and_cache(paths, others | {k}, 5, None),
                 cl.logs_and_cache(paths, others, 5, busy=k)):
        assert not {products, digests} & set(keep)
    # A record whose products someone already deleted goes too.
    shutil.rmtree(products)
    assert digests in cl.logs_and_cache(paths, others, 5, None)
