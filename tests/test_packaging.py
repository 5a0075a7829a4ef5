"""The three packages, built with the real tools: Debian's .deb
(dpkg-buildpackage, lintian), Arch's (makepkg, as an unprivileged user, as
makepkg demands) and Fedora's (rpmbuild).  Each installs the same files,
modulo the distributions' conventions, which are written down below."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from helpers import REPO

pytestmark = pytest.mark.packaging

VERSION = "0.1.0"
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# Where a distribution puts the same file.  Canonical form: Arch's and
# Fedora's (/usr/lib/systemd/system, site-functions, /usr/share/licenses).
RENAMES = {
    "deb": [
        # Debian 12 ships system units in /lib (lintian errs on /usr/lib/systemd/system
        # there); merged-/usr makes it the same directory.
        ("/lib/systemd/system/", "/usr/lib/systemd/system/"),
        ("/usr/share/zsh/vendor-completions/", "/usr/share/zsh/site-functions/"),
        ("/usr/share/doc/nvkmd/copyright", "/usr/share/licenses/nvkmd/LICENSE"),
    ],
    "arch": [],
    "rpm": [],
}
# Files only one distribution has, and why.
ONLY = {
    # Debian's kernel and headers packages run these (run-parts); the others
    # use kernel-install (Fedora) or pacman hooks (Arch).
    "deb": {"/etc/kernel/postinst.d/zz-nvkmd", "/etc/kernel/header_postinst.d/zz-nvkmd",
            # debian/changelog, required by Debian policy
            "/usr/share/doc/nvkmd/changelog.gz"},
    "arch": {"/usr/share/libalpm/hooks/nvkmd.hook"},
    "rpm": set(),
}
# Runtime dependencies, one row per need: Debian, Arch, Fedora names.
DEPENDS = [
    ("python3-dbus-fast", "python-dbus-fast", "python3-dbus-fast"),
    ("python3-structlog", "python-structlog", "python3-structlog"),
    ("python3-sdnotify", "python-sdnotify", "python3-sdnotify"),
    ("python3-tenacity", "python-tenacity", "python3-tenacity"),
    ("python3-pyinotify", "python-pyinotify", "python3-inotify"),
    ("python3-systemd", "python-systemd", "python3-systemd"),
    ("make", "make", "make"),
    ("gcc", "gcc", "gcc"),
    ("binutils", "binutils", "binutils"),
    ("kmod", "kmod", "kmod"),
]
SITE = re.compile(r"^/usr/(local/)?lib/python3[^/]*/(site|dist)-packages/")


def canonical(paths: set[str], distro: str) -> set[str]:
    out = set()
    for p in paths:
        for old, new in RENAMES[distro]:
            if p.startswith(old):
                p = new + p[len(old):]
        if "/__pycache__/" in p:
            continue                     # bytecode: compiled at build (Arch, Fedora) or install (Debian)
        m = SITE.match(p)
        if m:
            p = "<site-packages>/" + p[m.end():]
            # dist-info: each installer writes its own bookkeeping (RECORD, INSTALLER, LICENSE)
            if ".dist-info/" in p and not p.endswith(("/entry_points.txt", "/METADATA")):
                continue
        if p.startswith("/usr/share/man/") and p.endswith(".gz"):
            p = p[:-3]
        out.add(p)
    return out


def _source_tree(dest: Path) -> Path:
    """The checkout as a release tarball would have it: tracked files plus
    new ones not yet committed (what git archive gives after a commit)."""
    tree = dest / f"nvkmd-{VERSION}"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for f in filter(None, files):
        src = REPO / os.fsdecode(f)
        if src.is_file():
            target = tree / os.fsdecode(f)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return tree


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    """One copy of the source for all three builds (others may be changing
    the checkout meanwhile)."""
    return _source_tree(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def tarball(snapshot) -> Path:
    tree = snapshot
    out = tree.parent / f"nvkmd-{VERSION}.tar.gz"
    with tarfile.open(out, "w:gz") as tf:
        tf.add(tree, arcname=tree.name)
    return out


def _env(home: Path, **extra: str) -> dict[str, str]:
    # Debian's python3 installs to /usr/local unless a package build says
    # otherwise; deb_system is what pybuild sets (ignored on Arch and Fedora).
    return {"PATH": CLEAN_PATH, "HOME": str(home), "LANG": "C.UTF-8",
            "DEB_PYTHON_INSTALL_LAYOUT": "deb_system", **extra}


@pytest.fixture(scope="module")
def deb(tmp_path_factory, snapshot) -> Path:
    out = tmp_path_factory.mktemp("deb")
    r = subprocess.run([str(snapshot / "scripts/build-deb"), str(out)], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path.name == f"nvkmd_{VERSION}_all.deb"
    return path


@pytest.fixture(scope="module")
def arch(tmp_path_factory, tarball) -> Path:
    if not shutil.which("makepkg"):
        pytest.fail("makepkg is missing (Debian package makepkg; scripts/setup installs it)")
    # Not under pytest's root-only temporary directory: nobody must reach it.
    work = Path(tempfile.mkdtemp(prefix="nvkmd-makepkg-"))
    for f in ("PKGBUILD", "nvkmd.install"):
        shutil.copy(REPO / "packaging/arch" / f, work / f)
    shutil.copy(tarball, work / tarball.name)
    # Arch calls its interpreter "python"; here that is Debian's python3.
    (work / "bin").mkdir()
    (work / "bin/python").symlink_to("/usr/bin/python3")
    for p in [work, *work.rglob("*")]:
        os.lchown(p, 65534, 65534)
    # makepkg refuses to run as root: build as nobody, without dependency
    # checks (this machine's pacman database has none of Arch's packages).
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        "makepkg", "--nodeps", "--noconfirm"], cwd=work, capture_output=True,
                       text=True, timeout=900,
                       env=_env(work, PATH=f"{work / 'bin'}:{CLEAN_PATH}"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [pkg] = work.glob(f"nvkmd-{VERSION}-1-any.pkg.tar.*")
    kept = tmp_path_factory.mktemp("arch") / pkg.name
    shutil.copy(pkg, kept)
    shutil.rmtree(work)
    return kept


@pytest.fixture(scope="module")
def rpm(tmp_path_factory, tarball) -> Path:
    if not shutil.which("rpmbuild"):
        pytest.fail("rpmbuild is missing (Debian package rpm; scripts/setup installs it)")
    top = tmp_path_factory.mktemp("rpm")
    (top / "SOURCES").mkdir()
    shutil.copy(tarball, top / "SOURCES" / tarball.name)
    # --nodeps: Fedora's BuildRequires are not in this machine's rpm database.
    r = subprocess.run(["rpmbuild", "-bb", "--nodeps", "--define", f"_topdir {top}",
                        str(REPO / "packaging/fedora/nvkmd.spec")], capture_output=True, text=True,
                       timeout=900, env=_env(top))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "warning:" not in r.stderr.replace("BuildBackendWarning", ""), r.stderr[-3000:]
    [pkg] = (top / "RPMS" / "noarch").glob(f"nvkmd-{VERSION}-1*.noarch.rpm")
    return pkg


def _run(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=300).stdout


def deb_files(deb: Path) -> set[str]:
    out = _run("dpkg-deb", "--contents", str(deb))
    return {"/" + line.split(None, 5)[5].split(" -> ")[0].lstrip("./")
            for line in out.splitlines() if not line.startswith("d")}


def arch_files(pkg: Path) -> set[str]:
    with tarfile.open(pkg) as tf:
        return {"/" + m.name for m in tf.getmembers()
                if not m.isdir() and not m.name.startswith(".")}


def rpm_files(pkg: Path) -> set[str]:
    out = _run("rpm", "-qp", "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]", str(pkg))
    return {line.split(" ", 1)[1] for line in out.splitlines() if not line.startswith("d")}


def test_the_three_packages_install_the_same_files(deb, arch, rpm, snapshot):
    lists = {"deb": deb_files(deb), "arch": arch_files(arch), "rpm": rpm_files(rpm)}
    canon = {d: canonical(files, d) for d, files in lists.items()}
    for d, only in ONLY.items():
        missing = {p for p in only if p not in lists[d]}
        assert not missing, f"{d}: the exceptions are out of date: {missing}"
    common = {d: canon[d] - canonical(ONLY[d], d) for d in canon}
    assert common["deb"] == common["arch"], (common["deb"] ^ common["arch"])
    assert common["deb"] == common["rpm"], (common["deb"] ^ common["rpm"])
    # Every module of the source tree, the programs, units, bus files, hooks,
    # man pages and completions are among them.
    modules = {"<site-packages>/" + str(p.relative_to(snapshot))
               for p in (snapshot / "nvkmd").rglob("*.py")}
    assert modules <= common["deb"], modules - common["deb"]
    # Every optional drop-in of the service is there to copy into /etc.
    dropins = {f"/usr/share/doc/nvkmd/examples/{p.name}"
               for p in (snapshot / "systemd/nvkmd.service.d").glob("*.conf")}
    assert dropins and dropins <= common["deb"], dropins - common["deb"]
    for p in ("/usr/bin/nvkmd", "/usr/bin/nvkmctl", "/usr/bin/nvkmd-agent",
              "/usr/lib/systemd/system/nvkmd.service", "/usr/lib/systemd/system/nvkmd-ready.service",
              "/usr/lib/systemd/user/nvkmd-agent.service",
              "/usr/share/dbus-1/system.d/io.github.nvkmd.conf",
              "/usr/share/dbus-1/system-services/io.github.nvkmd.service",
              "/usr/share/polkit-1/actions/io.github.nvkmd.policy",
              "/usr/lib/nvkmd/nvkmd-rescan", "/usr/lib/kernel/install.d/95-nvkmd.install",
              "/etc/nvkmd/nvkmd.toml", "/etc/xdg/autostart/nvkmd-agent.desktop",
              "/usr/share/man/man8/nvkmd.8", "/usr/share/man/man1/nvkmctl.1",
              "/usr/share/man/man1/nvkmd-agent.1", "/usr/share/man/man5/nvkmd.toml.5",
              "/usr/share/bash-completion/completions/nvkmctl",
              "/usr/share/zsh/site-functions/_nvkmctl",
              "/usr/share/fish/vendor_completions.d/nvkmctl.fish",
              "/usr/share/doc/nvkmd/README.md"):
        assert p in common["deb"], p


def test_the_configuration_is_kept_on_upgrade_everywhere(deb, arch, rpm, tmp_path):
    subprocess.run(["dpkg-deb", "-e", str(deb), str(tmp_path / "control")], check=True)
    assert "/etc/nvkmd/nvkmd.toml" in (tmp_path / "control/conffiles").read_text().split()
    with tarfile.open(arch) as tf:
        pkginfo = tf.extractfile(".PKGINFO").read().decode()
    assert "backup = etc/nvkmd/nvkmd.toml" in pkginfo.splitlines()
    assert "/etc/nvkmd/nvkmd.toml" in _run("rpm", "-qcp", str(rpm)).split()


def test_the_three_packages_depend_on_the_same_things(deb, arch, rpm):
    control = _run("dpkg-deb", "--field", str(deb), "Depends")
    deb_deps = {re.split(r"[ (]", alt.strip())[0] for dep in control.split(",")
                for alt in dep.split("|")}
    with tarfile.open(arch) as tf:
        pkginfo = tf.extractfile(".PKGINFO").read().decode()
    arch_deps = set(re.findall(r"^depend = (\S+)", pkginfo, re.M))
    rpm_deps = {line.split()[0] for line in _run("rpm", "-qp", "--requires", str(rpm)).splitlines()}
    for d, a, f in DEPENDS:
        assert d in deb_deps, (d, control)
        assert a in arch_deps, (a, arch_deps)
        assert f in rpm_deps, (f, rpm_deps)
    # The floors are Debian 12's versions (tests/test_pyproject.py says why).
    assert "python3-dbus-fast (>= 1.84)" in control and "python3-structlog (>= 22.3)" in control


def test_lintian_finds_no_errors_or_warnings(deb):
    r = subprocess.run(["lintian", "--no-cfg", "--display-info", str(deb)], capture_output=True,
                       text=True, timeout=600, env={"PATH": CLEAN_PATH, "HOME": "/root"})
    tags = [line for line in r.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    assert tags == [], r.stdout
    assert r.returncode == 0, r.stdout + r.stderr


def test_maintainer_scripts_start_the_service_and_purge_everything(deb, tmp_path):
    subprocess.run(["dpkg-deb", "-e", str(deb), str(tmp_path / "control")], check=True)
    postinst = (tmp_path / "control/postinst").read_text()
    postrm = (tmp_path / "control/postrm").read_text()
    prerm = (tmp_path / "control/prerm").read_text()
    assert "deb-systemd-helper enable 'nvkmd.service'" in postinst
    assert "_dh_action=restart" in postinst and "deb-systemd-invoke $_dh_action 'nvkmd.service'" in postinst
    # nvkmd-ready waits for builds: enabled, never started by apt.
    assert "deb-systemd-helper enable 'nvkmd-ready.service'" in postinst
    scripts = "".join(p.read_text() for p in (tmp_path / "control").glob("p*"))
    assert [l for l in scripts.splitlines() if "deb-systemd-invoke" in l and "nvkmd-ready" in l] == []
    assert "deb-systemd-invoke stop 'nvkmd.service'" in prerm
    for d in ("/var/lib/nvkmd", "/var/cache/nvkmd", "/var/log/nvkmd", "/etc/nvkmd"):
        assert d in postrm
    assert "updates/nvkmd" in postrm


def test_the_versions_agree():
    """pyproject, debian/changelog, the PKGBUILD and the spec: one version."""
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(rf'^version = "{re.escape(VERSION)}"$', text, re.M)
    assert (REPO / "debian/changelog").read_text().startswith(f"nvkmd ({VERSION})")
    assert f"pkgver={VERSION}\n" in (REPO / "packaging/arch/PKGBUILD").read_text()
    assert re.search(rf"^Version:\s+{re.escape(VERSION)}$",
                     (REPO / "packaging/fedora/nvkmd.spec").read_text(), re.M)
