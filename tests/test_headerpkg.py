"""Headers packages are checked before anything is unpacked: absolute
names, '..', links leading out, device files are refused, and a refused or
failed unpack leaves no files behind.  The archives are made by the real
tools (dpkg-deb -b, bsdtar, rpmbuild) and one is Debian's own."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import aptrepo
from helpers import REPO
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.system import headerpkg


def deb(tmp: Path, name: str, fill) -> Path:
    tree = tmp / f"{name}.tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        "Description: test\n")
    fill(tree)
    out = tmp / f"{name}_1.0_all.deb"
    aptrepo.run("dpkg-deb", "--root-owner-group", "-b", str(tree), str(out))
    return out


def fake_headers(tree: Path, release: str = "9.9.9-test") -> None:
    h = tree / "usr/src" / f"linux-headers-{release}"
    h.mkdir(parents=True)
    (h / "Makefile").write_text("all:\n")
    (h / ".config").write_text("CONFIG_CC_VERSION_TEXT=\"gcc-12\"\n")
    k = tree / "lib/modules" / release
    k.mkdir(parents=True)
    os.symlink(f"/usr/src/linux-headers-{release}", k / "build")


def pkg_tar(tmp: Path, name: str, members_dir: Path, *names: str, absolute: bool = False) -> Path:
    out = tmp / f"{name}-1-1-x86_64.pkg.tar.zst"
    aptrepo.run("bsdtar", "--zstd", "-cf", str(out), *(["-P"] if absolute else []),
                "-C", str(members_dir), *names)
    return out


def refused(tmp: Path, archive: Path, words: str) -> None:
    work = tmp / "work"
    with pytest.raises(NvkmdError) as e:
        headerpkg.unpack([archive], work)
    assert e.value.code is ErrorCode.INVALID_ARGUMENT
    assert words in e.value.message, e.value.message
    assert not work.exists() or not any(work.iterdir()), list(work.iterdir())


def test_a_good_deb_unpacks_and_its_links_stay_inside(tmp_path):
    d = deb(tmp_path, "linux-headers-9.9.9-test", fake_headers)
    u = headerpkg.unpack([d], tmp_path / "work")
    try:
        assert u.release == "9.9.9-test"
        link = u.root / "lib/modules/9.9.9-test/build"
        # made relative: make follows it inside the private root, not on the machine
        assert not os.readlink(link).startswith("/")
        assert link.resolve() == (u.root / "usr/src/linux-headers-9.9.9-test").resolve()
        assert u.kernel.headers.resolve() == link.resolve()
    finally:
        u.remove()
    assert not u.root.exists()


def test_link_leading_out_is_refused(tmp_path):
    def fill(tree: Path) -> None:
        fake_headers(tree)
        os.symlink("../../../../../../etc/shadow", tree / "usr/src/linux-headers-9.9.9-test/evil")
    refused(tmp_path, deb(tmp_path, "evil-link", fill), "leads out of the package")


def test_absolute_link_with_dotdot_is_refused(tmp_path):
    def fill(tree: Path) -> None:
        fake_headers(tree)
        os.symlink("/usr/../../etc", tree / "usr/src/x")
    refused(tmp_path, deb(tmp_path, "evil-abs-link", fill), "leads out of the package")


def test_device_file_is_refused(tmp_path):
    def fill(tree: Path) -> None:
        fake_headers(tree)
        os.mknod(tree / "usr/src/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    refused(tmp_path, deb(tmp_path, "evil-dev", fill), "device or FIFO")


def test_absolute_member_name_is_refused(tmp_path):
    src = tmp_path / "abs"
    (src / "usr/src").mkdir(parents=True)
    (src / "usr/src/f").write_text("x")
    refused(tmp_path, pkg_tar(tmp_path, "evil-abs", src, str(src / "usr/src/f"), absolute=True),
            "absolute path")


def test_dotdot_member_name_is_refused(tmp_path):
    src = tmp_path / "dd" / "inner"
    src.mkdir(parents=True)
    (tmp_path / "dd" / "escape").write_text("x")
    refused(tmp_path, pkg_tar(tmp_path, "evil-dotdot", src, "../escape", absolute=True), "'..'")


def test_a_package_without_headers_is_refused(tmp_path):
    def fill(tree: Path) -> None:
        (tree / "usr/share/doc/x").mkdir(parents=True)
        (tree / "usr/share/doc/x/README").write_text("hi")
    refused(tmp_path, deb(tmp_path, "no-headers", fill), "holds no kernel headers")


def test_not_a_package_is_refused(tmp_path):
    bogus = tmp_path / "bogus.deb"
    bogus.write_bytes(b"not an ar archive")
    refused(tmp_path, bogus, "not a readable deb package")


def test_arch_layout_headers_in_usr_lib_modules(tmp_path):
    """Arch's linux-headers: the build tree is a directory in usr/lib/modules/<K>/build."""
    src = tmp_path / "arch"
    b = src / "usr/lib/modules/6.6.1-arch1-1/build"
    b.mkdir(parents=True)
    (b / "Makefile").write_text("all:\n")
    (b / ".config").write_text("CONFIG_CC_IS_GCC=y\n")
    u = headerpkg.unpack([pkg_tar(tmp_path, "linux-headers", src, "usr")], tmp_path / "work")
    try:
        assert u.release == "6.6.1-arch1-1" and u.kernel.headers == u.root / "usr/lib/modules/6.6.1-arch1-1/build"
    finally:
        u.remove()


