"""What each installed kernel offers: headers, toolchain, compression,
signing, and the NVIDIA modules already installed for it."""

from __future__ import annotations

import dataclasses
import re
from functools import cached_property
from pathlib import Path

from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.limits import check_release
from nvkmd.paths import Paths
from nvkmd.system.modinfo import MODULE_SUFFIXES, modinfo, module_name

NVKMD_SUBDIR = "updates/nvkmd"


def release_key(release: str) -> tuple:
    """Sort key: numeric parts as numbers, so 6.1.0-56 > 6.1.0-9."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p)
                 for p in re.findall(r"\d+|[^\d.+~-]+", release))


def parse_kconfig(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value.strip().strip('"')
    return out


@dataclasses.dataclass(frozen=True)
class Toolchain:
    make_vars: tuple[tuple[str, str], ...]   # e.g. (("CC", "gcc-12"),)
    tools: tuple[str, ...]                   # executables that must exist
    text: str                                # CONFIG_CC_VERSION_TEXT

    def missing(self) -> list[str]:
        import shutil    # not at module level: the boot check imports this module
        return [t for t in self.tools if shutil.which(t) is None]

    def describe(self) -> str:
        vars_ = " ".join(f"{k}={v}" for k, v in self.make_vars) or "default"
        return f"{vars_} ({self.text})" if self.text else vars_


def toolchain_for(kconfig: dict[str, str]) -> Toolchain:
    text = kconfig.get("CONFIG_CC_VERSION_TEXT", "")
    if kconfig.get("CONFIG_CC_IS_CLANG") == "y":
        ld_lld = kconfig.get("CONFIG_LD_IS_LLD") == "y"
        vars_ = [("CC", "clang")]
        tools = ["clang"]
        if ld_lld:
            vars_ += [("LD", "ld.lld"), ("LLVM", "1")]
            tools += ["ld.lld", "llvm-ar", "llvm-nm", "llvm-objcopy"]
        return Toolchain(tuple(vars_), tuple(tools), text)
    # Debian records the exact compiler ("gcc-12 (Debian ...) 12.2.0").
    cc = text.split()[0] if text else "gcc"
    if not re.match(r"^[A-Za-z0-9._+-]+$", cc):
        cc = "gcc"
    return Toolchain((("CC", cc),), (cc, "make", "ld"), text)


COMPRESSION = (("CONFIG_MODULE_COMPRESS_ZSTD", ".zst"), ("CONFIG_MODULE_COMPRESS_XZ", ".xz"),
               ("CONFIG_MODULE_COMPRESS_GZIP", ".gz"))


@dataclasses.dataclass(frozen=True)
class InstalledModule:
    path: Path
    name: str
    version: str
    vermagic: str
    signed: bool
    signer: str


class Kernel:
    """One ``<modules>/<release>`` directory."""

    def __init__(self, paths: Paths, release: str):
        self.paths = paths
        self.release = check_release(release)
        self.dir = paths.kernel_dir(release)

    def __repr__(self) -> str:
        return f"Kernel({self.release!r})"

    @property
    def build_link(self) -> Path:
        return self.dir / "build"

    def _follow(self, link: Path) -> Path | None:
        """Where a ``build``/``source`` link leads.

        Debian's links are absolute; inside a test root they are read
        relative to the root, as the system they belong to would.
        """
        try:
            target = Path(link.readlink()) if link.is_symlink() else link
        except OSError:
            return None
        if target.is_absolute() and self.paths.root != Path("/"):
            candidate = self.paths.at(str(target))
            target = candidate if candidate.exists() else target
        elif not target.is_absolute():
            target = link.parent / target
        return target if target.is_dir() else None

    @property
    def headers(self) -> Path | None:
        """The headers (output) tree, if ``build`` resolves to one with
        Makefile and .config: Kbuild's ``SYSOUT``."""
        target = self._follow(self.build_link)
        if target and (target / "Makefile").is_file() and (target / ".config").is_file():
            return target
        return None

    @property
    def source_tree(self) -> Path | None:
        """Kbuild's ``SYSSRC``: Debian splits the headers into an arch tree
        (``build``) and a common tree (``source``)."""
        for link in (self.dir / "source", self.build_link / "source"):
            target = self._follow(link)
            if target and (target / "Makefile").is_file():
                return target
        return self.headers

    @cached_property
    def kconfig(self) -> dict[str, str]:
        h = self.headers
        if h is None:
            raise NvkmdError(ErrorCode.HEADERS_MISSING, f"{self.release}: no kernel headers "
                             f"({self.build_link} does not lead to a tree with Makefile and .config)")
        return parse_kconfig((h / ".config").read_text(errors="replace"))

    @property
    def toolchain(self) -> Toolchain:
        return toolchain_for(self.kconfig)

    @property
    def compression(self) -> str:
        for key, suffix in COMPRESSION:
            if self.kconfig.get(key) == "y":
                return suffix
        return ""

    @property
    def sig_hash(self) -> str:
        return self.kconfig.get("CONFIG_MODULE_SIG_HASH", "sha256")

    @property
    def sign_file(self) -> Path | None:
        h = self.headers
        tool = h / "scripts" / "sign-file" if h else None
        return tool if tool and tool.exists() else None

    @property
    def nvkmd_dir(self) -> Path:
        return self.dir / NVKMD_SUBDIR

    def nvidia_modules(self) -> list[InstalledModule]:
        """Every installed ``nvidia*`` module of this kernel, wherever it lies."""
        out = []
        if not self.dir.is_dir():
            return out
        for path in sorted(self.dir.rglob("nvidia*.ko*")):
            if not path.name.endswith(MODULE_SUFFIXES) or not path.is_file():
                continue
            if any(part.startswith(".") for part in path.relative_to(self.dir).parts):
                continue  # our own staging and backup directories
            try:
                info = modinfo(path)
            except NvkmdError:
                info = {}
            out.append(InstalledModule(path, module_name(path), info.get("version", ""),
                                       info.get("vermagic", ""), "sig" in info or "sig_id" in info,
                                       info.get("signer", "")))
        return out


