"""Real package managers installing kernel headers into a test root while the
daemon watches it: the daemon sees the new kernel during the transaction,
waits for the package manager's lock, and builds only once it is released,
outside the transaction.

- dpkg: Debian's real linux-headers-<K> package, unpacked by the real dpkg
  into the test root while the test holds ``lock-frontend`` the way apt
  does around its dpkg runs.
- pacman: a package made with tar and a .PKGINFO, installed by the real
  pacman; its post_install scriptlet (run by pacman in the root, with the
  lock held) waits on a FIFO the test opens when it has checked the daemon.
- rpm: a package built with rpmbuild, installed by the real rpm; its %post
  waits the same way.
"""

from __future__ import annotations

import fcntl
import glob
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from daemon_helpers import NotifySocket, installed_version
from helpers import need_kernels, wait_for
from nvkmd.system import pkgdb
from nvkmd.paths import Paths

FAST = "[daemon]\ndebounce_s = 0.2\n"


def _tiny(root) -> None:
    root.add_tiny_source()
    root.configure(root.config_text + FAST)


def install_shell(root: Path) -> None:
    """A /bin/sh (dash and the libraries it links) inside the root: pacman
    and rpm run scriptlets chrooted into it."""
    out = subprocess.run(["ldd", "/bin/dash"], capture_output=True, text=True, check=True).stdout
    for lib in re.findall(r"(/\S+)", out):
        dest = root / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(lib), dest)
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy2("/bin/dash", root / "bin" / "sh")
    (root / "tmp").mkdir(exist_ok=True)
    os.mkfifo(root / "nvkmd-gate")


