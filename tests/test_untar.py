"""Unpacking the driver source tarball on Debian 12's own Python (3.11.2).

3.11.2 has no ``extractall(filter=...)``; nvkmd must still unpack Debian's
nvidia-open-kernel-source tarball there, and refuse what the data filter
refuses.  These tests run /usr/bin/python3 itself (whatever interpreter
runs pytest), on archives crafted with tarfile.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from helpers import REPO, TINY

DEBIAN_PYTHON = Path("/usr/bin/python3")
DEBIAN_TARBALL = Path("/usr/src/nvidia-open-kernel.tar.xz")


def debian_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    if not DEBIAN_PYTHON.exists():
        pytest.fail("/usr/bin/python3 is missing: this is not a Debian 12 machine")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([str(DEBIAN_PYTHON), "-c", code, *args], env=env, text=True,
                          capture_output=True, timeout=timeout)


def test_debian_python_is_the_floor_this_is_about():
    out = debian_python("import sys, tarfile; print(sys.version_info[:3], "
                        "hasattr(tarfile, 'data_filter'))").stdout
    # When Debian ships a Python with the filter, the fallback is untested
    # here: say so loudly rather than pass on the wrong interpreter.
    assert out.strip() == "(3, 11, 2) False", out


def test_debian_tarball_source_is_found_on_debians_python(root):
    """The crash of issue 13: discover() on Debian's tarball layout."""
    staging = root.path.parent / "staging"
    shutil.copytree(TINY / "kernel-open", staging / "modules/nvidia-open-kernel")
    with tarfile.open(root.path / "usr/src/nvidia-open-kernel.tar.xz", "w:xz") as tf:
        tf.add(staging / "modules", arcname="modules")
    r = debian_python(
        "import sys\n"
        "from nvkmd.config import Config\n"
        "from nvkmd.paths import Paths\n"
        "from nvkmd.system.source import discover\n"
        "s = discover(Paths.build(sys.argv[1], config=Config()), Config())\n"
        "print(s.kind, s.version, s.tree.relative_to(sys.argv[1]))\n", str(root.path))
    assert r.returncode == 0, r.stderr
    kind, version, tree = r.stdout.split()
    assert (kind, version) == ("debian", "9.9.1")
    assert tree.startswith("var/lib/nvkmd/cache/sources/debian-")
    assert tree.endswith("modules/nvidia-open-kernel")


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", data: bytes = b"x",
            mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes | None]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode = kind, linkname, mode
    if kind == tarfile.REGTYPE:
        ti.size = len(data)
        return ti, data
    return ti, None


