"""Working with DKMS when the driver source is registered there.

``build.backend = "auto"`` builds through DKMS when ``dkms status`` lists a
registration whose source is the tree nvkmd would build, ``"dkms"``
insists on it.  DKMS's own output and the ``make.log`` it writes go into
nvkmd's build log line by line, so progress and diagnosis work as for a
Kbuild build; a failing ``dkms`` exit status is written to the log as a
line ``diagnose`` maps to a cause (``diagnose.DKMS_EXIT``).

One kernel, one owner.  DKMS installs into ``updates/dkms`` and nvkmd into
``updates/nvkmd``; both are searched with the same priority, so two sets
would make modprobe's choice arbitrary.  The rule:

* DKMS backend: nvkmd's own modules for that kernel are moved aside just
  before ``dkms install`` and deleted once DKMS has installed; if DKMS
  fails, they are put back and depmod runs again, so the kernel keeps a
  working module.  nvkmd owns those files, so it can hand them over.
* Kbuild backend: a kernel for which DKMS has an nvidia module installed
  is refused with a ``conflict`` cause naming the DKMS module.  Those files
  belong to DKMS and to the package that registered the module; removing
  them behind DKMS's back would be undone by its next kernel hook.

DKMS has no ``--root``: it always works on the real ``/var/lib/dkms``,
``/usr/src`` and ``/lib/modules``.  nvkmd therefore builds through DKMS only
when its root is ``/``; on any other root ``dkms status`` is not asked and
``"auto"`` means Kbuild.  Reading which DKMS modules are installed for a
kernel (``installed``) reads DKMS's tree inside the root instead, which is
cheap and works on any root.

A forced rebuild of the version DKMS already has installed goes through
``dkms build --force``, which first deletes DKMS's built copy: if that
rebuild fails, the installed module files stay but DKMS no longer counts
them as built.  That is DKMS's design; a new version is built beside the
old one and only replaces it once built.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Callable

from . import diagnose
from .buildlog import BuildLog
from .errors import ErrorCode, NvkmdError
from .install import depmod
from .kbuild import _kill_group, count_lines
from .kernels import NVKMD_SUBDIR, Kernel
from .locks import kernel_lock
from .modinfo import MODULE_SUFFIXES
from .paths import Paths
from .procenv import child_env
from .progress import Counts, Progress, ProgressTracker
from .source import Source

DKMS_SUBDIR = "updates/dkms"
# A frozen copy of a version's source that `source update` left for DKMS
# (see sourcemgmt.update); removed with the registration once unused.
RETIRED_MARK = ".nvkmd-retired"
TAIL_INTERVAL_S = 0.2


@dataclasses.dataclass(frozen=True)
class Entry:
    """One line of ``dkms status``."""
    name: str
    version: str
    kernel: str        # "" for a module that is only added
    arch: str
    state: str         # added | built | installed | installed-weak | ...
    note: str = ""     # DKMS's parenthesised remark, e.g. "(WARNING! ...)"


# dkms 3.x: "nvidia/9.9.1, 6.1.0-47-amd64, x86_64: installed (note)"
# dkms 2.x: "nvidia, 9.9.1, 6.1.0-47-amd64, x86_64: installed"
_STATUS_RE = re.compile(r"^(?P<name>[^,/:\s]+)(?:/|,\s*)(?P<version>[^,:\s]+)"
                        r"(?:,\s*(?P<kernel>[^,:\s]+),\s*(?P<arch>[^,:\s]+))?"
                        r":\s*(?P<state>[\w-]+)\s*(?P<note>.*)$")


def parse_status(text: str) -> list[Entry]:
    """``dkms status`` output to entries (pure); lines it cannot read are skipped."""
    out = []
    for line in text.splitlines():
        m = _STATUS_RE.match(line.strip())
        if m:
            out.append(Entry(m["name"], m["version"], m["kernel"] or "", m["arch"] or "",
                             m["state"], m["note"].strip()))
    return out


def available() -> bool:
    return shutil.which("dkms") is not None


def usable(paths: Paths) -> bool:
    """DKMS can act for this root: it is installed and the root is the real system."""
    return paths.root == Path("/") and available()


def run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``dkms <args>``, output captured (stderr merged into stdout)."""
    try:
        return subprocess.run(["dkms", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=child_env(), stdin=subprocess.DEVNULL,
                              timeout=timeout, check=False)
    except FileNotFoundError:
        raise NvkmdError(ErrorCode.NOT_SUPPORTED, "dkms is not installed") from None
    except subprocess.TimeoutExpired:
        raise NvkmdError(ErrorCode.TIMEOUT, f"dkms {' '.join(args)} did not finish in "
                         f"{timeout:g}s") from None


def status(paths: Paths, name: str = "", version: str = "", kernel: str = "") -> list[Entry]:
    """What ``dkms status`` lists (nothing when DKMS cannot act for this root).

    One registration whose dkms.conf is gone makes dkms print an error and
    nothing else (exit status 0): that is an error here, not "no modules".
    """
    if not usable(paths):
        return []
    args = ["status"]
    for flag, value in (("-m", name), ("-v", version), ("-k", kernel)):
        if value:
            args += [flag, value]
    out = run(args, timeout=60).stdout
    entries = parse_status(out)
    errors = [line.strip() for line in out.splitlines() if line.startswith("Error!")]
    if errors and not entries:
        more = [line.strip() for line in out.splitlines()[1:] if line.strip()][:1]
        raise NvkmdError(ErrorCode.NOT_SUPPORTED, f"dkms status failed: {' '.join(errors[:1] + more)}")
    return entries


@dataclasses.dataclass(frozen=True)
class Registration:
    """A module/version added to DKMS, and the tree its ``source`` link leads to."""
    name: str
    version: str
    source_dir: Path   # /usr/src/<name>-<version> (DKMS's view)
    tree: Path         # where it resolves

    @property
    def spec(self) -> str:
        return f"{self.name}/{self.version}"


def registrations(paths: Paths) -> list[Registration]:
    """Every module/version ``dkms status`` lists, with where its source is."""
    seen: dict[tuple[str, str], Registration] = {}
    for e in status(paths):
        if (e.name, e.version) in seen:
            continue
        link = paths.dkms_tree / e.name / e.version / "source"
        try:
            source_dir = Path(os.readlink(link))
        except OSError:
            source_dir = paths.src_dir / f"{e.name}-{e.version}"
        seen[(e.name, e.version)] = Registration(e.name, e.version, source_dir,
                                                 source_dir.resolve())
    return list(seen.values())


def registration_for(paths: Paths, source: Source) -> Registration | None:
    """The DKMS registration whose source is ``source``'s tree, if any."""
    wanted = {source.tree.resolve(), source.origin.resolve()}
    for r in registrations(paths):
        if r.tree in wanted and r.version == source.version:
            return r
    return None


@dataclasses.dataclass(frozen=True)
class Choice:
    backend: str                         # "kbuild" | "dkms"
    registration: Registration | None    # set when backend is "dkms" and usable
    problem: str = ""                    # why "dkms" was asked for but cannot be used


def choose(backend: str, paths: Paths, source: Source) -> Choice:
    """Which backend builds ``source``: ``build.backend`` and DKMS's registrations."""
    if backend == "kbuild":
        return Choice("kbuild", None)
    try:
        reg = registration_for(paths, source) if usable(paths) else None
    except NvkmdError as e:
        # DKMS is broken: building around it could install a second module.
        return Choice("dkms", None, e.message)
    if reg:
        return Choice("dkms", reg)
    if backend == "auto":
        return Choice("kbuild", None)
    if paths.root != Path("/"):
        why = f"dkms works on the real system only, not on the root {paths.root}"
    elif not available():
        why = "dkms is not installed"
    else:
        why = (f"{source.origin} (version {source.version}) is not registered with DKMS "
               "(`dkms status` does not list it)")
    return Choice("dkms", None, why)


# -- what DKMS has installed, read from its tree (cheap, any root) ----------

def installed(paths: Paths, release: str) -> list[tuple[str, str]]:
    """(name, version) of the nvidia DKMS modules installed for ``release``.

    DKMS marks the active version per kernel with a symlink
    ``<dkms_tree>/<name>/kernel-<release>-<arch> -> <version>/<release>/<arch>``.
    """
    out = []
    tree = paths.dkms_tree
    try:
        names = sorted(d for d in os.listdir(tree) if d.startswith("nvidia"))
    except OSError:
        return out
    prefix = f"kernel-{release}-"
    for name in names:
        try:
            entries = os.listdir(tree / name)
        except OSError:
            continue
        for e in entries:
            if not e.startswith(prefix):
                continue
            try:
                parts = os.readlink(tree / name / e).split("/")
            except OSError:
                continue
            if len(parts) == 3 and parts[1] == release:
                out.append((name, parts[0]))
    return out


def built_names(paths: Paths, name: str, version: str, release: str) -> set[str]:
    """File names of the modules DKMS built for ``release`` (its copies)."""
    out: set[str] = set()
    for mod_dir in (paths.dkms_tree / name / version / release).glob("*/module"):
        try:
            out |= {p.name for p in mod_dir.iterdir() if p.name.endswith(MODULE_SUFFIXES)}
        except OSError:
            pass
    return out


def nvidia_module_files(kdir: Path) -> list[Path]:
    """nvidia*.ko* in a kernel's module directory, not following build/source
    and skipping hidden (staging) directories."""
    out = []
    for top, dirs, files in os.walk(kdir):
        dirs[:] = [d for d in dirs if not d.startswith(".")
                   and not (top == str(kdir) and d in ("build", "source"))]
        out += [Path(top) / f for f in files
                if f.startswith("nvidia") and f.endswith(MODULE_SUFFIXES)]
    return sorted(out)


def installed_files(paths: Paths, kernel: Kernel) -> list[Path]:
    """The module files DKMS put in place for ``kernel``: where DKMS installs
    differs per distribution (updates/dkms, extra, updates), so they are
    found by the names DKMS built, plus anything in ``updates/dkms``."""
    names: set[str] = set()
    for n, v in installed(paths, kernel.release):
        names |= built_names(paths, n, v, kernel.release)
    dkms_dir = kernel.dir / DKMS_SUBDIR
    if not names and not dkms_dir.is_dir():
        return []
    return [p for p in nvidia_module_files(kernel.dir)
            if p.parent == dkms_dir or (p.name in names and NVKMD_SUBDIR not in str(p))]


def owner_of(paths: Paths, kernel: Kernel) -> str:
    """``name/version`` (or the install directory) when DKMS has nvidia modules
    installed for ``kernel``, else ""."""
    mods = installed(paths, kernel.release)
    if mods:
        return ", ".join(f"{n}/{v}" for n, v in mods)
    files = installed_files(paths, kernel)
    return str(files[0].parent) if files else ""


def refuse_if_owned(paths: Paths, kernel: Kernel) -> None:
    """The Kbuild backend's half of the one-owner rule."""
    owner = owner_of(paths, kernel)
    if owner:
        raise NvkmdError(ErrorCode.BUILD_FAILED, f"{diagnose.MARK_CONFLICT} DKMS already has an "
                         f"nvidia module installed for {kernel.release} ({owner}); nvkmd will not "
                         f"install a second one into {NVKMD_SUBDIR}. Build through DKMS "
                         f"(build.backend = \"auto\" or \"dkms\" with that source) or remove it: "
                         f"dkms remove {owner.split(',')[0]} -k {kernel.release}")


# -- the backend -------------------------------------------------------------

class DkmsBackend:
    """Builds and installs one kernel through ``dkms build`` / ``dkms install``."""

    def __init__(self, paths: Paths, timeout_s: float,
                 on_critical: Callable[[bool], None] = lambda entering: None):
        self.paths = paths
        self.timeout_s = timeout_s
        self.on_critical = on_critical

    # nvkmd remembers which source digest it built through DKMS per kernel,
    # so a changed tree with an unchanged version number is rebuilt.
    def _record_path(self, release: str) -> Path:
        return self.paths.state_dir / "dkms" / f"{release}.json"

    def _record(self, release: str) -> dict:
        try:
            data = json.loads(self._record_path(release).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_record(self, release: str, reg: Registration, source: Source) -> None:
        p = self._record_path(release)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps({"name": reg.name, "version": reg.version,
                                   "digest": source.digest}) + "\n")
        os.replace(tmp, p)

    def _digest_changed(self, release: str, reg: Registration, source: Source) -> bool:
        r = self._record(release)
        return bool(r) and (r.get("name"), r.get("version")) == (reg.name, reg.version) \
            and r.get("digest") != source.digest

    def is_current(self, kernel: Kernel, source: Source, reg: Registration) -> bool:
        """DKMS has ``reg`` installed for the kernel, built from this very tree
        (as far as nvkmd recorded), and nvkmd's own modules are not beside it."""
        return ((reg.name, reg.version) in installed(self.paths, kernel.release)
                and bool(installed_files(self.paths, kernel))
                and not self._digest_changed(kernel.release, reg, source)
                and not kernel.nvkmd_dir.exists())

    @staticmethod
    def describe(reg: Registration, release: str) -> str:
        args = f"-m {reg.name} -v {reg.version} -k {release}"
        return f"dkms build {args} --verbose; dkms install {args} --verbose"

    async def build_and_install(self, kernel: Kernel, source: Source, reg: Registration,
                                log: BuildLog, on_progress: Callable[[Progress], None],
                                force: bool) -> None:
        # DKMS shares one build directory per module/version: one build at a time.
        async with kernel_lock(self.paths, f"dkms-{reg.name}-{reg.version}", self.timeout_s):
            await self._locked(kernel, source, reg, log, on_progress, force)

    async def _locked(self, kernel: Kernel, source: Source, reg: Registration, log: BuildLog,
                      on_progress: Callable[[Progress], None], force: bool) -> None:
        release = kernel.release
        spec = ["-m", reg.name, "-v", reg.version, "-k", release]
        states = {e.state for e in await asyncio.to_thread(status, self.paths, reg.name,
                                                            reg.version, release)}
        have = "installed" if "installed" in states else "built" if "built" in states else ""
        rebuild = force or not have or self._digest_changed(release, reg, source)
        log.write(f"nvkmd/dkms: DKMS has {reg.spec} {have or 'not built'} for {release}"
                  f"{'; rebuilding' if rebuild and have else ''}")
        if rebuild:
            on_progress(Progress("prepare", 0))
            rc = await self._run_build(kernel, source, reg, spec + (["--force"] if have else []),
                                       log, on_progress)
            if rc != 0:
                raise NvkmdError(ErrorCode.BUILD_FAILED, diagnose.dkms_exit_line("build", rc))
        on_progress(Progress("install", 99))
        await asyncio.to_thread(self._install, kernel, reg, spec,
                                reinstall=have == "installed" and rebuild,
                                skip_dkms=have == "installed" and not rebuild, log=log.write)
        self._write_record(release, reg, source)
        await asyncio.to_thread(self._drop_orphans, reg, log.write)

    def _install(self, kernel: Kernel, reg: Registration, spec: list[str], *, reinstall: bool,
                 skip_dkms: bool, log: Callable[[str], None]) -> None:
        """Hand the kernel over from nvkmd's own modules to DKMS's, keeping
        ours until DKMS has installed (see the module docstring)."""
        ours = kernel.nvkmd_dir
        # Outside the kernel's directory: depmod would index a hidden one too.
        aside = kernel.dir.parent / f".nvkmd-handover-{kernel.release}"
        self.on_critical(True)
        try:
            if ours.exists():
                shutil.rmtree(aside, ignore_errors=True)
                ours.rename(aside)
                log(f"nvkmd/dkms: moved nvkmd's own modules aside ({ours} -> {aside.name}) for DKMS")
            if skip_dkms:
                if aside.exists():
                    depmod(kernel, log)
            else:
                log("$ dkms install " + " ".join(spec) + " --verbose" + (" --force" if reinstall else ""))
                proc = run(["install", *spec, "--verbose", *(["--force"] if reinstall else [])],
                           timeout=self.timeout_s)
                for line in proc.stdout.splitlines():
                    log(line)
                # dkms exits 0 without copying when its version check finds a module
                # of the same version elsewhere: believe the files, not the status.
                placed = {p.name for p in installed_files(self.paths, kernel)}
                built = built_names(self.paths, reg.name, reg.version, kernel.release)
                missing = (reg.name, reg.version) not in installed(self.paths, kernel.release) \
                    or not built or not built <= placed
                if proc.returncode != 0 or missing:
                    if aside.exists():
                        shutil.rmtree(ours, ignore_errors=True)
                        aside.rename(ours)
                        log("nvkmd/dkms: DKMS did not install; nvkmd's own modules are back in place")
                        depmod(kernel, log)
                    if proc.returncode != 0:
                        raise NvkmdError(ErrorCode.BUILD_FAILED,
                                         diagnose.dkms_exit_line("install", proc.returncode))
                    raise NvkmdError(ErrorCode.BUILD_FAILED, f"{diagnose.MARK_INSTALL} dkms install "
                                     f"exited 0 but {reg.spec} is not installed for {kernel.release}")
        finally:
            shutil.rmtree(aside, ignore_errors=True)
            self.on_critical(False)
        log(f"installed {reg.spec} for {kernel.release} through DKMS into {kernel.dir / DKMS_SUBDIR}")

    def _drop_orphans(self, reg: Registration, log: Callable[[str], None]) -> None:
        """Unregister older versions of the same module that ``source update``
        retired (their source is nvkmd's frozen copy) once no kernel uses them."""
        for name, version in sorted({(e.name, e.version) for e in status(self.paths, reg.name)}):
            src = self.paths.dkms_tree / name / version / "source"
            if version == reg.version or not (src / RETIRED_MARK).is_file():
                continue
            if any((name, version) in installed(self.paths, k.name)
                   for k in _kernel_dirs(self.paths)):
                continue
            frozen = src.resolve()
            proc = run(["remove", "-m", name, "-v", version, "--all"])
            log(f"nvkmd/dkms: unregistered {name}/{version} from DKMS (retired by source update, "
                f"no kernel uses it): dkms remove exited {proc.returncode}")
            if proc.returncode == 0 and (frozen / RETIRED_MARK).is_file():
                shutil.rmtree(frozen, ignore_errors=True)

    async def _run_build(self, kernel: Kernel, source: Source, reg: Registration, spec: list[str],
                         log: BuildLog, on_progress: Callable[[Progress], None]) -> int:
        try:
            counts = await asyncio.to_thread(count_lines, kernel, source, source.tree) \
                if kernel.headers else Counts(0, 0, 0)
        except (NvkmdError, OSError, subprocess.SubprocessError):
            counts = Counts(0, 0, 0)
        tracker = ProgressTracker(counts)

        def line_in(line: str) -> None:
            log.write(line)
            p = tracker.feed(line)
            if p:
                on_progress(p)

        make_log = self.paths.dkms_tree / reg.name / reg.version / "build" / "make.log"
        stale = _inode(make_log)
        cmd = ["dkms", "build", *spec, "--verbose"]
        log.write("$ " + " ".join(cmd))
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=child_env(), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, limit=1 << 20)
        done = asyncio.Event()

        async def pump() -> None:
            assert proc.stdout is not None
            while raw := await proc.stdout.readline():
                line_in(raw.decode(errors="replace").rstrip("\n"))
            await proc.wait()

        async def run_all() -> None:
            tail = asyncio.create_task(_follow(make_log, stale, done, line_in))
            try:
                await pump()
            finally:
                done.set()
                await tail

        try:
            await asyncio.wait_for(run_all(), self.timeout_s)
        except asyncio.TimeoutError:
            await _kill_group(proc)
            log.write(f"{diagnose.MARK_TIMEOUT} {self.timeout_s:g}s (build.timeout_s); "
                      "the process group was killed")
            return -signal.SIGKILL
        except asyncio.CancelledError:
            await _kill_group(proc)
            log.write(f"{diagnose.MARK_CANCELLED}; the process group was killed")
            raise
        rc = proc.returncode if proc.returncode is not None else -1
        if rc < 0:
            log.write(f"{diagnose.MARK_KILLED} {signal.Signals(-rc).name}")
        return rc


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


