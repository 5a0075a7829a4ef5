"""Preflight on a pacman system: the real pacman on a test root with a
local repository (makepkg, repo-add).  The installed `linux` 6.1.170-1
has an upgrade, 6.1.170-2, in the sync database; its `linux-headers`
carries Debian's real 6.1.0-47 headers in Arch's layout (one tree in
usr/lib/modules/<K>/build).  The preflight finds the candidate with
pacman -Sup, downloads it with pacman -Sw into the root's pacman cache,
unpacks it with bsdtar and builds the tiny tree: ready, nothing installed."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import need_kernels
from nvkmd.build.preflight import Runner
from nvkmd.config import Config
from nvkmd.paths import Paths
from nvkmd.system import source as sources
from nvkmd.system.candidates import pacman_for, pacman_upgrade_candidates
from test_preflight import OLD, tiny_root

PKGBUILD = """\
pkgname=({names})
pkgver=6.1.170
pkgrel={rel}
arch=(x86_64)
license=(GPL2)
package_linux() {{
  pkgdesc="test kernel"
  install -Dm644 /dev/null "$pkgdir/usr/lib/modules/{k}/pkgbase"
}}
package_linux-headers() {{
  pkgdesc="test kernel headers"
  local b="$pkgdir/usr/lib/modules/{k}/build"
  mkdir -p "$b"
  cp -a {common}/. "$b"/
  cp -a {arch}/. "$b"/
  cp {common}/Makefile "$b"/Makefile
  rm -f "$b"/scripts "$b"/tools
  cp -a {kbuild}/scripts {kbuild}/tools "$b"/
}}
"""


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=900, **kw)
    assert p.returncode == 0, f"{cmd}: {p.stdout[-2000:]}{p.stderr[-2000:]}"
    return p


def makepkg(rel: int, names: str, out: Path) -> list[Path]:
    k = Path(f"/lib/modules/{OLD}")
    work = Path(tempfile.mkdtemp(prefix="nvkmd-pf-makepkg-"))
    try:
        (work / "PKGBUILD").write_text(PKGBUILD.format(
            names=names, rel=rel, k=OLD, common=(k / "source").resolve(), arch=(k / "build").resolve(),
            kbuild=(k / "build" / "scripts").resolve().parent))
        conf = work / "makepkg.conf"
        conf.write_text(Path("/etc/makepkg.conf").read_text() +
                        "\nPKGEXT='.pkg.tar.zst'\nCOMPRESSZST=(zstd -c -T0 -1 -)\nOPTIONS=(!strip !debug)\n")
        for p in [work, *work.rglob("*")]:
            os.lchown(p, 65534, 65534)
        run("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "makepkg", "--config",
            str(conf), "--nodeps", "--noconfirm", cwd=work,
            env={"PATH": "/usr/bin:/bin", "HOME": str(work), "PKGDEST": str(work)})
        got = []
        for pkg in work.glob("*.pkg.tar.zst"):
            shutil.copy2(pkg, out / pkg.name)
            got.append(out / pkg.name)
        return sorted(got)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def pacman_root(root, tmp_path):
    need_kernels(1)
    tiny_root(root)
    r = root.path
    for d in ("var/lib/pacman/local", "var/lib/pacman/sync", "var/cache/pacman/pkg", "repo"):
        (r / d).mkdir(parents=True, exist_ok=True)
    (r / "etc/pacman.conf").write_text(
        "[options]\nArchitecture = auto\nSigLevel = Never\n"
        f"CacheDir = {r}/var/cache/pacman/pkg/\n[nvkmdtest]\nServer = file://{r}/repo\n")
    old = makepkg(1, "linux", tmp_path)
    pm = pacman_for(Paths.build(r))
    assert pm is not None and pm.config == r / "etc/pacman.conf"
    pm_run = ["pacman", "--root", str(r), "--dbpath", str(r / "var/lib/pacman"),
              "--config", str(r / "etc/pacman.conf"), "--noconfirm"]
    run(*pm_run, "-U", "--nodeps", "--nodeps", str(old[0]))
    new = makepkg(2, "linux linux-headers", r / "repo")
    run("repo-add", str(r / "repo/nvkmdtest.db.tar.gz"), *map(str, new))
    run(*pm_run, "-Sy")
    return root, pm


def test_pacman_candidate_downloaded_unpacked_and_built(pacman_root):
    root, pm = pacman_root
    (c,) = pacman_upgrade_candidates(pm)
    assert (c.manager, c.package, c.version, c.installed) == ("pacman", "linux-headers", "6.1.170-2", "")
    assert c.hold_command().startswith("IgnorePkg = linux linux-headers")
    paths = Paths.build(root.path)
    config = Config(source_path="/usr/src/nvidia-tiny")
    runner = Runner(paths, config, None, pm)
    res = asyncio.run(runner.check(c, sources.discover(paths, config)))
    assert res.verdict == "ready" and res.kernel == OLD and res.manager == "pacman", res
    # Downloaded into pacman's cache, not installed.
    assert list((root.path / "var/cache/pacman/pkg").glob("linux-headers-6.1.170-2-*.pkg.tar.zst"))
    local = {p.name.rsplit("-", 2)[0] for p in (root.path / "var/lib/pacman/local").iterdir() if p.is_dir()}
    assert local == {"linux"}
    assert not (root.path / "usr/lib/modules" / OLD / "build").exists()
    assert not any(paths.preflight_work.iterdir())
