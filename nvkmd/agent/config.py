"""The agent's own files, in the user's home: what to show
(``$XDG_CONFIG_HOME/nvkmd/agent.toml``) and which failures were already
shown (``$XDG_STATE_HOME/nvkmd/agent-state.json``).

Neither file may stop the agent: a bad config is one warning and the
defaults; an unreadable state file is one warning and an empty memory (at
worst an old failure is shown once more).  The state file is replaced
atomically, so a crash never leaves half of it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Mapping

STATE_VERSION = 1
# Failures remembered: enough for years of kernels, small enough to rewrite.
MAX_SEEN = 256


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    success: bool = True                 # "NVIDIA modules ready for <K>"
    progress: bool = True                # the in-place progress notification
    log_viewer: tuple[str, ...] = ("xdg-open",)   # "Show log" runs this + the log's path


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"expected true or false, got {v!r}"


def _argv(v: Any) -> str | None:
    if isinstance(v, list) and v and all(isinstance(a, str) and a and "\x00" not in a for a in v):
        return None
    return f"expected a non-empty list of strings (a command and its arguments), got {v!r}"


SCHEMA = {
    ("notifications", "success"): ("success", _bool),
    ("notifications", "progress"): ("progress", _bool),
    ("notifications", "log_viewer"): ("log_viewer", _argv),
}


class AgentConfigError(ValueError):
    pass


def parse_config(text: str) -> AgentConfig:
    """Pure: the config from agent.toml's text; ``AgentConfigError`` names
    the first problem in one line."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise AgentConfigError(f"not valid TOML: {e}") from None
    values: dict[str, Any] = {}
    for section, table in doc.items():
        if not isinstance(table, dict):
            raise AgentConfigError(f"{section}: unknown key (expected a [notifications] table)")
        for key, value in table.items():
            entry = SCHEMA.get((section, key))
            if entry is None:
                raise AgentConfigError(f"{section}.{key}: unknown key")
            field, check = entry
            problem = check(value)
            if problem:
                raise AgentConfigError(f"{section}.{key}: {problem}")
            values[field] = tuple(value) if isinstance(value, list) else value
    return AgentConfig(**values)


def load_config(path: Path) -> tuple[AgentConfig, str | None]:
    """(config, warning): a missing file is the defaults without a warning."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return AgentConfig(), None
    except (OSError, UnicodeDecodeError) as e:
        return AgentConfig(), f"{path}: cannot read it ({e}); using the defaults"
    try:
        return parse_config(text), None
    except AgentConfigError as e:
        return AgentConfig(), f"{path}: {e}; using the defaults"


def _xdg(env: Mapping[str, str], var: str, fallback: str) -> Path:
    # The XDG spec: a relative value is invalid and must be ignored.
    value = env.get(var, "")
    if value.startswith("/"):
        return Path(value)
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) / fallback


def config_file(env: Mapping[str, str] = os.environ) -> Path:
    return _xdg(env, "XDG_CONFIG_HOME", ".config") / "nvkmd" / "agent.toml"


def state_file(env: Mapping[str, str] = os.environ) -> Path:
    return _xdg(env, "XDG_STATE_HOME", ".local/state") / "nvkmd" / "agent-state.json"


class SeenFailures:
    """Which failures the user has been shown, by ``agentrules.failure_key``,
    oldest first, remembered across agent restarts."""

    def __init__(self, path: Path):
        self.path = path
        self.keys: list[str] = []

    def load(self) -> str | None:
        """Read the file; a warning line if it could not be used."""
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            return f"{self.path}: cannot read it ({e}); failures may be shown again"
        keys = doc.get("shown_failures") if isinstance(doc, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            return f"{self.path}: not an nvkmd-agent state file; failures may be shown again"
        self.keys = keys[-MAX_SEEN:]
        return None

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def add(self, key: str) -> None:
        """Remember ``key`` and write the file at once (atomically)."""
        if key in self.keys:
            return
        self.keys = (self.keys + [key])[-MAX_SEEN:]
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = json.dumps({"version": STATE_VERSION, "shown_failures": self.keys}, indent=1) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=".agent-state.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