async def _follow(path: Path, stale: int | None, done: asyncio.Event,
                  on_line: Callable[[str], None]) -> None:
    """Feed the lines of DKMS's ``make.log`` as they are written.

    DKMS deletes the build directory and writes a new make.log (make's
    output goes there, not to DKMS's stdout); after a successful build it
    renames the file into its log directory, which an open file survives.
    A make.log left from an earlier build (``stale`` inode) is ignored.
    """
    fh = None
    buf = ""
    try:
        while True:
            finished = done.is_set()
            if fh is None:
                try:
                    f = open(path, "r", errors="replace")
                except OSError:
                    f = None
                if f is not None:
                    if os.fstat(f.fileno()).st_ino == stale:
                        f.close()
                    else:
                        fh = f
            if fh is not None:
                chunk = fh.read()
                if chunk:
                    buf += chunk
                    *lines, buf = buf.split("\n")
                    for line in lines:
                        on_line(line)
            if finished:
                break
            try:
                await asyncio.wait_for(done.wait(), TAIL_INTERVAL_S)
            except asyncio.TimeoutError:
                pass
    finally:
        if buf:
            on_line(buf)
        if fh is not None:
            fh.close()


def _kernel_dirs(paths: Paths) -> list[Path]:
    out = []
    for d in paths.modules_dirs:
        try:
            out += [e for e in d.iterdir() if e.is_dir()]
        except OSError:
            pass
    return out


# -- registration (used by `source init` and cleanup) ------------------------

def add(paths: Paths, name: str, version: str) -> subprocess.CompletedProcess:
    """``dkms add -m name -v version`` (the source is /usr/src/<name>-<version>)."""
    return run(["add", "-m", name, "-v", version])


def remove(name: str, version: str, kernel: str | None = None) -> subprocess.CompletedProcess:
    """``dkms remove`` for one kernel, or every kernel (unregistering the version)."""
    return run(["remove", "-m", name, "-v", version, *(["-k", kernel] if kernel else ["--all"])])