def _write(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


UNSAFE = {
    "absolute": [_member("/tmp/nvkmd-untar-abs-{tag}")],
    "dotdot": [_member("../escaped-{tag}")],
    "dotdot-inside-name": [_member("a/../../escaped-{tag}")],
    "symlink-absolute": [_member("etc", tarfile.SYMTYPE, "/etc")],
    "symlink-outside": [_member("up", tarfile.SYMTYPE, "../../..")],
    # Each link resolves inside when it is made; together x leads out.
    "link-chain-then-write-through": [_member("x", tarfile.SYMTYPE, "y/.."),
                                      _member("y", tarfile.SYMTYPE, "."),
                                      _member("x/escaped-{tag}")],
    "hardlink-outside": [_member("h", tarfile.LNKTYPE, "../outside-{tag}")],
    "fifo": [_member("fifo", tarfile.FIFOTYPE)],
    "char-device": [_member("null", tarfile.CHRTYPE)],
    "block-device": [_member("sda", tarfile.BLKTYPE)],
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_member_is_refused_on_debians_python(tmp_path, case):
    tag = f"{os.getpid()}-{case}"
    members = []
    for ti, data in UNSAFE[case]:
        ti.name = ti.name.replace("{tag}", tag)
        ti.linkname = ti.linkname.replace("{tag}", tag)
        members.append((ti, data))
    (tmp_path / "dest").mkdir()
    tarball = _write(tmp_path / "evil.tar", members)
    before = sorted(os.listdir(tmp_path))
    r = debian_python(
        "import sys, tarfile\n"
        "from pathlib import Path\n"
        "from nvkmd.system import untar\n"
        "try:\n"
        "    untar.extract(Path(sys.argv[1]), Path(sys.argv[2]))\n"
        "except tarfile.TarError as e:\n"
        "    print('refused', type(e).__name__, e)\n"
        "else:\n"
        "    print('extracted')\n", str(tarball), str(tmp_path / "dest"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("refused UnsafeMember"), r.stdout
    assert sorted(os.listdir(tmp_path)) == before
    assert not Path(f"/tmp/nvkmd-untar-abs-{tag}").exists()
    for p in (tmp_path / "dest").rglob("*"):
        assert not (p.is_fifo() or p.is_char_device() or p.is_block_device()), p


def test_unsafe_member_is_refused_on_this_python_too(tmp_path):
    """The same rule where the stdlib's data filter does the work (3.11.4+)."""
    from nvkmd.system import untar
    tarball = _write(tmp_path / "evil.tar", [_member("up", tarfile.SYMTYPE, "../../..")])
    with pytest.raises(tarfile.TarError):
        untar.extract(tarball, tmp_path / "dest")
    assert not (tmp_path / "dest" / "up").is_symlink()


def test_safe_archive_is_extracted_like_the_data_filter(tmp_path):
    """Inner links stay, set-id and group/world write bits go, a read-only
    directory still gets its contents, owner is whoever unpacks."""
    tarball = _write(tmp_path / "ok.tar", [
        _member("ro", tarfile.DIRTYPE, mode=0o555),
        _member("ro/file", data=b"hello", mode=0o4775),
        _member("ro/plain", data=b"p", mode=0o666),
        _member("link", tarfile.SYMTYPE, "ro/file"),
        _member("dotlink", tarfile.SYMTYPE, "ro/../ro/plain"),
        _member("hard", tarfile.LNKTYPE, "ro/file", mode=0o4775),   # one inode, one mode
    ])
    r = debian_python(
        "import json, os, sys\n"
        "from pathlib import Path\n"
        "from nvkmd.system import untar\n"
        "d = Path(sys.argv[2])\n"
        "untar.extract(Path(sys.argv[1]), d)\n"
        "out = {}\n"
        "for p in sorted(d.rglob('*')):\n"
        "    st = p.lstat()\n"
        "    out[str(p.relative_to(d))] = [oct(st.st_mode), st.st_uid, os.readlink(p) "
        "if p.is_symlink() else p.read_text() if p.is_file() else None]\n"
        "print(json.dumps(out))\n", str(tarball), str(tmp_path / "dest"))
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    uid = os.getuid()
    assert got["ro"] == [oct(stat.S_IFDIR | 0o555), uid, None]
    assert got["ro/file"] == [oct(stat.S_IFREG | 0o755), uid, "hello"]
    assert got["ro/plain"] == [oct(stat.S_IFREG | 0o644), uid, "p"]
    assert got["link"][2] == "ro/file" and got["dotlink"][2] == "ro/../ro/plain"
    assert got["hard"][2] == "hello"
    assert os.stat(tmp_path / "dest/hard").st_ino == os.stat(tmp_path / "dest/ro/file").st_ino


def _tree(d: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(d.rglob("*")):
        st = p.lstat()
        kind = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else None)
        out[str(p.relative_to(d))] = (stat.S_IMODE(st.st_mode) if not p.is_symlink() else 0, kind)
    return out


def test_debians_real_tarball_unpacks_as_gnu_tar_unpacks_it(tmp_path):
    """Debian's own nvidia-open-kernel-source, through the fallback, gives
    the tree GNU tar gives (modes under umask 022, links, contents)."""
    if not DEBIAN_TARBALL.is_file():
        pytest.fail(f"{DEBIAN_TARBALL} is missing: scripts/setup installs nvidia-open-kernel-source")
    ours, gnu = tmp_path / "ours", tmp_path / "gnu"
    gnu.mkdir()
    r = debian_python("import sys\nfrom pathlib import Path\nfrom nvkmd.system import untar\n"
                      "untar.extract(Path(sys.argv[1]), Path(sys.argv[2]))\n",
                      str(DEBIAN_TARBALL), str(ours))
    assert r.returncode == 0, r.stderr
    subprocess.run(["tar", "-xf", str(DEBIAN_TARBALL), "-C", str(gnu), "--no-same-owner",
                    "--no-same-permissions"], check=True, preexec_fn=lambda: os.umask(0o022))
    a, b = _tree(ours), _tree(gnu)
    assert len(a) > 100
    assert a == b
