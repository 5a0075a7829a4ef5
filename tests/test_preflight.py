"""Preflight with the tiny tree against real Debian headers packages that
are not installed: Debian's newest linux-headers-6.1.0-N-amd64, fetched
by the preflight itself with apt-get download.

The tiny tree builds for it ("ready"); a variant of the tree that calls
pci_resize_resource() the way 6.1.0-47's headers declare it (three
arguments; 6.1.0-56 and later take four) "will break", and the same
variant is "ready" for 6.1.0-47's tree.  Nothing is installed: /lib/modules
and dpkg's database are the same before and after.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import aptrepo
from helpers import TINY, need_kernels
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.paths import Paths
from nvkmd.system.candidates import Apt
from nvkmd.verdict import READY, UNKNOWN, WILL_BREAK, PreflightResult

OLD = "6.1.0-47-amd64"     # pci_resize_resource(dev, i, size)

RESIZE_C = """\
// SPDX-License-Identifier: MIT
#include <linux/module.h>
#include <linux/pci.h>

/* 6.1.0-47's signature; 6.1.0-56 and later added an exclude_bars argument. */
int nv_tiny_resize(struct pci_dev *dev)
{
\treturn pci_resize_resource(dev, 0, 0);
}
EXPORT_SYMBOL(nv_tiny_resize);
"""


def tiny_root(root, variant: bool = False) -> Path:
    tree = root.add_tiny_source()
    if variant:
        (tree / "kernel-open/nvidia/nv-resize.c").write_text(RESIZE_C)
        kb = tree / "kernel-open/nvidia/nvidia.Kbuild"
        kb.write_text(kb.read_text().replace("nvidia/nv-core.o\n", "nvidia/nv-core.o nvidia/nv-resize.o\n", 1))
    return tree


def check(root, target, apt_config=None) -> PreflightResult:
    """One preflight with /lib/modules and dpkg's database read-only."""
    d = aptrepo.isolated_preflight(root.path, "/usr/src/nvidia-tiny", target, apt_config)
    if "error" in d:
        raise NvkmdError(ErrorCode.from_name(d["error"]), d["message"])
    return PreflightResult.from_dict(d)


@pytest.fixture(scope="module")
def candidate() -> str:
    return aptrepo.newest_abi()


@pytest.fixture
def untouched(candidate):
    """No kernel and no kernel package appeared: the preflights ran with
    /lib/modules and dpkg's database read-only, so they wrote nothing there."""
    before = aptrepo.kernel_packages_state()
    yield
    assert aptrepo.kernel_packages_state() == before
    assert not Path("/lib/modules", candidate).exists()


def no_leftovers(root) -> None:
    work = Paths.build(root.path).preflight_work
    assert not work.exists() or not any(work.iterdir()), list(work.iterdir())


def test_tiny_tree_is_ready_for_a_kernel_that_is_not_installed(root, candidate, untouched):
    tiny_root(root)
    res = check(root, f"linux-headers-{candidate}")
    assert res.verdict == READY, res
    assert res.message() == f"ready: {candidate} builds with NVIDIA 9.9.1"
    assert res.kernel == candidate and res.manager == "apt" and res.package_version
    log = Path(res.log)
    assert log.parent == root.path / "var/log/nvkmd/preflight" / candidate
    text = log.read_text()
    assert "# result: success" in text and f"SYSOUT={Paths.build(root.path).preflight_work}" in text
    assert "\n$ nice -n 19 make " in text          # the lowest priority
    assert (log.parent / "latest.log").resolve() == log
    assert res.hold == f"apt-mark hold linux-image-{candidate} linux-headers-{candidate}"
    no_leftovers(root)
    # apt's own cache holds the downloads: a second run fetches nothing new.
    archives = Apt().directory("Dir::Cache::archives", Path("/nonexistent"))
    assert list(archives.glob(f"linux-headers-{candidate}_*.deb"))


def test_an_interface_the_candidate_changed_will_break(root, candidate, untouched):
    tiny_root(root, variant=True)
    res = check(root, candidate)            # a kernel release names its headers package
    assert res.verdict == WILL_BREAK, res
    assert res.kind == "kernel-api"
    assert "pci_resize_resource" in res.cause and res.message().startswith("will break: ")
    assert "too few arguments to function" in res.first_error
    assert res.hint and "# result: failed" in Path(res.log).read_text()
    no_leftovers(root)


def test_the_same_variant_is_ready_for_the_headers_that_have_the_old_interface(root, untouched):
    need_kernels(1)
    tiny_root(root, variant=True)
    # An unpacked headers directory as TARGET: the installed 6.1.0-47 tree.
    res = check(root, f"/usr/src/linux-headers-{OLD}")
    assert res.verdict == READY, res
    assert res.kernel == OLD and res.manager == "directory"


def test_a_downloaded_package_file_resolves_its_common_headers(root, candidate, tmp_path, untouched):
    tiny_root(root, variant=True)
    deb = aptrepo.download(tmp_path / "dl", f"linux-headers-{candidate}")[0]
    res = check(root, str(deb))
    assert res.verdict == WILL_BREAK and "pci_resize_resource" in res.cause, res
    assert res.manager == "file" and res.package == f"linux-headers-{candidate}"


def test_bad_targets_are_refused_clearly(root):
    tiny_root(root)
    for target, words in (("/nonexistent/x.deb", "no such file"),
                          ("linux-image-no-such-kernel", "no such package"),
                          ("firefox-esr", "not a kernel package name")):
        with pytest.raises(NvkmdError) as e:
            check(root, target)
        assert e.value.code is ErrorCode.INVALID_ARGUMENT and words in e.value.message, e.value
    no_leftovers(root)


def test_download_failure_is_could_not_tell(root, candidate, tmp_path):
    """apt's lists name the package, but the mirror is gone by the time of
    the download: "could not tell", with apt's reason, and nothing left."""
    tiny_root(root)
    local = aptrepo.LocalApt(tmp_path / "apt")
    local.publish(*aptrepo.headers_debs(tmp_path / "dl", candidate))
    local.update()
    shutil.rmtree(local.repo)
    res = check(root, f"linux-headers-{candidate}", local.config)
    assert res.verdict == UNKNOWN and res.exit_status == 6, res
    assert res.cause.startswith("download failed: apt-get download"), res.cause
    assert not list(local.archives.glob("*.deb"))
    no_leftovers(root)
