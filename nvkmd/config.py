"""The configuration file: a TOML document checked against one schema.

Every key has a type, a default and a check.  An unknown key or a bad value
is a ``ConfigError`` naming the key; front ends exit with status 78 for it.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, Callable

from nvkmd.errors import ErrorCode, NvkmdError

BACKENDS = ("auto", "kbuild", "dkms")
# What nvkmd does when the kernel that boots next has no ready module.
BOOT_GUARDS = ("off", "warn", "pin")


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


def _int_at_least(low: int) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return f"expected an integer, got {v!r}"
        if v < low:
            return f"expected an integer >= {low}, got {v}"
        return None
    return check


def _number_above(low: float) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"expected a number, got {v!r}"
        if v <= low:
            return f"expected a number > {low}, got {v}"
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
    ("build", "jobs"): (0, _int_at_least(0)),
    ("build", "timeout_s"): (1800, _number_above(0)),
    ("build", "cache_keep"): (1, _int_at_least(0)),
    ("logs", "dir"): ("", _abs_path_or("")),
    ("logs", "keep"): (10, _int_at_least(1)),
    ("state", "dir"): ("", _abs_path_or("")),
    ("signing", "key"): ("", _abs_path_or("")),
    ("signing", "cert"): ("", _abs_path_or("")),
    ("install", "initramfs"): ("auto", _initramfs),
    ("install", "strip"): (True, _bool),
    ("daemon", "debounce_s"): (2.0, _number_above(0)),
    ("daemon", "lock_wait_max_s"): (3600, _number_above(0)),
    ("boot", "guard"): ("warn", _one_of(*BOOT_GUARDS)),
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
    state_dir: str = ""
    signing_key: str = ""
    signing_cert: str = ""
    install_initramfs: str = "auto"
    install_strip: bool = True
    daemon_debounce_s: float = 2.0
    daemon_lock_wait_max_s: float = 3600
    boot_guard: str = "warn"

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
    def load(cls, path: Path) -> "Config":
        """Read ``path``; a missing file means all defaults."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
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
