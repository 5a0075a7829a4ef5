"""Real Debian kernel headers packages for the preflight tests, and a local
apt repository seen through a private apt configuration.

Nothing here touches the machine's apt configuration: the repository's
sources list, apt's lists, its package cache and its download cache all
live in the test's directory and are named in an ``APT_CONFIG`` file; the
dpkg status stays the machine's (read only: apt-get is only ever asked to
update its lists, simulate, or download).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import header_kernels


def run(*cmd: str, cwd: Path | None = None, env: dict | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def newest_abi() -> str:
    """The newest amd64 kernel ABI in apt's lists that is not installed here
    (6.1.0-57-amd64 when this was written)."""
    out = run("apt-cache", "search", "--names-only", r"^linux-headers-6\.1\.0-[0-9]+-amd64$").stdout
    abis = sorted({int(m) for m in re.findall(r"^linux-headers-6\.1\.0-(\d+)-amd64 ", out, re.M)})
    installed = {int(k.split("-")[1]) for k in header_kernels() if re.match(r"^6\.1\.0-\d+-amd64$", k)}
    newer = [a for a in abis if a > max(installed, default=0)]
    if not newer:
        pytest.fail(f"apt's lists have no linux-headers-6.1.0-N-amd64 newer than the installed "
                    f"{sorted(installed)}: run apt-get update")
    return f"6.1.0-{newer[-1]}-amd64"


def download(dest: Path, *specs: str) -> list[Path]:
    """``apt-get download`` of ``specs`` into ``dest``; the files, in order."""
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.iterdir())
    run("apt-get", "download", "-q", *specs, cwd=dest)
    got = sorted(set(dest.iterdir()) - before)
    assert got, f"apt-get download {specs} fetched nothing"
    return got


def headers_debs(dest: Path, release: str) -> list[Path]:
    """The arch and common headers .debs of ``release``, and the kbuild package."""
    return download(dest, f"linux-headers-{release}",
                    f"linux-headers-{release.rsplit('-', 1)[0]}-common", "linux-kbuild-6.1")


def bump(deb: Path, suffix: str, out: Path) -> Path:
    """``deb`` rebuilt with dpkg-deb -R/-b, its version (and the version its
    arch package pins the common one at) with ``suffix`` appended."""
    tree = out / f"{deb.stem}.tree"
    shutil.rmtree(tree, ignore_errors=True)
    run("dpkg-deb", "-R", str(deb), str(tree))
    control = tree / "DEBIAN" / "control"
    text = control.read_text()
    version = re.search(r"^Version: (\S+)$", text, re.M).group(1)
    text = text.replace(f"Version: {version}\n", f"Version: {version}{suffix}\n")
    text = re.sub(r"(linux-headers-\S+-common \(= )" + re.escape(version) + r"\)",
                  lambda m: f"{m.group(1)}{version}{suffix})", text)
    control.write_text(text)
    new = out / deb.name.replace(f"_{version}_", f"_{version}{suffix}_")
    run("dpkg-deb", "--root-owner-group", "-Zxz", "-b", str(tree), str(new))
    shutil.rmtree(tree)
    return new


class LocalApt:
    """A flat apt repository in ``base/repo`` and a private apt world in ``base``."""

    def __init__(self, base: Path, private_dpkg: bool = False):
        """``private_dpkg``: apt-mark writes a copy of dpkg's database in
        ``base/dpkg`` (--admindir), never the machine's."""
        self.base = base
        self.repo = base / "repo"
        self.repo.mkdir(parents=True, exist_ok=True)
        self.lists = base / "lists"
        (self.lists / "partial").mkdir(parents=True, exist_ok=True)
        self.cache = base / "cache"
        (self.cache / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        (base / "sources.list.d").mkdir(exist_ok=True)
        (base / "sources.list").write_text(f"deb [trusted=yes] file:{self.repo} ./\n")
        self.config = base / "apt.conf"
        self.config.write_text(
            f'Dir::Etc::sourcelist "{base}/sources.list";\n'
            f'Dir::Etc::sourceparts "{base}/sources.list.d";\n'
            f'Dir::State::lists "{self.lists}/";\n'
            f'Dir::Cache "{self.cache}/";\n'
            'Acquire::Languages "none";\n')
        self.dpkg = base / "dpkg"
        if private_dpkg:
            for d in ("updates", "info"):
                (self.dpkg / d).mkdir(parents=True, exist_ok=True)
            shutil.copy2("/var/lib/dpkg/status", self.dpkg / "status")
            (self.dpkg / "available").touch()
            with open(self.config, "a") as f:
                f.write(f'Dir::State::status "{self.dpkg}/status";\n'
                        f'DPkg::Options {{ "--admindir={self.dpkg}"; }};\n')

    def selection(self, package: str) -> str:
        """The private dpkg database's selection: install, hold, ..."""
        return run("dpkg-query", f"--admindir={self.dpkg}", "-W", "-f", "${db:Status-Want}",
                   package).stdout

    @property
    def env(self) -> dict[str, str]:
        return {"APT_CONFIG": str(self.config)}

    @property
    def archives(self) -> Path:
        return self.cache / "archives"

    def publish(self, *debs: Path) -> None:
        for d in debs:
            shutil.copy2(d, self.repo / d.name)
        packages = run("apt-ftparchive", "packages", ".", cwd=self.repo).stdout
        (self.repo / "Packages").write_text(packages)
        release = run("apt-ftparchive", "release", ".", cwd=self.repo).stdout
        (self.repo / "Release").write_text(release)

    def update(self) -> None:
        run("apt-get", "update", "-q", env=self.env)

    def apt(self, *args: str) -> subprocess.CompletedProcess:
        return run(*args, env=self.env)


def dpkg_state() -> str:
    return run("dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\n").stdout


def modules_state() -> list[tuple[str, int]]:
    """Everything under /lib/modules with its mtime: a preflight must change none of it."""
    out = []
    for dirpath, dirnames, filenames in os.walk("/lib/modules"):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            out.append((p, os.lstat(p).st_mtime_ns))
    return sorted(out)


# Read-only in the preflight's mount namespace.  The machine is shared:
# other work may install kernels or packages meanwhile, so "unchanged" is
# proven by the preflight not being able to write there at all.
READ_ONLY = ("/lib/modules", "/var/lib/dpkg")


def isolated_preflight(root: Path, source_path: str, target: str, apt_config: Path | None = None,
                       timeout: float = 1800) -> dict:
    """One preflight (tests/preflight_isolated.py) under ``unshare -m`` with
    READ_ONLY bound read-only; its result as a dict."""
    import json
    import sys
    binds = " && ".join(f"mount --bind -o ro {d} {d}" for d in READ_ONLY)
    here = Path(__file__).resolve().parent
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
           f'{binds} && exec "$@"', "sh", sys.executable, str(here / "preflight_isolated.py"),
           str(root), source_path, target, str(apt_config or "")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          cwd=here.parent, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def kernel_packages_state() -> str:
    """dpkg's kernel packages: a preflight installs none.  (/lib/modules as a
    whole is not compared: other work on this shared machine adds to it;
    the read-only mount proves the preflight did not.)"""
    return "".join(line + "\n" for line in dpkg_state().splitlines()
                   if line.startswith(("linux-image-", "linux-headers-", "linux-kbuild-")))
