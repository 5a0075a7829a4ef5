"""The trust boundary (issue 12): what nvkmd executes or installs is root's
alone.  The attacks run as a real unprivileged user (setpriv to nobody) on a
scratch root that nobody can reach, as on a real machine: /tmp is the
sticky, world-writable parent that trust.py accepts."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import TestRoot as Root
from helpers import need_kernels, run_nvkmd
from nvkmd.errors import ErrorCode
from nvkmd.system import trust

NOBODY = 65534


def as_nobody(script: str, stdin: str | None = None) -> None:
    """Run ``script`` with sh as the unprivileged user nobody."""
    subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--",
                    "sh", "-ec", script], input=stdin, text=True, check=True, cwd="/")


@pytest.fixture
def open_root(monkeypatch):
    """A test root under /tmp whose parents nobody can traverse (pytest's
    tmp_path is 0700), and a directory owned by nobody beside it."""
    base = Path(tempfile.mkdtemp(prefix="nvkmd-trust-", dir="/tmp"))
    base.chmod(0o755)
    (base / "root").mkdir(mode=0o755)
    attacker = base / "attacker"
    attacker.mkdir(mode=0o755)
    os.chown(attacker, NOBODY, NOBODY)
    monkeypatch.setenv("NVKMD_RUNNING_KERNEL", "0.0.0-not-installed")
    r = Root(base / "root")
    r.attacker = attacker
    yield r
    shutil.rmtree(base, ignore_errors=True)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# -- 1. a symlink in a root-owned tree to a file someone else controls ------------

def test_symlinked_makefile_to_a_users_file_is_refused_and_never_runs(open_root):
    k = need_kernels(1)[-1]
    r = open_root
    r.add_kernel(k)
    tree = r.add_tiny_source()
    makefile = tree / "kernel-open" / "Makefile"
    evil = r.attacker / "Makefile"
    marker = r.attacker / "ran-as-root"
    # The attacker owns the target; root made (or git checked out) the link.
    as_nobody(f"cat > {evil}; chmod 666 {evil}", makefile.read_text())
    makefile.unlink()
    makefile.symlink_to(evil)
    as_nobody(f"printf '\\t@id > {marker}\\n' >> {evil}")
    proc = run_nvkmd("--once", "--force", "--root", str(r.path))
    assert not marker.exists(), "the attacker's recipe ran as root"
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"symlink {makefile} points to {evil}, outside the tree" in proc.stderr
    assert not r.nvkmd_dir(k).exists()


def test_symlinked_source_file_outside_the_tree_is_refused(open_root):
    r = open_root
    tree = r.add_tiny_source()
    nv_c = tree / "kernel-open" / "nvidia" / "nv.c"
    theirs = r.attacker / "nv.c"
    as_nobody(f"cat > {theirs}", nv_c.read_text())
    nv_c.unlink()
    nv_c.symlink_to(theirs)
    with pytest.raises(trust.Untrusted, match=f"symlink {nv_c} points to {theirs}, outside the tree"):
        trust.check_tree(tree / "kernel-open")
    # Even a root-owned file outside the tree: the tree is what is checked and copied.
    shutil.copy(theirs, r.path / "nv.c")
    nv_c.unlink()
    nv_c.symlink_to(r.path / "nv.c")
    with pytest.raises(trust.Untrusted, match="outside the tree"):
        trust.check_tree(tree / "kernel-open")


def test_symlinks_inside_the_tree_are_fine(open_root):
    tree = open_root.add_tiny_source() / "kernel-open"
    (tree / "nvidia" / "nv-tiny.h").symlink_to("../common/inc/nv-tiny.h")
    (tree / "inc").symlink_to(tree / "common" / "inc")          # absolute, still inside
    assert trust.check_tree(tree) == tree


def test_a_link_on_the_way_owned_by_a_user_is_refused(open_root):
    r = open_root
    tree = r.add_tiny_source()
    link = r.path / "usr" / "src" / "nvidia-link"
    link.symlink_to(tree)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(trust.Untrusted, match=f"{link} \\(a symlink\\) is owned by uid {NOBODY}"):
        trust.check_tree(link / "kernel-open")


def test_sticky_tmp_is_accepted_as_a_parent_but_not_as_the_directory(open_root):
    assert trust.check_dir(open_root.path / "var" / "lib" / "nvkmd", "state directory")
    sticky = open_root.path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    with pytest.raises(trust.Untrusted, match="is writable by everyone") as e:
        trust.check_dir(sticky, "state directory")
    assert e.value.code is ErrorCode.CONFIG
    assert trust.check_dir(sticky / "below", "state directory")       # a parent: fine


# -- 2. state and cache directories, and the products in the cache ------------------

def _installed(r: Root, k: str) -> dict[str, str]:
    return {p.name: _sha(p) for p in sorted(r.nvkmd_dir(k).glob("*.ko*"))}


def _cache_entries(r: Root, k: str) -> list[Path]:
    return sorted(p for p in (r.path / "var/lib/nvkmd/cache/products" / k).iterdir()
                  if not p.name.startswith("."))


def test_cache_poisoning_through_a_writable_state_dir_is_refused(open_root):
    k = need_kernels(1)[-1]
    r = open_root
    r.add_kernel(k)
    r.add_tiny_source()
    first = run_nvkmd("--once", "--root", str(r.path))
    assert first.returncode == 0, first.stdout + first.stderr
    good = _installed(r, k)
    state = r.path / "var/lib/nvkmd"
    entry = _cache_entries(r, k)[0]
    state.chmod(0o777)
    # As nobody: move root's cache aside and put a cache of one's own in its place.
    fake = f"cache/products/{k}/{entry.name}"
    as_nobody(f"cd {state}; mv cache cache.root; mkdir -p {fake}; "
              f"cp cache.root/products/{k}/{entry.name}/nvidia-modeset.ko {fake}/nvidia.ko; "
              f"cp cache.root/products/{k}/{entry.name}/nvidia-modeset.ko {fake}/; "
              f"touch {fake}/.complete")
    proc = run_nvkmd("--once", "--force", "--root", str(r.path))
    assert proc.returncode == 78, proc.stdout + proc.stderr
    assert f"refusing state directory {state}: {state} is writable by everyone" in proc.stderr
    assert "from cache" not in proc.stdout
    assert _installed(r, k) == good


def test_state_dir_owned_by_a_user_is_refused(open_root):
    r = open_root
    r.add_tiny_source()
    state = r.path / "var/lib/nvkmd"
    state.mkdir(parents=True)
    os.chown(state, NOBODY, NOBODY)
    proc = run_nvkmd("--once", "--root", str(r.path))
    assert proc.returncode == 78
    assert f"refusing state directory {state}: {state} is owned by uid {NOBODY}" in proc.stderr


def test_a_cached_product_that_does_not_match_its_digest_is_built_again(open_root):
    k = need_kernels(1)[-1]
    r = open_root
    r.add_kernel(k)
    r.add_tiny_source()
    assert run_nvkmd("--once", "--root", str(r.path)).returncode == 0
    good = _installed(r, k)
    entry = _cache_entries(r, k)[0]
    shutil.copy(entry / "nvidia-modeset.ko", entry / "nvidia.ko")
    proc = run_nvkmd("--once", "--force", "--root", str(r.path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{k}: success" in proc.stdout and "from cache" not in proc.stdout
    log = (r.path / "var/log/nvkmd" / k / "latest.log").read_text()
    assert "nvidia.ko does not match the SHA-256 recorded when it was built" in log
    assert _installed(r, k).keys() == good.keys()
    nvidia = next(r.nvkmd_dir(k).glob("nvidia.ko*"))
    assert subprocess.run(["modinfo", "-F", "name", str(nvidia)], capture_output=True,
                          text=True).stdout.strip() == "nvidia"
    # The rebuilt entry is recorded again: the next forced run installs from it.
    again = run_nvkmd("--once", "--force", "--root", str(r.path))
    assert f"{k}: success (from cache)" in again.stdout, again.stdout


def test_group_write_is_refused_even_for_group_root(open_root):
    """An ACL granting a user write shows as the group bits: root's group too."""
    tree = open_root.add_tiny_source() / "kernel-open"
    kbuild = tree / "Kbuild"
    assert os.stat(kbuild).st_gid == 0
    kbuild.chmod(0o664)
    with pytest.raises(trust.Untrusted, match=f"{kbuild} is writable by group 0"):
        trust.check_tree(tree)
