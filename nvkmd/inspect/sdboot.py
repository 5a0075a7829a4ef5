"""What systemd-boot will boot next.

systemd-boot picks, in this order (``config_default_entry_select``): the
entry named by the ``LoaderEntryOneShot`` EFI variable (``bootctl
set-oneshot``, gone after that boot), by ``LoaderEntryDefault`` (``bootctl
set-default``), by ``default`` in ``loader.conf`` (a glob over entry ids;
``@saved`` means the last booted one), else the first entry of its menu.
Each name is matched as a glob against the ids of the BLS entries, in menu
order.  EFI variables live in efivarfs as a 4-byte attribute word followed
by the value, here a NUL-terminated UTF-16LE string.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from pathlib import Path

from nvkmd.inspect import bls
from nvkmd.paths import Paths

LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"


@dataclasses.dataclass(frozen=True)
class Choice:
    entry: bls.BlsEntry | None
    source: str                 # e.g. "LoaderEntryOneShot (EFI variable)"
    one_shot: bool
    pattern: str = ""           # what was matched, "" for the menu's first entry
    matched: bool = True        # False: the pattern named no entry


def efivar_path(paths: Paths, name: str) -> Path:
    return paths.efivars_dir / f"{name}-{LOADER_GUID}"


def read_efivar(paths: Paths, name: str) -> str | None:
    try:
        data = efivar_path(paths, name).read_bytes()
    except OSError:
        return None
    if len(data) < 4:
        return None
    return data[4:].decode("utf-16-le", errors="replace").split("\0", 1)[0] or None


def efi_variables(paths: Paths) -> bool:
    """Whether the firmware's variables are there to read and write (an
    EFI boot with efivarfs mounted)."""
    return paths.efivars_dir.is_dir()


def booted_by_systemd_boot(paths: Paths) -> bool:
    info = read_efivar(paths, "LoaderInfo") or ""
    return info.startswith("systemd-boot")


def find_esp(paths: Paths) -> Path | None:
    """The first of bootctl's candidates (/efi, /boot, /boot/efi) holding a
    ``loader`` directory with a loader.conf or entries."""
    for c in paths.esp_candidates:
        if (c / "loader" / "loader.conf").is_file() or (c / "loader" / "entries").is_dir():
            return c
    return None


def read_loader_conf(esp: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = (esp / "loader" / "loader.conf").read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_-]+)\s+(.*?)\s*$", line)
        if m and not line.lstrip().startswith("#"):
            out[m.group(1)] = m.group(2)
    return out


def entries_dirs(paths: Paths, esp: Path) -> list[Path]:
    dirs = [esp / "loader" / "entries"]
    for d in paths.bls_entries_dirs:
        if d not in dirs:
            dirs.append(d)
    return dirs


def find(entries: list[bls.BlsEntry], pattern: str | None) -> bls.BlsEntry | None:
    if not pattern:
        return None
    p = pattern.lower()
    return next((e for e in entries if fnmatch.fnmatchcase(e.id, p)), None)


def choose(entries: list[bls.BlsEntry], oneshot: str | None, default_var: str | None,
           conf_default: str | None, last_booted: str | None) -> Choice:
    """``entries`` in menu order (``bls.sort_entries``)."""
    if (e := find(entries, oneshot)):
        return Choice(e, "LoaderEntryOneShot (EFI variable)", True, oneshot or "")
    if (e := find(entries, default_var)):
        return Choice(e, "LoaderEntryDefault (EFI variable)", False, default_var or "")
    pattern = conf_default
    if conf_default and conf_default.lower() == "@saved":
        pattern = last_booted
    if (e := find(entries, pattern)):
        return Choice(e, "default in loader.conf", False, conf_default or "")
    named = next((p for p in (oneshot, default_var, conf_default) if p), "")
    first = next((e for e in entries if e.tries_left != 0), entries[0] if entries else None)
    return Choice(first, "the first entry of the menu", False, named, matched=not named)


def read_choice(paths: Paths) -> tuple[Choice, Path] | None:
    """systemd-boot's choice, with the ESP it came from; None when no ESP
    has a ``loader`` directory."""
    esp = find_esp(paths)
    if esp is None:
        return None
    entries = bls.sort_entries(bls.read_entries(entries_dirs(paths, esp)))
    conf = read_loader_conf(esp)
    choice = choose(entries, read_efivar(paths, "LoaderEntryOneShot"),
                    read_efivar(paths, "LoaderEntryDefault"), conf.get("default"),
                    read_efivar(paths, "LoaderEntryLastBooted"))
    return choice, esp
