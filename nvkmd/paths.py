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

    @property
    def login_defs(self) -> Path:
        """shadow's login.defs: where the system groups' gids end (trust.py)."""
        return self.at("etc/login.defs")

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
    @property
    def src_dir(self) -> Path:
        return self.at("usr/src")

    @property
    def dkms_tree(self) -> Path:
        """DKMS's own state (``dkms_tree`` in its framework.conf)."""
        return self.at("var/lib/dkms")

    @property
    def debian_source_tarball(self) -> Path:
        return self.src_dir / "nvidia-open-kernel.tar.xz"

    # -- package databases -------------------------------------------------
    @property
    def dpkg_dir(self) -> Path:
        return self.at("var/lib/dpkg")

    @property
    def pacman_dir(self) -> Path:
        return self.at("var/lib/pacman")

    @property
    def rpm_dirs(self) -> list[Path]:
        return [self.at("var/lib/rpm"), self.at("usr/lib/sysimage/rpm")]

    # -- the rest of the system ---------------------------------------------
    @property
    def firmware_dir(self) -> Path:
        return self.at("lib/firmware")

    @property
    def boot_dir(self) -> Path:
        return self.at("boot")

    @property
    def efivars_dir(self) -> Path:
        return self.at("sys/firmware/efi/efivars")

    # -- boot loaders --------------------------------------------------------
    @property
    def grub_default_file(self) -> Path:
        return self.at("etc/default/grub")

    @property
    def grub_default_dropins(self) -> Path:
        """``*.cfg`` here are sourced after /etc/default/grub (Debian, Ubuntu)."""
        return self.at("etc/default/grub.d")

    @property
    def grub_dir(self) -> Path:
        """/boot/grub, or Fedora's /boot/grub2 when only that has a grub.cfg."""
        for d in (self.boot_dir / "grub", self.boot_dir / "grub2"):
            if (d / "grub.cfg").is_file():
                return d
        return self.boot_dir / "grub"

    @property
    def grub_cfg(self) -> Path:
        return self.grub_dir / "grub.cfg"

    @property
    def grubenv(self) -> Path:
        return self.grub_dir / "grubenv"

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

    @property
    def bootguard_state(self) -> Path:
        """What the boot guard changed, to undo it exactly once."""
        return self.state_dir / "bootguard.json"

    @property
    def bootguard_mode(self) -> Path:
        """boot.guard as SetBootGuard chose it, over the configuration's."""
        return self.state_dir / "bootguard-mode"

    @property
    def library_dirs(self) -> list[Path]:
        return [self.at(p) for p in ("usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu",
                                      "usr/lib64", "usr/lib")]

    @property
    def mok_variables_dir(self) -> Path:
        """shim's copies of its MOK variables, where efivarfs lacks them."""
        return self.at("sys/firmware/efi/mok-variables")

    @property
    def proc(self) -> Path:
        """The process table: the real one even under --root (see ``PROC``)."""
        return PROC

    # -- initramfs generators' configuration ----------------------------------
    @property
    def initramfs_tools_modules(self) -> Path:
        return self.at("etc/initramfs-tools/modules")

    @property
    def initramfs_tools_modules_dirs(self) -> list[Path]:
        return [self.at("usr/share/initramfs-tools/modules.d"), self.at("etc/initramfs-tools/modules.d")]

    @property
    def mkinitcpio_conf(self) -> Path:
        return self.at("etc/mkinitcpio.conf")

    @property
    def mkinitcpio_conf_dirs(self) -> list[Path]:
        return [self.at("etc/mkinitcpio.conf.d")]

    @property
    def dracut_conf(self) -> Path:
        return self.at("etc/dracut.conf")

    @property
    def dracut_conf_dir(self) -> Path:
        """The admin's drop-ins (dracut --confdir)."""
        return self.at("etc/dracut.conf.d")

    @property
    def dracut_conf_dirs(self) -> list[Path]:
        """Every drop-in directory dracut reads, the distribution's first."""
        return [self.at("usr/lib/dracut/dracut.conf.d"), self.dracut_conf_dir]

    # -- nvkmd's own files ---------------------------------------------------
    @property
    def database(self) -> Path:
        return self.state_dir / "nvkmd.sqlite3"

    @property
    def build_root(self) -> Path:
        return self.cache_dir / "build"

    @property
    def products_root(self) -> Path:
        return self.cache_dir / "products"

    @property
    def product_digests(self) -> Path:
        """The SHA-256 of each cached product, per kernel: in the state dir,
        since the cache dir may be systemd's CACHE_DIRECTORY, which an admin
        may clear and which holds no truth."""
        return self.state_dir / "product-digests"

    @property
    def unpacked_sources(self) -> Path:
        return self.cache_dir / "sources"

    # -- preflight: candidate kernels' packages, before they are installed ---
    @property
    def apt_archives(self) -> Path:
        """apt's download cache, when apt-config cannot say (Dir::Cache::archives)."""
        return self.at("var/cache/apt/archives")

    @property
    def apt_lists(self) -> Path:
        """apt's package lists, when apt-config cannot say (Dir::State::lists)."""
        return self.at("var/lib/apt/lists")

    @property
    def pacman_cache(self) -> Path:
        return self.at("var/cache/pacman/pkg")

    @property
    def pacman_conf(self) -> Path:
        return self.at("etc/pacman.conf")

    @property
    def pacman_sync(self) -> Path:
        return self.pacman_dir / "sync"

    @property
    def preflight_work(self) -> Path:
        """Private roots the candidates' headers are unpacked and built in."""
        return self.cache_dir / "preflight"

    @property
    def preflight_logs(self) -> Path:
        return self.log_dir / "preflight"

    @property
    def preflight_results(self) -> Path:
        return self.state_dir / "preflight.json"
