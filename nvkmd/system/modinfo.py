"""Read a kernel module's ``.modinfo`` section, compressed modules too.

Only the ELF headers, ``.modinfo`` and the signature's tail are read:
nvidia.ko is tens of megabytes and the daemon looks at every installed one
on each rescan (reading them whole raised its peak memory by their size).
A compressed one is decompressed into a temporary file first, streaming,
for the same reason.
"""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from nvkmd.errors import ErrorCode, NvkmdError

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def module_name(path: Path) -> str:
    """``nvidia-uvm.ko.zst`` -> ``nvidia-uvm``."""
    name = path.name
    for suffix in sorted(MODULE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _decompressed(path: Path, tmp) -> None:
    """``path`` decompressed into the open file ``tmp``, a block at a time."""
    import gzip   # compressed modules only: the boot check imports this module
    import lzma
    import shutil
    try:
        if path.name.endswith(".zst"):
            # The standard library has no zstd before 3.14; the zstd tool does.
            import subprocess
            proc = subprocess.run(["zstd", "-dcq", str(path)], stdout=tmp, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, check=False)
            if proc.returncode != 0:
                raise NvkmdError(ErrorCode.INVALID_ARGUMENT, f"{path}: cannot decompress: "
                                 f"{proc.stderr.decode(errors='replace').strip()}")
            return
        opener = lzma.open if path.name.endswith(".xz") else gzip.open
        with opener(path, "rb") as src:
            shutil.copyfileobj(src, tmp, 1 << 20)
    except (lzma.LZMAError, EOFError, gzip.BadGzipFile) as e:
        raise NvkmdError(ErrorCode.INVALID_ARGUMENT, f"{path}: cannot decompress: {e}") from None


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[BinaryIO]:
    """The module's uncompressed ELF image as an open file."""
    with open(path, "rb") as f:
        if not path.name.endswith((".xz", ".gz", ".zst")):
            yield f
            return
        import tempfile
        with tempfile.TemporaryFile() as tmp:
            _decompressed(path, tmp)
            yield tmp


def read_module_bytes(path: Path) -> bytes:
    with _opened(path) as f:
        f.seek(0)
        return f.read()


# Bounds what one read of a corrupt header can ask for: real .modinfo
# sections and section tables are a few kilobytes.
MAX_PART = 16 << 20


def _section(read: Callable[[int, int], bytes], wanted: str) -> bytes | None:
    """Section ``wanted`` of a 64- or 32-bit ELF image, ``read(offset,
    size)`` giving its bytes: only the headers and the section are read."""
    ident = read(0, 64)
    if ident[:4] != b"\x7fELF" or len(ident) < 52:
        return None
    is64 = ident[4] == 2
    endian = "<" if ident[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(endian + "Q", ident, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", ident, 0x3A)
        fmt, off_i, size_i = endian + "IIQQQQIIQQ", 4, 5
    else:
        shoff, = struct.unpack_from(endian + "I", ident, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", ident, 0x2E)
        fmt, off_i, size_i = endian + "IIIIIIIIII", 4, 5
    if shentsize < struct.calcsize(fmt):
        return None
    table = read(shoff, min(shnum * shentsize, MAX_PART))
    headers = [struct.unpack_from(fmt, table, i * shentsize) for i in range(len(table) // shentsize)]
    if shstrndx >= len(headers):
        return None
    strtab = headers[shstrndx]
    names = read(strtab[off_i], min(strtab[size_i], MAX_PART))
    for h in headers:
        end = names.find(b"\0", h[0])
        if names[h[0]:end].decode(errors="replace") == wanted:
            return read(h[off_i], min(h[size_i], MAX_PART))
    return None


def elf_section(image: bytes, wanted: str) -> bytes | None:
    """The contents of section ``wanted`` of an ELF image in memory."""
    return _section(lambda offset, size: image[offset:offset + size], wanted)


def modinfo(path: Path) -> dict[str, str]:
    """``key -> value`` from the module's ``.modinfo`` (first value wins).

    A module appended with a signature is still a valid ELF image in front
    of it, so signed modules read the same way.  Read with seek and read,
    not mapped: a module being rewritten in place (``cp`` truncates) must
    cost a short read, not a SIGBUS.
    """
    try:
        with _opened(path) as f:
            def read(offset: int, size: int) -> bytes:
                f.seek(offset)
                return f.read(size)
            section = _section(read, ".modinfo")
            size = f.seek(0, os.SEEK_END)
            signed = size >= len(SIG_MAGIC) and read(size - len(SIG_MAGIC), len(SIG_MAGIC)) == SIG_MAGIC
    except (OSError, struct.error) as e:
        raise NvkmdError(ErrorCode.INVALID_ARGUMENT, f"{path}: not a readable module: {e}") from None
    info: dict[str, str] = {}
    for entry in (section or b"").split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep and key.decode(errors="replace") not in info:
            info[key.decode(errors="replace")] = value.decode(errors="replace")
    if signed:
        info.setdefault("sig", "yes")
    return info


SIG_MAGIC = b"~Module signature appended~\n"

