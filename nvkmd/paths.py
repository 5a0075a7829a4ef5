"""Every system path nvkmd touches, resolved in one place.

A ``Paths`` is built from a root prefix (``--root``, default ``/``), the
configuration and systemd's ``STATE_DIRECTORY`` / ``LOGS_DIRECTORY`` /
``CACHE_DIRECTORY``.  Paths written in the configuration are read inside
the root, so a test root or a demo root is a complete, separate system.
No other module spells an absolute system path.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from nvkmd.config import Config

DEFAULT_CONFIG = "etc/nvkmd/nvkmd.toml"
RUNNING_KERNEL_ENV = "NVKMD_RUNNING_KERNEL"

# Paths as this machine itself spells them, never under the root:
# The process table.  The processes are this machine's whatever --root says
# (a build nvkmd started under a test root runs here too).
PROC = Path("/proc")
# Where package file lists (dpkg's *.list, rpm -qf) record kernel files; on
# merged-/usr systems a list may spell either side of the USR link.
PACKAGED_MODULES_DIR = "/lib/modules"
USR = "/usr"
# The PATH children run with when we were started without one.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def under(root: Path, path: str) -> Path:
    """``path`` (absolute, as the configuration spells it) inside ``root``."""
    return root / path.lstrip("/")


def _systemd_dir(env: str) -> Path | None:
    # systemd passes a colon-separated list; the first entry is ours.
    value = os.environ.get(env, "").split(":")[0]
    return Path(value) if value else None


class _At:
    """A path of the managed system, inside the root: ``dpkg_dir =
    _At("var/lib/dpkg")``."""

    def __init__(self, path: str):
        self.path = path

    def __get__(self, obj: "Paths | None", owner: type) -> Any:
        return self if obj is None else obj.at(self.path)


class _AtEach:
    """Several paths of the managed system, in the order they are searched."""

    def __init__(self, *paths: str):
        self.paths = paths

    def __get__(self, obj: "Paths | None", owner: type) -> Any:
        return self if obj is None else [obj.at(p) for p in self.paths]


class _In:
    """A file of nvkmd's own, in one of its directories: ``database =
    _In("state_dir", "nvkmd.sqlite3")``."""

    def __init__(self, base: str, name: str):
        self.base, self.name = base, name

    def __get__(self, obj: "Paths | None", owner: type) -> Any:
        return self if obj is None else getattr(obj, self.base) / self.name


@dataclasses.dataclass(frozen=True)
class Paths:
    root: Path
    config_file: Path
    log_dir: Path
    state_dir: Path
    cache_dir: Path

    @classmethod
    def build(cls, root: str | Path = "/", config_file: str | Path | None = None,
              config: Config | None = None) -> "Paths":
        root = Path(root).resolve()
        cfile = Path(config_file) if config_file else under(root, DEFAULT_CONFIG)
        config = config or Config()
        root_is_system = root == Path("/")
        # systemd's directories apply to the real system only: a test root
        # under a running service must not write into the service's dirs.
        def pick(configured: str, env: str, default: str) -> Path:
            if configured:
                return under(root, configured)
            if root_is_system and (d := _systemd_dir(env)):
                return d
            return under(root, default)
        state = pick(config.state_dir, "STATE_DIRECTORY", "var/lib/nvkmd")
        cache = (_systemd_dir("CACHE_DIRECTORY") if root_is_system and not config.state_dir
                 else None) or state / "cache"
        return cls(
            root=root,
            config_file=cfile,
            log_dir=pick(config.logs_dir, "LOGS_DIRECTORY", "var/log/nvkmd"),
            state_dir=state,
            cache_dir=cache,
        )

    @classmethod
    def load(cls, root: str | Path = "/", config_file: str | Path | None = None, *,
             required: bool = False) -> "tuple[Paths, Config]":
        """The Paths and Config of a program's start: the configuration file's
        place needs only the root, the rest of the paths need the configuration.
        ``required``: a missing configuration file is an error, not the defaults."""
        config = Config.load(cls.build(root, config_file).config_file, required=required)
        return cls.build(root, config_file, config), config

    def at(self, path: str) -> Path:
        """A path of the managed system, e.g. ``paths.at("/etc/os-release")``."""
        return under(self.root, path)

    def system_path(self, p: Path) -> str:
        """``p`` as the managed system spells it (the inverse of ``at``), for
        the tools that run against that system and for messages to its admin;
        a path outside the root is returned as it is."""
        try:
            return "/" + str(p.relative_to(self.root)) if self.root != Path("/") else str(p)
        except ValueError:
            return str(p)

    # shadow's login.defs: where the system groups' gids end (trust.py).
    login_defs = _At("etc/login.defs")

    # -- kernels -----------------------------------------------------------
    @property
    def modules_dirs(self) -> list[Path]:
        """``lib/modules`` and, on merged-/usr systems, ``usr/lib/modules``,
        without the duplicate when one is a link to the other."""
        seen: set[Path] = set()
        out: list[Path] = []
        for d in (self.at("lib/modules"), self.at("usr/lib/modules")):
            key = d.resolve() if d.exists() else d
            if key not in seen:
                seen.add(key)
                out.append(d)
        return out

    @property
    def modules_dir(self) -> Path:
        """The modules directory new kernels appear in."""
        for d in self.modules_dirs:
            if d.is_dir():
                return d
        return self.modules_dirs[0]

    def kernel_dir(self, release: str) -> Path:
        for d in self.modules_dirs:
            if (d / release).is_dir():
                return d / release
        return self.modules_dir / release

    def running_kernel(self) -> str:
        return os.environ.get(RUNNING_KERNEL_ENV) or os.uname().release

    # -- sources -----------------------------------------------------------
    src_dir = _At("usr/src")

    # DKMS's own state (``dkms_tree`` in its framework.conf).
    dkms_tree = _At("var/lib/dkms")

    debian_source_tarball = _In("src_dir", "nvidia-open-kernel.tar.xz")

    # -- package databases -------------------------------------------------
    dpkg_dir = _At("var/lib/dpkg")

    pacman_dir = _At("var/lib/pacman")

    rpm_dirs = _AtEach("var/lib/rpm", "usr/lib/sysimage/rpm")

    # -- the rest of the system ---------------------------------------------
    firmware_dir = _At("lib/firmware")

    boot_dir = _At("boot")

    efivars_dir = _At("sys/firmware/efi/efivars")

    # -- boot loaders --------------------------------------------------------
    grub_default_file = _At("etc/default/grub")

    # ``*.cfg`` here are sourced after /etc/default/grub (Debian, Ubuntu).
    grub_default_dropins = _At("etc/default/grub.d")

    @property
    def grub_dir(self) -> Path:
        """/boot/grub, or Fedora's /boot/grub2 when only that has a grub.cfg."""
        for d in (self.boot_dir / "grub", self.boot_dir / "grub2"):
            if (d / "grub.cfg").is_file():
                return d
        return self.boot_dir / "grub"

    grub_cfg = _In("grub_dir", "grub.cfg")

    grubenv = _In("grub_dir", "grubenv")

    @property
    def esp_candidates(self) -> list[Path]:
        """Where bootctl looks for the EFI System Partition, in its order."""
        return [self.at("efi"), self.boot_dir, self.at("boot/efi")]

    @property
    def bls_entries_dirs(self) -> list[Path]:
        """BLS Type #1 entries: $BOOT (XBOOTLDR, or Fedora's /boot for
        GRUB's blscfg) and every ESP candidate."""
        return [self.boot_dir / "loader" / "entries"] + [
            c / "loader" / "entries" for c in self.esp_candidates if c != self.boot_dir]

    # What the boot guard changed, to undo it exactly once.
    bootguard_state = _In("state_dir", "bootguard.json")

    # boot.guard as SetBootGuard chose it, over the configuration's.
    bootguard_mode = _In("state_dir", "bootguard-mode")

    @property
    def library_dirs(self) -> list[Path]:
        return [self.at(p) for p in ("usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu",
                                      "usr/lib64", "usr/lib")]

    # shim's copies of its MOK variables, where efivarfs lacks them.
    mok_variables_dir = _At("sys/firmware/efi/mok-variables")

    @property
    def proc(self) -> Path:
        """The process table: the real one even under --root (see ``PROC``)."""
        return PROC

    # -- initramfs generators' configuration ----------------------------------
    initramfs_tools_modules = _At("etc/initramfs-tools/modules")

    initramfs_tools_modules_dirs = _AtEach("usr/share/initramfs-tools/modules.d",
                                           "etc/initramfs-tools/modules.d")

    mkinitcpio_conf = _At("etc/mkinitcpio.conf")

    mkinitcpio_conf_dirs = _AtEach("etc/mkinitcpio.conf.d")

    dracut_conf = _At("etc/dracut.conf")

    # The admin's drop-ins (dracut --confdir).
    dracut_conf_dir = _At("etc/dracut.conf.d")

    @property
    def dracut_conf_dirs(self) -> list[Path]:
        """Every drop-in directory dracut reads, the distribution's first."""
        return [self.at("usr/lib/dracut/dracut.conf.d"), self.dracut_conf_dir]

    # -- nvkmd's own files ---------------------------------------------------
    database = _In("state_dir", "nvkmd.sqlite3")

    build_root = _In("cache_dir", "build")

    products_root = _In("cache_dir", "products")

    # The SHA-256 of each cached product, per kernel: in the state dir,
    # since the cache dir may be systemd's CACHE_DIRECTORY, which an admin
    # may clear and which holds no truth.
    product_digests = _In("state_dir", "product-digests")

    unpacked_sources = _In("cache_dir", "sources")

    # -- preflight: candidate kernels' packages, before they are installed ---
    # apt's download cache, when apt-config cannot say (Dir::Cache::archives).
    apt_archives = _At("var/cache/apt/archives")

    # apt's package lists, when apt-config cannot say (Dir::State::lists).
    apt_lists = _At("var/lib/apt/lists")

    pacman_cache = _At("var/cache/pacman/pkg")

    pacman_conf = _At("etc/pacman.conf")

    pacman_sync = _In("pacman_dir", "sync")

    # Private roots the candidates' headers are unpacked and built in.
    preflight_work = _In("cache_dir", "preflight")

    preflight_logs = _In("log_dir", "preflight")

    preflight_results = _In("state_dir", "preflight.json")
