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

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.paths import Paths
from nvkmd.procenv import child_env
from nvkmd.system.kernels import NVKMD_SUBDIR, Kernel
from nvkmd.system.modinfo import MODULE_SUFFIXES
from nvkmd.system.source import Source

DKMS_SUBDIR = "updates/dkms"
# A frozen copy of a version's source that `source update` left for DKMS
# (see admin/sourceops.update); removed with the registration once unused.
RETIRED_MARK = ".nvkmd-retired"


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


# -- the backend -------------------------------------------------------------


def kernel_dirs(paths: Paths) -> list[Path]:
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


# nvkmd remembers which source digest it built through DKMS per kernel,
# so a changed tree with an unchanged version number is rebuilt.
def _record_path(paths: Paths, release: str) -> Path:
    return paths.state_dir / "dkms" / f"{release}.json"


def read_record(paths: Paths, release: str) -> dict:
    try:
        data = json.loads(_record_path(paths, release).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_record(paths: Paths, release: str, reg: Registration, source: Source) -> None:
    p = _record_path(paths, release)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps({"name": reg.name, "version": reg.version,
                               "digest": source.digest}) + "\n")
    os.replace(tmp, p)


def digest_changed(paths: Paths, release: str, reg: Registration, source: Source) -> bool:
    r = read_record(paths, release)
    return bool(r) and (r.get("name"), r.get("version")) == (reg.name, reg.version) \
        and r.get("digest") != source.digest


def is_current(paths: Paths, kernel: Kernel, source: Source, reg: Registration) -> bool:
    """DKMS has ``reg`` installed for the kernel, built from this very tree
    (as far as nvkmd recorded), and nvkmd's own modules are not beside it."""
    return ((reg.name, reg.version) in installed(paths, kernel.release)
            and bool(installed_files(paths, kernel))
            and not digest_changed(paths, kernel.release, reg, source)
            and not kernel.nvkmd_dir.exists())
