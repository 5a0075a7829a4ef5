"""Debian's source tarball is unpacked in a short-lived child, not in the
daemon (issue 16, P4): its xz dictionary is 64 MiB and tarfile keeps a
TarInfo per member, which raised the long-lived daemon's peak by as much.
These run discover() as the daemon does, in a fresh interpreter, on real
xz tarballs made here, and look at that process: what it loaded, its peak
memory, the errors it gives."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path


from helpers import REPO, TINY

PROBE = """
import json, sys
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
from nvkmd.config import Config
from nvkmd.errors import NvkmdError
from nvkmd.paths import Paths
from nvkmd.system.source import discover
before = hwm()
try:
    s = discover(Paths.build(sys.argv[1], config=Config()), Config())
    out = {"kind": s.kind, "version": s.version, "tree": str(s.tree)}
except NvkmdError as e:
    out = {"code": e.code.name, "message": e.message}
out.update(grew_kib=hwm() - before, tarfile="tarfile" in sys.modules)
print(json.dumps(out))
"""


def discover_in_probe(root: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE, str(root)], capture_output=True, text=True,
                       cwd=REPO, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, read without holding them."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def debian_tarball(root: Path, members: list[tuple[tarfile.TarInfo, io.RawIOBase | None]] = (),
                   preset: int = 6) -> Path:
    """<root>/usr/src/nvidia-open-kernel.tar.xz as Debian lays it out (the
    tiny tree under modules/nvidia-open-kernel), plus ``members``."""
    staging = root.parent / "staging"
    shutil.copytree(TINY / "kernel-open", staging / "modules/nvidia-open-kernel")
    tarball = root / "usr/src/nvidia-open-kernel.tar.xz"
    with tarfile.open(tarball, "w:xz", preset=preset) as tf:
        tf.add(staging / "modules", arcname="modules")
        for ti, data in members:
            tf.addfile(ti, data)
    return tarball


def _file(name: str, size: int) -> tuple[tarfile.TarInfo, io.RawIOBase]:
    ti = tarfile.TarInfo(name)
    ti.size = size
    return ti, io.BufferedReader(_Zeros(size))


def test_the_daemons_side_of_an_unpack_loads_no_tarfile(root):
    debian_tarball(root.path)
    got = discover_in_probe(root.path)
    assert (got.get("kind"), got.get("version")) == ("debian", "9.9.1"), got
    assert Path(got["tree"], "Kbuild").is_file()
    assert got["tarfile"] is False, "tarfile was loaded in the process that asked for the unpack"


def test_xz_s_64_mib_dictionary_is_not_in_the_callers_peak(root):
    """80 MiB unpacked from an ``xz -9`` tarball (a 64 MiB dictionary, all of
    it touched): the caller's peak memory stays well under that."""
    tarball = debian_tarball(root.path, [_file("modules/nvidia-open-kernel/blob.bin", 80 << 20)],
                             preset=9)
    assert tarball.stat().st_size < 1 << 20          # zeros: small, but xz -9 all the same
    got = discover_in_probe(root.path)
    assert got.get("kind") == "debian", got
    assert Path(got["tree"], "blob.bin").stat().st_size == 80 << 20
    assert got["grew_kib"] < 24 * 1024, f"the caller's peak grew by {got['grew_kib'] // 1024} MiB"


def test_an_unsafe_member_is_a_source_error_naming_it(root):
    evil = tarfile.TarInfo("../escaped-nvkmd-unpack")
    evil.size = 1
    debian_tarball(root.path, [(evil, io.BytesIO(b"x"))])
    got = discover_in_probe(root.path)
    assert got.get("code") == "SOURCE", got
    assert "cannot unpack" in got["message"] and "../escaped-nvkmd-unpack" in got["message"]
    assert "contains '..'" in got["message"], got["message"]
    sources = root.path / "var/lib/nvkmd/cache/sources"
    assert not (sources.parent / "escaped-nvkmd-unpack").exists()
    assert not list(sources.glob("*")), "the half-unpacked copy was left behind"



def test_a_full_cache_while_unpacking_is_disk_full(root, tiny_tmpfs):
    """ENOSPC in the child reaches the caller as DISK_FULL, not a vague error."""
    sources = tiny_tmpfs(root.path / "var/lib/nvkmd/cache/sources", "1m")
    debian_tarball(root.path, [_file("modules/nvidia-open-kernel/blob.bin", 4 << 20)])
    got = discover_in_probe(root.path)
    assert got.get("code") == "DISK_FULL", got
    assert f"into {sources}" in got["message"]
    assert not list(sources.glob("*"))
