"""Preflight: build the driver source for a kernel that is not installed.

The candidate's headers packages are fetched into the package manager's
cache, checked and unpacked into a private root (system/headerpkg.py), and
the source is built against that tree with the same ``make`` as a real
build (build/kbuild.py): ``SYSSRC``/``SYSOUT`` point into the private
root, so nothing under ``/lib/modules`` is read or written and nothing is
installed.  The log is kept under ``<logdir>/preflight/<K>/``; the private
root and build tree are removed whatever happens.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

from nvkmd.build import diagnose
from nvkmd.build.kbuild import make_vars, prepare_tree, run_make
from nvkmd.build.log import BuildLog
from nvkmd.build.progress import Progress
from nvkmd.config import Config
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.paths import Paths
from nvkmd.procenv import child_env
from nvkmd.system import headerpkg
from nvkmd.system.candidates import Apt, Candidate, Pacman, apt_candidate, resolve_apt
from nvkmd.system.fetch import DownloadFailed, download
from nvkmd.system.headerpkg import FORMATS, Unpacked
from nvkmd.system.source import Source
from nvkmd.verdict import NOT_ABOUT_THE_KERNEL, READY, UNKNOWN, WILL_BREAK, PreflightResult

ProgressFn = Callable[[Progress], None]
# The lowest CPU priority: a preflight is worth less than anything else the
# machine does (nvkmd.service's own Nice=10 comes on top for real builds too).
LOWEST = ("nice", "-n", "19")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def looks_like_path(target: str) -> bool:
    return "/" in target or target.startswith(".") or target.endswith(tuple(FORMATS))


def _deb_fields(deb: Path) -> dict[str, str]:
    proc = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Depends"],
                          capture_output=True, text=True, env=child_env(), timeout=60, check=False)
    if proc.returncode != 0:
        raise headerpkg.refuse(f"{deb}: not a readable .deb: {proc.stderr.strip()[:300]}")
    fields = {}
    for line in proc.stdout.splitlines():
        k, _, v = line.partition(":")
        fields[k.strip()] = v.strip()
    return fields


class Runner:
    """One preflight at a time per process; the daemon serialises them."""

    def __init__(self, paths: Paths, config: Config, apt: Apt | None, pacman: Pacman | None):
        self.paths = paths
        self.config = config
        self.apt = apt
        self.pacman = pacman

    @property
    def jobs(self) -> int:
        return self.config.build_jobs or os.cpu_count() or 1

    # -- getting the headers ---------------------------------------------
    def resolve(self, target: str) -> Candidate | Path:
        """A TARGET as typed: a package file or directory (a Path), or an apt package."""
        if looks_like_path(target):
            p = Path(target)
            if not p.is_absolute():     # the daemon's working directory is nobody's
                raise NvkmdError(ErrorCode.INVALID_ARGUMENT, f"{target}: name a package file "
                                 "or headers directory by its absolute path")
            if not p.exists():
                raise NvkmdError(ErrorCode.INVALID_ARGUMENT, f"{target}: no such file or directory")
            return p
        if self.apt is None:
            raise NvkmdError(ErrorCode.NOT_SUPPORTED, f"{target}: naming a package needs apt "
                             "(on pacman systems, give the downloaded .pkg.tar.zst)")
        return resolve_apt(self.apt, target)

    def _file_companions(self, deb: Path) -> list[Path]:
        """A Debian arch headers .deb needs its common headers and kbuild
        packages (from its Depends): the same directory's files, else apt's."""
        fields = _deb_fields(deb)
        needs = [d for d in (dep.strip() for dep in fields.get("Depends", "").split(","))
                 if d.startswith(("linux-headers-", "linux-kbuild-"))]
        if not needs:
            return []
        if self.apt is None:
            raise DownloadFailed(f"{deb.name} needs {', '.join(needs)}, and apt is not available "
                                 "to fetch them")
        cand = apt_candidate(self.apt, fields.get("Package", ""), fields.get("Version", ""))
        out = []
        for spec in cand.fetch[1:]:
            name, _, version = spec.partition("=")
            local = [f for f in deb.parent.glob(f"{name}_*.deb")
                     if not version or f.name.startswith(f"{name}_{version.replace(':', '%3a')}_")]
            if local:
                out.append(sorted(local)[-1])
                continue
            sub = Candidate("apt", "", name, version, (spec,), ())
            out += download(self.paths, sub, self.apt, self.pacman)
        return out

    def acquire(self, what: Candidate | Path, on_progress: ProgressFn) -> tuple[Unpacked, dict]:
        """The unpacked headers and what to record about the package."""
        work = self.paths.preflight_work
        if isinstance(what, Candidate):
            on_progress(Progress("download", 0))
            files = download(self.paths, what, self.apt, self.pacman)
            on_progress(Progress("unpack", 0))
            unpacked = headerpkg.unpack(files, work, what.release or None)
            return unpacked, {"package": what.package, "package_version": what.version,
                              "manager": what.manager, "hold": what.hold_command()}
        if what.is_dir():
            unpacked = headerpkg.from_directory(what, work)
            return unpacked, {"package": str(what.resolve()), "manager": "directory"}
        fmt = headerpkg.format_of(what)
        files = [what.resolve()]
        info = {"package": str(what.resolve()), "manager": "file"}
        if fmt == "deb":
            fields = _deb_fields(what)
            info.update(package=fields.get("Package", what.name),
                        package_version=fields.get("Version", ""))
            on_progress(Progress("download", 0))
            files += self._file_companions(what)
        on_progress(Progress("unpack", 0))
        return headerpkg.unpack(files, work), info

    # -- the build -------------------------------------------------------
    async def check(self, target: str | Candidate | Path, source: Source, *,
                    on_progress: ProgressFn = lambda p: None) -> PreflightResult:
        started = time.monotonic()
        what = await asyncio.to_thread(self.resolve, target) if isinstance(target, str) else target
        base = {"driver_version": source.version, "checked_at": _now()}
        if isinstance(what, Candidate):
            base.update(package=what.package, package_version=what.version, manager=what.manager,
                        hold=what.hold_command())
        acquiring = asyncio.ensure_future(asyncio.to_thread(self.acquire, what, on_progress))
        try:
            unpacked, info = await asyncio.shield(acquiring)
        except asyncio.CancelledError:
            # The thread cannot be stopped: remove what it unpacks once it is done.
            acquiring.add_done_callback(_remove_when_done)
            raise
        except DownloadFailed as e:
            return PreflightResult(kernel=getattr(what, "release", ""), verdict=UNKNOWN,
                                   kind="download-failed", cause=f"download failed: {e.message}",
                                   hint="check the network and the package manager's sources, "
                                   "then run the preflight again", first_error=e.message,
                                   elapsed_s=time.monotonic() - started, **base)
        base.update(info)
        try:
            return await self._build(unpacked, source, base, started, on_progress)
        finally:
            await asyncio.to_thread(unpacked.remove)

    async def _build(self, unpacked: Unpacked, source: Source, base: dict, started: float,
                     on_progress: ProgressFn) -> PreflightResult:
        kernel = unpacked.kernel
        log = BuildLog(self.paths.preflight_logs, kernel.release, self.config.logs_keep)
        toolchain = kernel.toolchain
        log.open({"kernel": kernel.release, "preflight": "yes: nothing is installed",
                  "package": f"{base.get('package', '')} {base.get('package_version', '')}".strip(),
                  "headers": str(kernel.headers), "source": f"{source.origin} ({source.kind})",
                  "version": source.version, "toolchain": toolchain.describe(),
                  "command": " ".join(["make", f"-j{self.jobs}", *make_vars(kernel), "modules"])})
        build_dir = Path(tempfile.mkdtemp(prefix=f"build-{kernel.release}-",
                                          dir=self.paths.preflight_work))
        try:
            with log.attempt() as attempt:
                missing = toolchain.missing()
                if missing:
                    log.write(f"{diagnose.MARK_COMPILER} {', '.join(missing)} not found "
                              f"(the kernel was built with {toolchain.text or 'gcc'})")
                else:
                    on_progress(Progress("prepare", 0))
                    await asyncio.to_thread(prepare_tree, source, build_dir)
                    rc = await run_make(kernel, source, build_dir, self.jobs,
                                        self.config.build_timeout_s, log.write, on_progress,
                                        launcher=LOWEST)
                    attempt.result = "success" if rc == 0 else "failed"
        finally:
            log.close(attempt.result, time.monotonic() - started)
            shutil.rmtree(build_dir, ignore_errors=True)
        elapsed = time.monotonic() - started
        common = dict(kernel=kernel.release, log=str(log.path), elapsed_s=round(elapsed, 2), **base)
        if attempt.result == "success":
            on_progress(Progress("done", 100))
            return PreflightResult(verdict=READY, **common)
        d = diagnose.diagnose(log.text())
        verdict = UNKNOWN if d.kind in NOT_ABOUT_THE_KERNEL else WILL_BREAK
        return PreflightResult(verdict=verdict, kind=d.kind, cause=d.cause, hint=d.hint,
                               first_error=d.first_error, **common)


def _remove_when_done(f: asyncio.Future) -> None:
    if not f.cancelled() and f.exception() is None:
        asyncio.get_running_loop().run_in_executor(None, f.result()[0].remove)

