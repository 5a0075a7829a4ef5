"""Downloading a candidate's headers packages with the package manager's
own tools, into its own cache: ``apt-get download`` in apt's
``Dir::Cache::archives``, ``pacman -Sw --cachedir``.  Nothing is installed;
``apt-get clean`` / ``pacman -Sc`` tidy the cache as they always do."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.paths import Paths
from nvkmd.system.candidates import Apt, Candidate, Pacman

DOWNLOAD_TIMEOUT_S = 900


class DownloadFailed(NvkmdError):
    """The package manager could not fetch a package: the verdict is "could not tell"."""

    def __init__(self, message: str):
        super().__init__(ErrorCode.UNREACHABLE, message)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("W: ")]
    return lines[-1] if lines else "no output"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def apt_download(apt: Apt, cand: Candidate, archives: Path) -> list[Path]:
    """The candidate's packages as files in ``archives``.  A file already
    there is reused when its checksum is the one apt's lists give."""
    wanted: list[tuple[str, Path, str]] = []
    for spec in cand.fetch:
        try:
            fields = apt.show(spec)
        except NvkmdError as e:
            raise DownloadFailed(e.message) from None
        name = fields.get("Filename", "").rsplit("/", 1)[-1]
        if not re.match(r"^[A-Za-z0-9+.~%_-]+\.deb$", name):
            raise DownloadFailed(f"{spec}: apt's lists name no package file")
        wanted.append((spec, archives / name, fields.get("SHA256", "")))
    missing = [spec for spec, f, sha in wanted if not (f.is_file() and sha and _sha256(f) == sha)]
    if missing:
        archives.mkdir(parents=True, exist_ok=True)
        # As root, without apt's switch to _apt: nvkmd.service's capability
        # bounding set has no CAP_SETUID, and the files go to root's cache.
        proc = apt.run("apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *missing,
                       cwd=archives, timeout=DOWNLOAD_TIMEOUT_S)
        if proc.returncode != 0:
            raise DownloadFailed(f"apt-get download {' '.join(missing)}: "
                                 f"{_last_line(proc.stderr or proc.stdout)}")
    for spec, f, sha in wanted:
        if not f.is_file() or (sha and _sha256(f) != sha):
            raise DownloadFailed(f"apt-get download {spec} left no complete {f.name} in {archives}")
    return [f for _, f, _ in wanted]


def pacman_download(pm: Pacman, cand: Candidate, cache: Path) -> list[Path]:
    cache.mkdir(parents=True, exist_ok=True)
    urls = pm.run("-Sp", "--cachedir", str(cache), *cand.fetch)
    if urls.returncode != 0:
        raise DownloadFailed(f"pacman -Sp {' '.join(cand.fetch)}: {_last_line(urls.stderr)}")
    names = [u.rsplit("/", 1)[-1] for u in urls.stdout.split() if "://" in u]
    proc = pm.run("-Sw", "--noconfirm", "--cachedir", str(cache), *cand.fetch,
                  timeout=DOWNLOAD_TIMEOUT_S)
    if proc.returncode != 0:
        raise DownloadFailed(f"pacman -Sw {' '.join(cand.fetch)}: {_last_line(proc.stderr)}")
    files = [cache / n for n in names]
    if not files or not all(f.is_file() for f in files):
        raise DownloadFailed(f"pacman -Sw left no package file in {cache}")
    return files


def download(paths: Paths, cand: Candidate, apt: Apt | None, pm: Pacman | None) -> list[Path]:
    if cand.manager == "apt":
        if apt is None:
            raise DownloadFailed("apt is not available here")
        return apt_download(apt, cand, apt.directory("Dir::Cache::archives", paths.apt_archives))
    if pm is None:
        raise DownloadFailed("pacman is not available here")
    return pacman_download(pm, cand, paths.pacman_cache)