def is_leftover(d: Path) -> bool:
    """A kernel directory holding nothing but what nvkmd and depmod put
    there: the kernel's packages are gone, so the kernel is too."""
    try:
        entries = list(d.iterdir())
    except OSError:
        return True
    if not entries:
        return False            # being unpacked, or a kernel without files yet
    for e in entries:
        if e.name.startswith("modules.") and not e.is_dir():
            continue
        if e.name == "updates" and e.is_dir() and not e.is_symlink():
            if all(c.name == "nvkmd" or c.name.startswith(".nvkmd") for c in e.iterdir()):
                continue
        return False
    return True


def list_kernels(paths: Paths, include_leftovers: bool = False) -> list[Kernel]:
    """Installed kernels, newest first.  Directories that only hold what
    nvkmd and depmod left behind are kernels that are gone: listed only
    with ``include_leftovers`` (for cleanup)."""
    releases: set[str] = set()
    for d in paths.modules_dirs:
        try:
            entries = list(d.iterdir())
        except OSError:
            continue
        for e in entries:
            if e.is_dir() and _usable(paths, e) and (include_leftovers or not is_leftover(e)):
                releases.add(e.name)
    return [Kernel(paths, r) for r in sorted(releases, key=release_key, reverse=True)]


# Reported once per daemon: a stray directory is seen by every rescan.
_reported: set[tuple[str, str]] = set()


def _warn_once(path: Path, why: str) -> None:
    if (str(path), why) not in _reported:
        _reported.add((str(path), why))
        import structlog    # only here: the boot check imports this module
        structlog.get_logger().warning("skipping a directory in the modules directory",
                                       path=str(path), reason=why)


def _usable(paths: Paths, d: Path) -> bool:
    """A kernel directory nvkmd may act on: a name that is a kernel release
    (never one with "..": it ends up in paths nvkmd writes), and not a
    symlink leading out of the modules directories (nvkmd installs there)."""
    try:
        check_release(d.name)
    except NvkmdError:
        if not d.name.startswith("."):       # ours (.nvkmd-handover-*) and hidden ones
            _warn_once(d, "not a kernel release name")
        return False
    if d.is_symlink():
        target = d.resolve()
        homes = [m.resolve() for m in paths.modules_dirs if m.is_dir()]
        if not any(target.is_relative_to(h) for h in homes):
            _warn_once(d, f"a symlink to {target}, outside the modules directories")
            return False
    return True
