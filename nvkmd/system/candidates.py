"""Kernels the package manager would install next, and the headers
packages that belong to them.

apt: ``apt-get -s --with-new-pkgs upgrade`` is apt's own answer to "what
would an upgrade install" (new ABI packages pulled in by the installed
metapackages included, held packages excluded); a ``linux-image-<K>`` or
``linux-headers-<K>`` in it is a candidate kernel, and its headers
package's ``Depends`` name the common headers and kbuild packages to fetch
with it.  python3-apt would give the same, but it is not on PyPI, and nvkmd
must run with PyPI's libraries too.

pacman: ``pacman -Sup`` against the sync databases; ``<kernel>`` upgrades
come with ``<kernel>-headers`` of the same version.

Nothing here needs root or takes a lock: simulations and cache queries only.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.paths import Paths
from nvkmd.procenv import child_env, run_tool

QUERY_TIMEOUT_S = 120
APT_CONFIG_ENV = "APT_CONFIG"

# linux-image-6.1.0-57-amd64, linux-image-6.1.0-57-amd64-unsigned, linux-headers-6.1.0-57-rt-amd64
_APT_KERNEL_RE = re.compile(r"^linux-(image|headers)-(\d+\.\d+[^\s]*?)(-unsigned|-dbg)?$")
_INST_RE = re.compile(r"^Inst (\S+) (?:\[(\S+)\] )?\((\S+) ")
_PACMAN_KERNELS = re.compile(r"^linux(-[a-z0-9]+)?$")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One kernel the package manager would install, with its headers."""
    manager: str                   # "apt" or "pacman"
    release: str                   # best knowledge before unpacking ("" = from the package)
    package: str                   # the headers package
    version: str                   # its version: with the driver version, the cache key
    fetch: tuple[str, ...]         # what to download: "name=version" (apt) or names (pacman)
    hold: tuple[str, ...]          # the packages whose hold keeps this kernel out
    installed: str = ""            # the version installed now ("" = a new kernel)

    @property
    def key(self) -> str:
        return f"{self.manager}:{self.package}={self.version}"

    def hold_command(self) -> str:
        if self.manager == "apt":
            return "apt-mark hold " + " ".join(self.hold)
        return "IgnorePkg = " + " ".join(self.hold) + "  (in /etc/pacman.conf)"


def _tool_error(what: str, proc: subprocess.CompletedProcess | None, msg: str = "") -> NvkmdError:
    if not msg and proc is not None:
        msg = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    detail = msg
    return NvkmdError(ErrorCode.UNREACHABLE, f"{what}: {detail}")


@dataclasses.dataclass(frozen=True)
class Apt:
    """apt, as the system (or an ``APT_CONFIG`` file) configures it."""
    config_file: Path | None = None

    def env(self) -> dict[str, str]:
        extra = {APT_CONFIG_ENV: str(self.config_file)} if self.config_file else {}
        return child_env(**extra)

    def run(self, *args: str, cwd: Path | None = None,
            timeout: float = QUERY_TIMEOUT_S) -> subprocess.CompletedProcess:
        return run_tool(list(args), timeout=timeout, env=self.env(), cwd=cwd, capture_output=True)

    def directory(self, key: str, fallback: Path) -> Path:
        """A directory from apt's configuration (``Dir::Cache::archives``, ``Dir::State::lists``)."""
        proc = self.run("apt-config", "shell", "D", f"{key}/d")
        m = re.search(r"D='([^']+)'", proc.stdout or "")
        return Path(m.group(1)) if m else fallback

    def show(self, spec: str) -> dict[str, str]:
        """``apt-cache show name[=version]``: the first (candidate) stanza."""
        proc = self.run("apt-cache", "show", "--no-all-versions", spec)
        if proc.returncode != 0 or not proc.stdout.strip():
            raise NvkmdError(ErrorCode.INVALID_ARGUMENT, f"{spec}: no such package in apt's lists "
                             "(apt-cache show found nothing; run apt update?)")
        fields: dict[str, str] = {}
        last = ""
        for line in proc.stdout.split("\n\n")[0].splitlines():
            if line.startswith((" ", "\t")) and last:
                fields[last] += "\n" + line.strip()
            elif ":" in line:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
        return fields

    def installed_version(self, name: str) -> str:
        proc = self.run("dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Version}", name)
        out = proc.stdout.strip()
        return out.split()[-1] if proc.returncode == 0 and out.startswith("ii") else ""