def open_gate(root: Path, proc: subprocess.Popen) -> float:
    """Let the scriptlet (blocked reading the FIFO) finish; returns the time
    just before, which is before the package manager can release its lock."""
    def writer():
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited {proc.returncode} before its scriptlet")
        try:
            return os.open(root / "nvkmd-gate", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:          # ENXIO: the scriptlet is not reading yet
            return None
    fd = wait_for(writer, 60, "the scriptlet to wait on the gate")
    released = time.time()
    os.write(fd, b"go\n")
    os.close(fd)
    return released


@pytest.fixture
def notify(tmp_path):
    """A real sd_notify socket for the daemon: its STATUS= line (what
    ``systemctl status nvkmd`` shows) names the lock it waits for."""
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def waiting_for(sock: NotifySocket, lock: str) -> str:
    """The daemon's STATUS= line once it says it waits for ``lock``..."""
    want = f"waiting for {lock}"
    return wait_for(lambda: next((s for s in sock.assignments("STATUS") if s.startswith(want)), None),
                    60, f"STATUS={want}...")


def headers_link_package(top: Path, kernel: str) -> Path:
    """A package payload tree: <K>/build and <K>/source linking the real headers."""
    kdir = top / "lib" / "modules" / kernel
    kdir.mkdir(parents=True)
    for name in ("build", "source"):
        os.symlink(os.path.realpath(f"/lib/modules/{kernel}/{name}"), kdir / name)
    return top


def _deb_for(kernel: str, tmp_path: Path) -> Path:
    found = sorted(glob.glob(f"/var/cache/apt/archives/linux-headers-{kernel}_*.deb"))
    if found:
        return Path(found[-1])
    proc = subprocess.run(["apt-get", "download", f"linux-headers-{kernel}"], cwd=tmp_path,
                          capture_output=True, text=True)
    found = sorted(tmp_path.glob(f"linux-headers-{kernel}_*.deb"))
    if proc.returncode != 0 or not found:
        pytest.fail(f"linux-headers-{kernel}.deb is neither in apt's cache nor downloadable "
                    f"(apt-get download: {proc.stderr.strip()[-200:]})")
    return found[-1]


def test_dpkg_installing_real_headers_builds_after_the_transaction(root, nvkmd_daemon, tmp_path,
                                                                  notify):
    k = need_kernels(1)[-1]
    deb = _deb_for(k, tmp_path)
    _tiny(root)
    admin = root.path / "var" / "lib" / "dpkg"
    for d in ("info", "updates", "triggers"):
        (admin / d).mkdir(parents=True)
    (admin / "status").touch()
    # The package's dependencies (linux-kbuild, the -common headers) are the
    # host's: the arch headers reach them through these links and absolute paths.
    (root.path / "usr" / "lib").mkdir(parents=True, exist_ok=True)
    for kb in glob.glob("/usr/lib/linux-kbuild-*"):
        os.symlink(kb, root.path / "usr" / "lib" / os.path.basename(kb))

    d = nvkmd_daemon(root, env={"NOTIFY_SOCKET": str(notify.path)})
    d.wait_ready()
    # Be apt: hold lock-frontend for the whole run and tell dpkg so.
    fd = os.open(admin / "lock-frontend", os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        env = dict(os.environ, DPKG_FRONTEND_LOCKED="1")
        proc = subprocess.run(["dpkg", "--root", str(root.path), "--force-depends", "--unpack",
                               str(deb)], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert (root.modules / k / "build").is_symlink()
        # dpkg returned with no build inside it; the daemon saw the kernel
        # and waits for the frontend lock this "apt" still holds.
        waiting_for(notify, f"dpkg lock {admin}/lock-frontend (pid {os.getpid()})")
        assert d.jobs() == []
        assert not root.nvkmd_dir(k).exists()
        released = time.time()
    finally:
        os.close(fd)
    job = d.wait_job(k, "succeeded", timeout=180)
    assert job["started_at"] > released
    assert installed_version(root, k) == "9.9.1"
    # Built against the headers dpkg put into the root.
    assert f"SYSOUT={root.path}/usr/src/linux-headers-{k}" in Path(job["log"]).read_text()
    assert pkgdb.headers_packages(Paths.build(root.path), [k]) == {k: f"linux-headers-{k}"}
    assert d.stop() == 0


def test_pacman_install_is_waited_for(root, nvkmd_daemon, tmp_path, notify):
    k = need_kernels(1)[-1]
    _tiny(root)
    install_shell(root.path)
    db = root.path / "var" / "lib" / "pacman"
    db.mkdir(parents=True)
    pkg = headers_link_package(tmp_path / "pkg", k)
    (pkg / ".PKGINFO").write_text(
        "pkgname = linux-nvkmdtest-headers\npkgbase = linux-nvkmdtest\npkgver = 1.0-1\n"
        "pkgdesc = build links to real headers\nbuilddate = 1700000000\npackager = nvkmd tests\n"
        "size = 0\narch = any\n")
    (pkg / ".INSTALL").write_text("post_install() {\n    read go < /nvkmd-gate\n}\n")
    archive = tmp_path / "linux-nvkmdtest-headers-1.0-1-any.pkg.tar.zst"
    subprocess.run(["tar", "--zstd", "-cf", str(archive), ".PKGINFO", ".INSTALL", "lib"], cwd=pkg,
                   check=True)

    d = nvkmd_daemon(root, env={"NOTIFY_SOCKET": str(notify.path)})
    d.wait_ready()
    proc = subprocess.Popen(["pacman", "-U", "--noconfirm", "--root", str(root.path), "--dbpath",
                             str(db), "--cachedir", str(root.path / "var/cache/pacman/pkg"),
                             "--logfile", str(root.path / "var/log/pacman.log"), str(archive)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        waiting_for(notify, "pacman lock ")
        assert (db / "db.lck").exists() and proc.poll() is None
        assert d.jobs() == []
        released = open_gate(root.path, proc)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (db / "db.lck").exists()
    job = d.wait_job(k, "succeeded", timeout=120)
    assert job["started_at"] > released
    assert installed_version(root, k) == "9.9.1"
    assert pkgdb.headers_packages(Paths.build(root.path), [k]) == {k: "linux-nvkmdtest-headers"}
    assert d.stop() == 0


def test_rpm_install_is_waited_for(root, nvkmd_daemon, tmp_path, notify):
    k = need_kernels(1)[-1]
    _tiny(root)
    install_shell(root.path)
    top = tmp_path / "rpmbuild"
    (top / "SPECS").mkdir(parents=True)
    spec = top / "SPECS" / "headers.spec"
    spec.write_text(f"""Name: kernel-devel-nvkmdtest
Version: 1.0
Release: 1
Summary: build links to real headers
License: MIT
BuildArch: noarch
%description
Build links to real Debian headers, for nvkmd's tests.
%install
mkdir -p %{{buildroot}}/lib/modules/{k}
ln -s {os.path.realpath(f"/lib/modules/{k}/build")} %{{buildroot}}/lib/modules/{k}/build
ln -s {os.path.realpath(f"/lib/modules/{k}/source")} %{{buildroot}}/lib/modules/{k}/source
%post
read go < /nvkmd-gate
%files
/lib/modules/{k}
""")
    subprocess.run(["rpmbuild", "--define", f"_topdir {top}", "--quiet", "-bb", str(spec)],
                   check=True, capture_output=True)
    [package] = top.glob("RPMS/noarch/*.rpm")
    rpm = ["rpm", "--root", str(root.path), "--dbpath", "/var/lib/rpm"]
    subprocess.run([*rpm, "--initdb"], check=True)
    lock = root.path / "var" / "lib" / "rpm" / ".rpm.lock"

    d = nvkmd_daemon(root, env={"NOTIFY_SOCKET": str(notify.path)})
    d.wait_ready()
    proc = subprocess.Popen([*rpm, "-i", "--nodeps", str(package)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        waiting_for(notify, f"rpm lock {lock} (pid {proc.pid})")
        assert proc.poll() is None and d.jobs() == []
        released = open_gate(root.path, proc)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
    job = d.wait_job(k, "succeeded", timeout=120)
    assert job["started_at"] > released
    assert installed_version(root, k) == "9.9.1"
    # Asked of rpm itself, in a subprocess.
    assert pkgdb.headers_packages(Paths.build(root.path), [k]) == {k: "kernel-devel-nvkmdtest"}
    assert d.stop() == 0
