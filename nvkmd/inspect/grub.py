"""What GRUB will boot next, read the way GRUB itself decides it.

GRUB does not read ``/etc/default/grub`` at boot: ``grub-mkconfig`` turns it
into ``grub.cfg``, whose header sets ``default`` from ``next_entry`` (a
one-shot from ``grub-reboot``) or else from ``GRUB_DEFAULT`` (``saved``
becomes ``${saved_entry}`` from ``grubenv``).  GRUB then resolves that value
against the menu: a number is an index, anything else a title or a
``--id``, and ``>`` walks into submenus (``>>`` is a literal ``>``).  A
value that names nothing falls back to the first entry, and a submenu
without a further path boots its first entry.  ``resolve`` follows GRUB's
``normal/menu.c`` for all of that.  With ``GRUB_ENABLE_BLSCFG`` (Fedora's
patch) the ``blscfg`` command adds the BLS entries as menu entries.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from nvkmd.inspect import bls
from nvkmd.inspect.bls import release_of_image
from nvkmd.paths import Paths

EDITENV_TOOLS = ("grub-editenv", "grub2-editenv")


@dataclasses.dataclass(frozen=True)
class MenuEntry:
    title: str
    id: str = ""
    linux: str = ""                    # the image path of its linux line
    release: str = ""                  # the kernel it boots, "" if unknown
    children: tuple["MenuEntry", ...] = ()
    submenu: bool = False


@dataclasses.dataclass(frozen=True)
class GrubConfig:
    menu: tuple[MenuEntry, ...]
    default: str | None                # grub.cfg's `set default=`, None without grub.cfg
    saved: bool                        # that default is ${saved_entry}
    blscfg: bool


def _tokens(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=False, posix=True)
    except ValueError:
        return line.split()


def _entry_head(tokens: list[str]) -> tuple[str, str]:
    """(title, id) of a ``menuentry``/``submenu`` line's tokens."""
    title, ident, i = "", "", 1
    takes_arg = {"--class", "--users", "--hotkey", "--id", "$menuentry_id_option"}
    while i < len(tokens) and tokens[i] != "{":
        t = tokens[i]
        if t in ("--id", "$menuentry_id_option", "${menuentry_id_option}") and i + 1 < len(tokens):
            ident = tokens[i + 1]
            i += 2
            continue
        if t.startswith("--id="):
            ident = t[5:]
        elif t in takes_arg:
            i += 1
        elif not t.startswith("--") and not title:
            title = t
        i += 1
    return title, ident


def parse_cfg(text: str, bls_entries: list[MenuEntry] | None = None) -> GrubConfig:
    root: list[MenuEntry | str] = []
    # Each open block: [kind, title, id, linux, children]
    stack: list[list] = []
    default: str | None = None
    blscfg = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        toks = _tokens(line)
        if not toks:
            continue
        head = toks[0]
        if head in ("menuentry", "submenu") and toks[-1] == "{":
            title, ident = _entry_head(toks)
            stack.append([head, title, ident, "", []])
        elif toks[-1] == "{":
            stack.append(["other", "", "", "", None])
        elif head == "}":
            if not stack:
                continue
            kind, title, ident, linux, children = stack.pop()
            if kind == "other":
                continue
            entry = MenuEntry(title, ident, linux, release_of_image(linux) if linux else "",
                              tuple(children), kind == "submenu")
            target = next((b[4] for b in reversed(stack) if b[0] in ("menuentry", "submenu")), None)
            (target if target is not None else root).append(entry)
        elif head in ("linux", "linuxefi", "linux16") and len(toks) > 1:
            for b in reversed(stack):
                if b[0] == "menuentry":
                    b[3] = b[3] or toks[1]
                    break
        elif head == "blscfg":
            blscfg = True
            target = next((b[4] for b in reversed(stack) if b[0] in ("menuentry", "submenu")), None)
            (target if target is not None else root).extend(bls_entries or [])
        elif head == "set" and len(toks) > 1 and toks[1].startswith("default=") and not stack_in_entry(stack):
            value = toks[1][len("default="):]
            if value not in ("${next_entry}", "$next_entry") and not value.startswith("${GRUB_DEFAULT_BUTTON"):
                default = value
    saved = default in ("${saved_entry}", "$saved_entry")
    return GrubConfig(tuple(e for e in root if isinstance(e, MenuEntry)), default, saved, blscfg)


def stack_in_entry(stack: list[list]) -> bool:
    return any(b[0] in ("menuentry", "submenu") for b in stack)


# -- GRUB's own resolution (grub-core/normal/menu.c) --------------------------------