def depends(fields: dict[str, str]) -> list[tuple[str, str, str]]:
    """(name, relation, version) of each Depends entry (first of alternatives)."""
    out = []
    for entry in fields.get("Depends", "").split(","):
        first = entry.split("|")[0].strip()
        m = re.match(r"^([a-z0-9][a-z0-9+.-]+)(?::\S+)?(?:\s*\(\s*([<>=]+)\s*([^)\s]+)\s*\))?", first)
        if m:
            out.append((m.group(1), m.group(2) or "", m.group(3) or ""))
    return out


def headers_for_image(apt: Apt, name: str, version: str) -> tuple[str, str]:
    """The headers package (name, version) of a kernel image or metapackage."""
    m = _APT_KERNEL_RE.match(name)
    if m:
        return f"linux-headers-{m.group(2)}", version
    # A metapackage (linux-image-amd64, linux-headers-cloud-amd64): follow its Depends.
    fields = apt.show(f"{name}={version}" if version else name)
    for dep, _, dep_version in depends(fields):
        d = _APT_KERNEL_RE.match(dep)
        if d:
            return f"linux-headers-{d.group(2)}", dep_version or fields.get("Version", "")
    raise NvkmdError(ErrorCode.INVALID_ARGUMENT, f"{name}: not a kernel package (its Depends "
                     "name no linux-image-<release> or linux-headers-<release>)")


def apt_candidate(apt: Apt, headers: str, version: str = "", hold: tuple[str, ...] = ()) -> Candidate:
    """The headers package and what must be fetched with it: the common
    headers and kbuild packages its Depends name."""
    fields = apt.show(f"{headers}={version}" if version else headers)
    version = fields.get("Version", version)
    fetch = [f"{headers}={version}"]
    for dep, rel, dep_version in depends(fields):
        if dep.startswith(("linux-headers-", "linux-kbuild-")):
            # "=" pins the version; ">=" is met by the candidate apt would pick.
            fetch.append(f"{dep}={dep_version}" if rel == "=" else dep)
    m = _APT_KERNEL_RE.match(headers)
    release = m.group(2) if m else ""
    image = f"linux-image-{release}" if release else ""
    return Candidate("apt", release, headers, version, tuple(fetch),
                     hold or tuple(filter(None, (image, headers))), apt.installed_version(headers))


def resolve_apt(apt: Apt, target: str) -> Candidate:
    """TARGET as a person names it: a package (``linux-headers-6.1.0-57-amd64``,
    ``linux-image-amd64``), ``name=version``, or a kernel release (``6.1.0-57-amd64``)."""
    name, _, version = target.partition("=")
    if re.match(r"^\d+\.\d+", name):
        name = f"linux-headers-{name}"
    if not re.match(r"^linux-(image|headers)-[a-z0-9][a-z0-9+.-]*$", name):
        raise NvkmdError(ErrorCode.INVALID_ARGUMENT, f"{target!r}: not a kernel package name, "
                         "a kernel release, a package file or a headers directory")
    headers, hversion = headers_for_image(apt, name, version)
    return apt_candidate(apt, headers, hversion if hversion else version)


