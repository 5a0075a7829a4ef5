"""Package-manager locks and package names, against real locks held by other
processes and a real dpkg database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from nvkmd.system import pkgdb
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.paths import Paths

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o640)
fcntl.lockf(fd, fcntl.LOCK_EX)          # F_SETLK write lock, as apt, dpkg and rpm take it
print("locked", flush=True)
sys.stdin.read()
"""


class Held:
    """A lock held by another process (a POSIX lock is per process)."""

    def __init__(self, path):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline() == "locked\n"

    def release(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def test_probe_sees_the_holder_and_never_takes_or_creates_the_lock(tmp_path):
    lock = tmp_path / "lock-frontend"
    assert pkgdb.probe_fcntl(lock) is None and not lock.exists()   # no file: nobody holds it
    held = Held(lock)
    try:
        assert pkgdb.probe_fcntl(lock) == held.proc.pid
        assert pkgdb.probe_fcntl(lock) == held.proc.pid            # probing changed nothing
    finally:
        held.release()
    assert pkgdb.probe_fcntl(lock) is None


def test_holders_for_dpkg_pacman_and_rpm(tmp_path):
    paths = Paths.build(tmp_path)
    for d in (paths.dpkg_dir, paths.pacman_dir, paths.rpm_dirs[0]):
        d.mkdir(parents=True)
    (paths.rpm_dirs[0] / "rpmdb.sqlite").touch()
    assert pkgdb.holders(paths) == []
    dpkg = Held(paths.dpkg_dir / "lock")
    rpm = Held(paths.rpm_dirs[0] / ".rpm.lock")
    (paths.pacman_dir / "db.lck").touch()
    try:
        got = {(h.manager, h.lock.name, h.pid) for h in pkgdb.holders(paths)}
        assert got == {("dpkg", "lock", dpkg.proc.pid), ("pacman", "db.lck", 0),
                       ("rpm", ".rpm.lock", rpm.proc.pid)}
    finally:
        dpkg.release()
        rpm.release()
    (paths.pacman_dir / "db.lck").unlink()
    assert pkgdb.holders(paths) == []


def test_wait_until_free_backs_off_reports_and_gives_up(tmp_path):
    paths = Paths.build(tmp_path)
    paths.pacman_dir.mkdir(parents=True)
    lck = paths.pacman_dir / "db.lck"
    lck.touch()
    seen, sleeps = [], []

    async def sleep(s: float) -> None:
        sleeps.append(s)
        if len(sleeps) == 4:
            lck.unlink()             # the transaction ends while we wait
        await asyncio.sleep(0)

    asyncio.run(pkgdb.wait_until_free(paths, 60, sleep=sleep, on_wait=seen.append))
    assert len(sleeps) == 4 and sleeps == sorted(sleeps)          # exponential backoff
    assert all(h[0].manager == "pacman" for h in seen)

    lck.touch()
    with pytest.raises(NvkmdError) as e:
        asyncio.run(pkgdb.wait_until_free(paths, 0.3, cap_s=0.05))
    assert e.value.code is ErrorCode.BUSY and "db.lck" in e.value.message


def test_headers_package_named_from_the_kernel_image_package(tmp_path):
    """A kernel without headers: dpkg knows its image package, and Debian
    pairs linux-image-<K> with linux-headers-<K>."""
    k = "6.1.0-99-amd64"
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "lib" / "modules" / k).mkdir(parents=True)
    (pkg / "lib" / "modules" / k / "modules.order").write_text("")
    (pkg / "DEBIAN" / "control").write_text(
        f"Package: linux-image-{k}-unsigned\nVersion: 1\nArchitecture: all\n"
        "Maintainer: nvkmd tests <t@example.org>\nDescription: a kernel image without a kernel\n")
    deb = tmp_path / "image.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(pkg), str(deb)], check=True,
                   capture_output=True)
    root = tmp_path / "root"
    admin = root / "var" / "lib" / "dpkg"
    for d in ("info", "updates", "triggers"):
        (admin / d).mkdir(parents=True)
    (admin / "status").touch()
    subprocess.run(["dpkg", "--root", str(root), "-i", str(deb)], check=True, capture_output=True)
    paths = Paths.build(root)
    assert pkgdb.headers_packages(paths, [k, "6.1.0-1-other"]) == {k: f"linux-headers-{k}"}
    assert os.path.exists(root / "lib" / "modules" / k / "modules.order")