def _strtoul(value: str) -> int | None:
    """grub_strtoul(value, 0, 0): leading digits in base 0, None without any."""
    m = re.match(r"\s*(?:0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))", value)
    if not m:
        return None
    hexa, octal, dec = m.groups()
    return int(hexa, 16) if hexa else int(octal, 8) if octal else int(dec)


def _menuentry_eq(ident: str, spec: str) -> bool:
    i = j = 0
    while True:
        at_sep = j < len(spec) and spec[j] == ">" and (j + 1 >= len(spec) or spec[j + 1] != ">")
        if at_sep:
            return i >= len(ident)
        if j < len(spec) and spec[j] == ">":
            j += 1                       # ">>" stands for one ">"
        a = ident[i] if i < len(ident) else ""
        b = spec[j] if j < len(spec) else ""
        if a != b:
            return False
        if not a:
            return True
        i += 1
        j += 1


def _rest(spec: str) -> str | None:
    i = 0
    while i < len(spec):
        if spec[i] == ">":
            if i + 1 < len(spec) and spec[i + 1] == ">":
                i += 2
                continue
            return spec[i + 1:]
        i += 1
    return None


def _index(menu: tuple[MenuEntry, ...], spec: str | None) -> tuple[int, bool]:
    """GRUB's get_entry_number, and whether ``spec`` named an entry at all."""
    if spec is None:
        return 0, True
    n = _strtoul(spec)
    if n is None:
        n = next((i for i, e in enumerate(menu)
                  if _menuentry_eq(e.title, spec) or (e.id and _menuentry_eq(e.id, spec))), -1)
    return (n, True) if 0 <= n < len(menu) else (0, False)


def resolve(menu: tuple[MenuEntry, ...], spec: str | None) -> tuple[list[MenuEntry], bool]:
    """The path GRUB takes for ``default=spec``: (entries from the top menu
    down to the one it boots, whether ``spec`` matched or GRUB fell back)."""
    path: list[MenuEntry] = []
    matched = True
    while menu:
        i, ok = _index(menu, spec)
        matched = matched and ok
        e = menu[i]
        path.append(e)
        if not e.submenu:
            break
        spec = _rest(spec) if spec is not None else None
        menu = e.children
    return path, matched


def path_spec(path: list[MenuEntry]) -> str:
    """The ``saved_entry`` value that leads GRUB along ``path``: ids where the
    entries have them (they survive new kernels being added), else titles."""
    return ">".join((e.id or e.title).replace(">", ">>") for e in path)


def find_kernel(menu: tuple[MenuEntry, ...], release: str) -> list[MenuEntry] | None:
    """The first non-recovery entry that boots ``release``, as a path."""
    fallback = None
    for e in menu:
        if e.submenu:
            sub = find_kernel(e.children, release)
            if sub:
                return [e, *sub]
        elif e.release == release:
            if "recovery" not in e.title.lower() and "recovery" not in e.id:
                return [e]
            fallback = fallback or [e]
    return fallback


# -- the files ----------------------------------------------------------------------

def read_settings(paths: Paths) -> dict[str, str]:
    """GRUB_* from /etc/default/grub and then /etc/default/grub.d/*.cfg, in
    the order grub-mkconfig sources them (later files win)."""
    files = [paths.grub_default_file]
    try:
        files += sorted(paths.grub_default_dropins.glob("*.cfg"))
    except OSError:
        pass
    out: dict[str, str] = {}
    for f in files:
        for line in _read(f).splitlines():
            m = re.match(r"^\s*(?:export\s+)?(GRUB_[A-Z0-9_]+)=(.*)$", line)
            if m:
                toks = _tokens(m.group(2))
                out[m.group(1)] = toks[0] if toks else ""
    return out


def read_env(grubenv: Path) -> dict[str, str]:
    """grubenv's variables, through ``grub-editenv FILE list`` where it is
    installed (it knows the block format), else from the file's text."""
    if not grubenv.is_file():
        return {}
    tool = next((t for t in EDITENV_TOOLS if shutil.which(t)), None)
    text = None
    if tool:
        try:
            r = subprocess.run([tool, str(grubenv), "list"], capture_output=True, text=True,
                               timeout=20, errors="replace")
            if r.returncode == 0:
                text = r.stdout
        except (OSError, subprocess.TimeoutExpired):
            pass
    if text is None:
        text = _read(grubenv)
    env = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            env[k] = v
    return env


def read_config(paths: Paths) -> GrubConfig | None:
    cfg = paths.grub_cfg
    text = _read(cfg)
    if not text:
        return None
    entries = None
    if "blscfg" in text:
        entries = [MenuEntry(e.title or e.id, e.id.removesuffix(".conf"), e.linux, e.release)
                   for e in bls.sort_for_grub(bls.read_entries(paths.bls_entries_dirs))]
    return parse_cfg(text, entries)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
