"""Source discovery: every layout the driver ships in, and its version."""

from __future__ import annotations

import shutil
import tarfile

import pytest

from helpers import TINY, set_tiny_version
from nvkmd.system import source as sources
from nvkmd.config import Config
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.paths import Paths


def paths_of(root, **config):
    cfg = Config(**config)
    return Paths.build(root.path, config=cfg), cfg


def test_git_checkout_layout(root):
    root.add_tiny_source("open-gpu-kernel-modules")
    paths, cfg = paths_of(root, source_path="/usr/src/open-gpu-kernel-modules")
    s = sources.discover(paths, cfg)
    assert (s.kind, s.version, s.modules) == ("git", "9.9.1", ("nvidia", "nvidia-modeset"))
    assert s.tree.name == "kernel-open"


def test_dkms_tree_is_found_automatically(root):
    d = root.path / "usr/src/nvidia-9.9.2"
    shutil.copytree(TINY / "kernel-open", d)
    (d / "dkms.conf").write_text('PACKAGE_NAME="nvidia"\nPACKAGE_VERSION="9.9.2"\n')
    paths, cfg = paths_of(root)
    s = sources.discover(paths, cfg)
    assert (s.kind, s.version, s.tree) == ("dkms", "9.9.2", d)


def test_debian_tarball_is_unpacked_into_the_cache(root):
    staging = root.path.parent / "staging"
    shutil.copytree(TINY / "kernel-open", staging / "modules/nvidia-open-kernel")
    with tarfile.open(root.path / "usr/src/nvidia-open-kernel.tar.xz", "w:xz") as tf:
        tf.add(staging / "modules", arcname="modules")
    paths, cfg = paths_of(root)
    s = sources.discover(paths, cfg)
    assert s.kind == "debian" and s.version == "9.9.1"      # from NV_VERSION_STRING
    assert paths.unpacked_sources in s.tree.parents
    again = sources.discover(paths, cfg)                    # unpacked once
    assert again.tree == s.tree and again.digest == s.digest


def test_run_extraction_takes_modules_from_manifest_line_4(root):
    d = root.path / "opt/NVIDIA-Linux-x86_64-9.9.3"
    shutil.copytree(TINY, d)
    set_tiny_version(d, "9.9.3")
    (d / "version.mk").unlink()
    (d / ".manifest").write_text("NVIDIA driver\n9.9.3\n2\nnvidia nvidia-modeset\n")
    paths, cfg = paths_of(root, source_path="/opt/NVIDIA-Linux-x86_64-9.9.3")
    s = sources.discover(paths, cfg)
    assert (s.kind, s.version, s.modules) == ("run", "9.9.3", ("nvidia", "nvidia-modeset"))


def test_auto_prefers_the_newest_version(root):
    old = root.path / "usr/src/nvidia-9.9.1"
    shutil.copytree(TINY / "kernel-open", old)
    (old / "dkms.conf").write_text('PACKAGE_VERSION="9.9.1"\n')
    new = root.path / "usr/src/nvidia-9.10.0"
    shutil.copytree(TINY / "kernel-open", new)
    (new / "dkms.conf").write_text('PACKAGE_VERSION="9.10.0"\n')
    paths, cfg = paths_of(root)
    assert sources.discover(paths, cfg).version == "9.10.0"


@pytest.mark.parametrize("setup,message", [
    (lambda r: None, "no NVIDIA kernel module source found"),
    (lambda r: (r.path / "usr/src/junk").mkdir(), "not an NVIDIA kernel module source"),
])
def test_clear_errors(root, setup, message):
    setup(root)
    cfg = {"source_path": "/usr/src/junk"} if "not an" in message else {}
    paths, config = paths_of(root, **cfg)
    with pytest.raises(NvkmdError, match=message) as e:
        sources.discover(paths, config)
    assert e.value.code is ErrorCode.SOURCE


def test_content_digest_changes_with_the_tree(root):
    tree = root.add_tiny_source()
    paths, cfg = paths_of(root, source_path="/usr/src/nvidia-tiny")
    before = sources.discover(paths, cfg).digest
    (tree / "kernel-open/nvidia/nv.c").write_text("// changed\n")
    assert sources.discover(paths, cfg).digest != before
