"""Boot Loader Specification Type #1 entries (``$BOOT/loader/entries/*.conf``).

systemd-boot boots them, and so does Fedora's GRUB (``blscfg``).  An entry's
id is its file name, lower case, without a boot-counting ``+LEFT[-DONE]``
suffix; the order is systemd-boot's (``config_entry_compare``): entries with
no tries left last, entries with a ``sort-key`` first, then by sort-key,
machine-id, version (newest first) and id (newest first), versions compared
by ``strverscmp_improved``.  bootctl lists them in the same order.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class BlsEntry:
    id: str                    # e.g. "0123...-6.1.0-47-amd64.conf"
    path: str
    release: str = ""          # the kernel it boots, "" if unknown
    tries_left: int | None = None   # boot counting: "+N" in the file name
    # The entry's own keys.
    title: str = ""
    version: str = ""
    machine_id: str = ""
    sort_key: str = ""
    linux: str = ""


def release_of_image(path: str) -> str:
    """``/boot/vmlinuz-6.1.0-47-amd64`` -> 6.1.0-47-amd64; kernel-install's
    ``/<token>/6.1.0-47-amd64/linux`` -> 6.1.0-47-amd64."""
    p = path.rstrip("/")
    name = p.rsplit("/", 1)[-1]
    m = re.match(r"^(?:vmlinu[xz]|bzImage|kernel|Image)-(.+)$", name)
    if m:
        return m.group(1)
    if name == "linux" and p.count("/") >= 2:
        return p.rsplit("/", 2)[-2]
    return ""


def parse_entry(name: str, text: str, path: str = "") -> BlsEntry:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        key = key.split("\t", 1)[0]
        fields.setdefault(key, value.strip() if value else line[len(key):].strip())
    ident, tries = name.lower(), None
    m = re.match(r"^(.*?)\+(\d+)(?:-(\d+))?\.conf$", ident)
    if m:
        ident, tries = m.group(1) + ".conf", int(m.group(2))
    linux = fields.get("linux", "")
    version = fields.get("version", "")
    release = release_of_image(linux) or version
    return BlsEntry(ident, path, release=release, tries_left=tries, title=fields.get("title", ""),
                    version=version, machine_id=fields.get("machine-id", ""),
                    sort_key=fields.get("sort-key", ""), linux=linux)


def read_entries(dirs: list[Path]) -> list[BlsEntry]:
    """Every ``*.conf`` in ``dirs`` (the ESP's and XBOOTLDR's entries), once."""
    out: dict[str, BlsEntry] = {}
    for d in dirs:
        try:
            files = sorted(d.glob("*.conf"))
        except OSError:
            continue
        for f in files:
            try:
                text = f.read_text(errors="replace")
            except OSError:
                continue
            e = parse_entry(f.name, text, str(f))
            out.setdefault(e.id, e)
    return list(out.values())


# -- systemd's strverscmp_improved (src/fundamental/string-util-fundamental.c) ------

def _valid(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c in "~-^.")


def _cmp(a: object, b: object) -> int:
    return (a > b) - (a < b)  # type: ignore[operator]


_END = "\0"


def _at(s: str, k: int) -> str:
    return s[k] if k < len(s) else _END


def _separators(seps: str, a: str, i: int, b: str, j: int) -> tuple[int, int, int]:
    """At a separator in ``seps`` on either side: the side without it sorts
    first (result nonzero), else both step past it."""
    for sep in seps:
        if _at(a, i) == sep or _at(b, j) == sep:
            r = _cmp(_at(a, i) != sep, _at(b, j) != sep)
            if r:
                return r, i, j
            i, j = i + 1, j + 1
    return 0, i, j


def _run_end(s: str, k: int, kind) -> int:
    while kind(_at(s, k)):
        k += 1
    return k


def _is_digit(c: str) -> bool:
    return c.isdigit()


def _is_letter(c: str) -> bool:
    return c.isascii() and c.isalpha()


def strverscmp_improved(a: str, b: str) -> int:
    if not a or not b:
        return _cmp(a, b)
    i = j = 0
    while True:
        i = _run_end(a, i, lambda c: c != _END and not _valid(c))
        j = _run_end(b, j, lambda c: c != _END and not _valid(c))
        r, i, j = _separators("~", a, i, b, j)      # "~" sorts before everything, even the end
        if r:
            return r
        if _at(a, i) == _END or _at(b, j) == _END:
            return _cmp(_at(a, i), _at(b, j))
        r, i, j = _separators("-^.", a, i, b, j)
        if r:
            return r
        if _at(a, i).isdigit() or _at(b, j).isdigit():
            ii, jj = _run_end(a, i, _is_digit), _run_end(b, j, _is_digit)
            r = _cmp(ii != i, jj != j)
            if r:
                return r
            i, j = _run_end(a, i, lambda c: c == "0"), _run_end(b, j, lambda c: c == "0")
            r = _cmp(ii - i, jj - j) or _cmp(a[i:ii], b[j:jj])
        else:
            ii, jj = _run_end(a, i, _is_letter), _run_end(b, j, _is_letter)
            n = min(ii - i, jj - j)
            r = _cmp(a[i:i + n], b[j:j + n]) or _cmp(ii - i, jj - j)
        if r:
            return r
        i, j = ii, jj


def _compare(x: BlsEntry, y: BlsEntry) -> int:
    r = _cmp(x.tries_left == 0, y.tries_left == 0)
    if r:
        return r
    r = _cmp(not x.sort_key, not y.sort_key)
    if r:
        return r
    if x.sort_key and y.sort_key:
        r = _cmp(x.sort_key, y.sort_key) or _cmp(x.machine_id, y.machine_id)
        if r:
            return r
        r = -strverscmp_improved(x.version, y.version)
        if r:
            return r
    return -strverscmp_improved(x.id, y.id)


def sort_entries(entries: list[BlsEntry]) -> list[BlsEntry]:
    """systemd-boot's menu order; with no other default it boots the first."""
    return sorted(entries, key=functools.cmp_to_key(_compare))


def sort_for_grub(entries: list[BlsEntry]) -> list[BlsEntry]:
    """Fedora's blscfg lists entries newest version first."""
    return sorted(entries, key=functools.cmp_to_key(
        lambda x, y: -strverscmp_improved(x.version or x.id, y.version or y.id)
        or -strverscmp_improved(x.id, y.id)))
