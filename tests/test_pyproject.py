"""pyproject.toml on Debian 12's own build tools, and its floors against
what Debian 12 ships (the versions the suite runs on, see scripts/setup)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from helpers import REPO

DEBIAN_PYTHON = "/usr/bin/python3"

# PyPI name -> Debian 12 package.  The floor in pyproject.toml must be the
# version Debian ships: that is what "tested" means for the lower bound.
FLOORS = {
    "dbus-fast": "python3-dbus-fast",
    "pyinotify": "python3-pyinotify",
    "sdnotify": "python3-sdnotify",
    "structlog": "python3-structlog",
    "tenacity": "python3-tenacity",
}


def _copy_source(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for f in filter(None, files):
        src = REPO / os.fsdecode(f)
        if src.is_file():
            (dest / os.fsdecode(f)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(f))
    return dest


def _build_with_debian_setuptools(tmp_path: Path) -> tuple[Path, Path, str]:
    src = _copy_source(tmp_path / "src")
    out = tmp_path / "dist"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP"))}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    results = []
    # One process per hook, as pip and pybuild call them (setuptools keeps
    # command options across calls in one process).
    for hook in ("build_sdist", "build_wheel"):
        code = ("import sys, setuptools, setuptools.build_meta as b\n"
                f"name = b.{hook}(sys.argv[1])\n"
                "print('RESULT', setuptools.__version__, name)\n")
        # -I: nothing from the user's site or the environment; offline by
        # construction (build_meta never downloads, no pip is involved).
        r = subprocess.run([DEBIAN_PYTHON, "-I", "-c", code, str(out)], cwd=src, env=env,
                           text=True, capture_output=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        results.append([l for l in r.stdout.splitlines() if l.startswith("RESULT ")][-1].split()[1:])
    (version, sdist), (_, wheel) = results
    return out / sdist, out / wheel, version


def test_debian_setuptools_builds_sdist_and_wheel(tmp_path):
    sdist, wheel, setuptools_version = _build_with_debian_setuptools(tmp_path)
    assert setuptools_version.split(".")[0] == "66", setuptools_version
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = Parser().parsestr(zf.read("nvkmd-0.1.0.dist-info/METADATA").decode())
        entry_points = zf.read("nvkmd-0.1.0.dist-info/entry_points.txt").decode()
    assert "nvkmd/daemon/main.py" in names and "nvkmd/system/untar.py" in names
    assert not any(n.startswith("tests/") for n in names)
    assert meta["Name"] == "nvkmd" and meta["Requires-Python"] == ">=3.11"
    assert meta.get_all("License-File") == ["LICENSE"]
    for line in ("nvkmd = nvkmd.daemon.main:main", "nvkmctl = nvkmd.cli.main:main",
                 "nvkmd-agent = nvkmd.agent.main:main"):
        assert line in entry_points
    # setuptools 66 writes "dbus-fast (>=1.84)", newer ones "dbus-fast>=1.84".
    requires = [re.sub(r"[ ()]", "", r) for r in meta.get_all("Requires-Dist")]
    assert "dbus-fast>=1.84" in requires and "structlog>=22.3" in requires
    with tarfile.open(sdist) as tf:
        assert "nvkmd-0.1.0/LICENSE" in tf.getnames()


def _installed_version(package: str) -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    if r.returncode:
        pytest.fail(f"{package} is not installed: scripts/setup installs Debian's python3-* libraries")
    upstream = r.stdout.split(":")[-1].split("-")[0]
    return re.sub(r"[+~].*", "", upstream)


def _floors() -> dict[str, str]:
    text = (REPO / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    return dict(re.findall(r'"([A-Za-z0-9_.-]+)>=([0-9.]+)"', deps))


@pytest.mark.parametrize("dist", sorted(FLOORS))
def test_floor_is_the_version_debian_12_ships(dist):
    floors = _floors()
    shipped = _installed_version(FLOORS[dist])
    # Debian may ship a patch release above the floor's precision (1.84.2 for 1.84).
    assert shipped == floors[dist] or shipped.startswith(floors[dist] + "."), (dist, floors[dist], shipped)
