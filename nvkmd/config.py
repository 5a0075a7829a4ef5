"""The configuration file: a TOML document checked against one schema.

Every key has a type, a default and a check.  An unknown key or a bad value
is a ``ConfigError`` naming the key; front ends exit with status 78 for it.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import stat
import tomllib
from pathlib import Path
from typing import Any, Callable

from nvkmd.errors import ErrorCode, NvkmdError

BACKENDS = ("auto", "kbuild", "dkms")

# Every number has a bound: a value past it is a typo or an attack, and an
# unbounded one reaches make (jobs) or a timer (seconds) as it is.
MAX_JOBS = 1024
MAX_TIMEOUT_S = 7 * 86400
MAX_CACHE_KEEP = 100
MAX_LOGS_KEEP = 1000
MAX_LOG_MIB = 64 * 1024
MAX_DEBOUNCE_S = 3600
MAX_LOCK_WAIT_S = 7 * 86400
# The file itself: read at most this much, never waiting for a writer.
MAX_CONFIG_BYTES = 1 << 20
# What nvkmd does when the kernel that boots next has no ready module.
BOOT_GUARDS = ("off", "warn", "pin")
# When nvkmd test-builds the driver for kernels the package manager would
# install next: "auto" on apt/pacman list changes, at start and on a timer;
# "manual" only when asked; "off" never.
PREFLIGHT_MODES = ("auto", "manual", "off")
MAX_PREFLIGHT_INTERVAL_S = 30 * 86400
# Each look asks the package manager for its candidates: a tiny interval
# would have the daemon asking all the time.
MIN_PREFLIGHT_INTERVAL_S = 60


class ConfigError(NvkmdError):
    def __init__(self, message: str):
        super().__init__(ErrorCode.CONFIG, message)


def _abs_path_or(*words: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if not isinstance(v, str):
            return "expected a string"
        if v in words or v.startswith("/"):
            return None
        allowed = " or ".join(f'"{w}"' for w in words)
        return f"expected {allowed + ' or ' if words else ''}an absolute path, got {v!r}"
    return check


def _one_of(*words: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v in words:
            return None
        return f"expected one of {', '.join(words)}, got {v!r}"
    return check


def _int_in(low: int, high: int) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return f"expected an integer, got {v!r}"
        if not low <= v <= high:
            return f"expected an integer from {low} to {high}, got {v}"
        return None
    return check


def _shown(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _number_in(low: float, high: float, *, from_low: bool = False) -> Callable[[Any], str | None]:
    """low < v <= high (low <= v with ``from_low``); nan and inf are refused
    (nan compares false with everything, so it would slip through a plain
    range check)."""
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"expected a number, got {v!r}"
        if not math.isfinite(v):
            return f"expected a finite number, got {v}"
        if from_low and not low <= v <= high:
            return f"expected a number from {_shown(low)} to {_shown(high)}, got {v:g}"
        if not from_low and not low < v <= high:
            return f"expected a number > {low:g} and <= {high:g}, got {v:g}"
        return None
    return check


def _initramfs(v: Any) -> str | None:
    if not isinstance(v, str) or not v.strip():
        return "expected \"auto\", \"never\" or a command containing {kernel}"
    if v in ("auto", "never") or "{kernel}" in v:
        return None
    return f"expected \"auto\", \"never\" or a command containing {{kernel}}, got {v!r}"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"expected true or false, got {v!r}"


# (section, key) -> (default, check).  etc/nvkmd.toml documents each of them.
SCHEMA: dict[tuple[str, str], tuple[Any, Callable[[Any], str | None]]] = {
    ("source", "path"): ("auto", _abs_path_or("auto")),
    ("build", "backend"): ("auto", _one_of(*BACKENDS)),
    ("build", "jobs"): (0, _int_in(0, MAX_JOBS)),
    ("build", "timeout_s"): (1800, _number_in(0, MAX_TIMEOUT_S)),
    ("build", "cache_keep"): (1, _int_in(0, MAX_CACHE_KEEP)),
    ("logs", "dir"): ("", _abs_path_or("")),
    ("logs", "keep"): (10, _int_in(1, MAX_LOGS_KEEP)),
    ("logs", "max_mib"): (64, _int_in(1, MAX_LOG_MIB)),
    ("state", "dir"): ("", _abs_path_or("")),
    ("signing", "key"): ("", _abs_path_or("")),
    ("signing", "cert"): ("", _abs_path_or("")),
    ("install", "initramfs"): ("auto", _initramfs),
    ("install", "strip"): (True, _bool),
    ("daemon", "debounce_s"): (2.0, _number_in(0, MAX_DEBOUNCE_S)),
    ("daemon", "lock_wait_max_s"): (3600, _number_in(0, MAX_LOCK_WAIT_S)),
    ("boot", "guard"): ("warn", _one_of(*BOOT_GUARDS)),
    ("preflight", "mode"): ("auto", _one_of(*PREFLIGHT_MODES)),
    ("preflight", "hold"): (False, _bool),
    ("preflight", "interval_s"): (21600, _number_in(MIN_PREFLIGHT_INTERVAL_S, MAX_PREFLIGHT_INTERVAL_S,
                                                     from_low=True)),
    ("preflight", "apt_config"): ("", _abs_path_or("")),
}


@dataclasses.dataclass(frozen=True)
class Config:
    source_path: str = "auto"
    build_backend: str = "auto"
    build_jobs: int = 0
    build_timeout_s: float = 1800
    build_cache_keep: int = 1
    logs_dir: str = ""
    logs_keep: int = 10
    logs_max_mib: int = 64
    state_dir: str = ""
    signing_key: str = ""
    signing_cert: str = ""
    install_initramfs: str = "auto"
    install_strip: bool = True
    daemon_debounce_s: float = 2.0
    daemon_lock_wait_max_s: float = 3600
    boot_guard: str = "warn"
    preflight_mode: str = "auto"
    preflight_hold: bool = False
    preflight_interval_s: float = 21600
    preflight_apt_config: str = ""

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> "Config":
        values: dict[str, Any] = {}
        for section, table in data.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{section}: expected a table [{section}]")
            for key, value in table.items():
                name = f"{section}.{key}"
                if (section, key) not in SCHEMA:
                    raise ConfigError(f"{name}: unknown key")
                problem = SCHEMA[(section, key)][1](value)
                if problem:
                    raise ConfigError(f"{name}: {problem}")
                values[f"{section}_{key}"] = value
        signing = (values.get("signing_key", ""), values.get("signing_cert", ""))
        if bool(signing[0]) != bool(signing[1]):
            raise ConfigError("signing.key, signing.cert: must be set together")
        return cls(**values)

    @classmethod
    def load(cls, path: Path, *, required: bool = False) -> "Config":
        """Read ``path``.  A missing file means all defaults, unless it was
        named explicitly (``required``); a dangling symlink is always an error."""
        try:
            text = read_config_text(path)
        except FileNotFoundError:
            if required:
                raise ConfigError(f"config {path}: no such file") from None
            if os.path.islink(path):
                raise ConfigError(f"config {path}: a symlink to {os.readlink(path)}, "
                                  "which does not exist") from None
            return cls()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config {path}: cannot read: {e}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config {path}: not valid TOML: {e}") from None
        try:
            return cls.from_mapping(data)
        except ConfigError as e:
            raise ConfigError(f"config {path}: {e.message}") from None


def read_config_text(path: Path) -> str:
    """The file's text, from a regular file of at most MAX_CONFIG_BYTES.

    O_NONBLOCK: a FIFO at the path must not block the daemon's event loop
    (SIGHUP reloads on it); /dev/zero behind a symlink must not fill memory.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"config {path}: not a regular file")
        data = os.read(fd, MAX_CONFIG_BYTES + 1)
        while len(data) <= MAX_CONFIG_BYTES and (more := os.read(fd, MAX_CONFIG_BYTES + 1 - len(data))):
            data += more
    except BlockingIOError:
        raise ConfigError(f"config {path}: cannot read: {os.strerror(errno.EAGAIN)}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {path}: larger than {MAX_CONFIG_BYTES // 1024} KiB")
    return data.decode("utf-8")