def apt_upgrade_candidates(apt: Apt) -> list[Candidate]:
    """Every kernel ``apt upgrade`` would install now, newest package first."""
    proc = apt.run("apt-get", "-s", "-q", "--with-new-pkgs", "-o", "Debug::NoLocking=1",
                   "-o", "APT::Get::Show-User-Simulation-Note=false", "upgrade")
    if proc.returncode != 0:
        raise _tool_error("apt-get -s upgrade", proc)
    pulled: dict[str, tuple[str, str, set[str]]] = {}   # release -> (headers, version, hold)
    metas: list[str] = []
    for line in proc.stdout.splitlines():
        m = _INST_RE.match(line)
        if not m:
            continue
        name, old, new = m.groups()
        if name.endswith("-common") or "-common-" in name:
            continue      # comes with its arch package; holding that one is enough
        k = _APT_KERNEL_RE.match(name)
        if k:
            release = k.group(2)
            headers, version, hold = pulled.setdefault(release, (f"linux-headers-{release}", new, set()))
            hold.add(name)
        elif name.startswith(("linux-image-", "linux-headers-")) and old:
            metas.append(name)      # an installed metapackage moving to a new ABI
    out = []
    for release, (headers, version, hold) in pulled.items():
        # Holding the installed metapackage keeps a new ABI out; the kernel
        # packages themselves keep an upgrade of an installed one out.
        hold_all = tuple(sorted(hold | set(metas))) if metas else tuple(sorted(hold))
        try:
            out.append(apt_candidate(apt, headers, version, hold_all))
        except NvkmdError:
            continue      # an image without a headers package in the lists
    return out


# -- pacman --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Pacman:
    root: Path
    dbpath: Path
    config: Path | None = None        # a test root's own pacman.conf

    def run(self, *args: str, timeout: float = QUERY_TIMEOUT_S) -> subprocess.CompletedProcess:
        cmd = ["pacman", "--root", str(self.root), "--dbpath", str(self.dbpath),
               *(["--config", str(self.config)] if self.config else []), *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, env=child_env(),
                                  timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise NvkmdError(ErrorCode.NOT_SUPPORTED, "pacman is not installed") from None
        except subprocess.TimeoutExpired:
            raise NvkmdError(ErrorCode.TIMEOUT, f"pacman {args[0]} did not finish in "
                             f"{timeout:g}s") from None


def pacman_for(paths: Paths) -> Pacman | None:
    if not (paths.pacman_dir / "local").is_dir() or shutil.which("pacman") is None:
        return None
    conf = paths.pacman_conf
    return Pacman(paths.root, paths.pacman_dir,
                  conf if paths.root != Path("/") and conf.is_file() else None)


def pacman_upgrade_candidates(pm: Pacman) -> list[Candidate]:
    """Kernel packages ``pacman -Syu`` would upgrade, from the sync databases
    as they are (nvkmd never syncs them itself)."""
    proc = pm.run("-Sup", "--print-format", "%n %v")
    if proc.returncode != 0:
        raise _tool_error("pacman -Sup", proc)
    upgrades = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.count(" ") == 1)
    out = []
    for name, version in upgrades.items():
        if _PACMAN_KERNELS.match(name) and not name.endswith("-headers"):
            headers = f"{name}-headers"
            installed = pm.run("-Q", headers)
            out.append(Candidate("pacman", "", headers, version, (headers,), (name, headers),
                                 installed.stdout.split()[-1] if installed.returncode == 0 else ""))
    return out


def apt_for(paths: Paths, config_file: Path | None) -> Apt | None:
    """apt when this system is apt's: the real root, or an explicit APT_CONFIG."""
    if shutil.which("apt-get") is None:
        return None
    if config_file is None and paths.root != Path("/"):
        return None
    return Apt(config_file)


def upgrade_candidates(paths: Paths, apt_config: Path | None = None) -> list[Candidate]:
    out: list[Candidate] = []
    apt = apt_for(paths, apt_config)
    if apt is not None:
        out += apt_upgrade_candidates(apt)
    pm = pacman_for(paths)
    if pm is not None:
        out += pacman_upgrade_candidates(pm)
    return out


def manager(paths: Paths, apt_config: Path | None = None) -> str:
    """"apt", "pacman" or "" (no package manager nvkmd can ask)."""
    if apt_for(paths, apt_config):
        return "apt"
    return "pacman" if pacman_for(paths) else ""