def test_rpm_from_rpmbuild_unpacks(tmp_path):
    """Fedora's kernel-devel layout (usr/src/kernels/<K>, a build link), made by rpmbuild."""
    top = tmp_path / "rpmbuild"
    spec = tmp_path / "kernel-devel.spec"
    spec.write_text("""Name: kernel-devel
Version: 6.8.1
Release: 300.fc40
Summary: test
License: GPL
BuildArch: noarch
%description
test
%install
mkdir -p %{buildroot}/usr/src/kernels/6.8.1-300.fc40.x86_64 %{buildroot}/usr/lib/modules/6.8.1-300.fc40.x86_64
echo 'all:' > %{buildroot}/usr/src/kernels/6.8.1-300.fc40.x86_64/Makefile
echo 'CONFIG_CC_IS_GCC=y' > %{buildroot}/usr/src/kernels/6.8.1-300.fc40.x86_64/.config
ln -s /usr/src/kernels/6.8.1-300.fc40.x86_64 %{buildroot}/usr/lib/modules/6.8.1-300.fc40.x86_64/build
%files
/usr/src/kernels/6.8.1-300.fc40.x86_64
/usr/lib/modules/6.8.1-300.fc40.x86_64/build
""")
    aptrepo.run("rpmbuild", "--define", f"_topdir {top}", "-bb", str(spec), timeout=300)
    rpm = next(top.rglob("*.rpm"))
    u = headerpkg.unpack([rpm], tmp_path / "work")
    try:
        assert u.release == "6.8.1-300.fc40.x86_64" and u.kernel.headers is not None
    finally:
        u.remove()
    assert subprocess.run(["rpm2cpio", str(rpm)], capture_output=True).returncode == 0


def test_a_big_package_is_listed_by_a_child_not_held_in_the_caller(tmp_path):
    """tarfile keeps a TarInfo per member: 10,000 of Debian's headers package
    were 6.6 MiB more at every preflight (issue 16, P4).  The caller counts
    them all, holds next to nothing, and never loads tarfile itself."""
    def many(tree: Path) -> None:
        fake_headers(tree)
        d = tree / "usr/src/linux-headers-9.9.9-test/include"
        d.mkdir(parents=True)
        for i in range(6000):
            (d / f"h{i:05d}.h").write_text("")
    archive = deb(tmp_path, "linux-headers-9.9.9-test", many)
    probe = ("import sys, tracemalloc\n"
             "from pathlib import Path\n"
             "from nvkmd.system import headerpkg\n"
             "tracemalloc.start()\n"
             "n = headerpkg.check_archive(Path(sys.argv[1]), 'deb', Path(sys.argv[2]))\n"
             "print(n, tracemalloc.get_traced_memory()[1], 'tarfile' in sys.modules)\n")
    (tmp_path / "scratch").mkdir()
    r = subprocess.run([sys.executable, "-c", probe, str(archive), str(tmp_path / "scratch")],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    count, peak, loaded = r.stdout.split()
    assert int(count) > 6000
    assert int(peak) < 1 << 20, f"the caller held {int(peak) >> 20} MiB listing the package"
    assert loaded == "False"
