"""Read a kernel module's ``.modinfo`` section, compressed modules too."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

from nvkmd.errors import ErrorCode, NvkmdError

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def module_name(path: Path) -> str:
    """``nvidia-uvm.ko.zst`` -> ``nvidia-uvm``."""
    name = path.name
    for suffix in sorted(MODULE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        # The standard library has no zstd before 3.14; the zstd tool does.
        import subprocess    # only here: the boot check imports this module
        proc = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=False)
        if proc.returncode != 0:
            raise NvkmdError(ErrorCode.INVALID_ARGUMENT, f"{path}: cannot decompress: "
                             f"{proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout
    return data


def elf_section(image: bytes, wanted: str) -> bytes | None:
    """The contents of section ``wanted`` of a 64- or 32-bit ELF image."""
    if image[:4] != b"\x7fELF":
        return None
    is64 = image[4] == 2
    endian = "<" if image[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(endian + "Q", image, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", image, 0x3A)
        fmt, off_i, size_i = endian + "IIQQQQIIQQ", 4, 5
    else:
        shoff, = struct.unpack_from(endian + "I", image, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", image, 0x2E)
        fmt, off_i, size_i = endian + "IIIIIIIIII", 4, 5
    headers = [struct.unpack_from(fmt, image, shoff + i * shentsize) for i in range(shnum)]
    if shstrndx >= len(headers):
        return None
    strtab = headers[shstrndx]
    names = image[strtab[off_i]: strtab[off_i] + strtab[size_i]]
    for h in headers:
        end = names.find(b"\0", h[0])
        if names[h[0]:end].decode(errors="replace") == wanted:
            return image[h[off_i]: h[off_i] + h[size_i]]
    return None


def modinfo(path: Path) -> dict[str, str]:
    """``key -> value`` from the module's ``.modinfo`` (first value wins).

    A module appended with a signature is still a valid ELF image in front
    of it, so signed modules read the same way.
    """
    try:
        image = read_module_bytes(path)
        section = elf_section(image, ".modinfo")
    except (OSError, lzma.LZMAError, EOFError, struct.error, gzip.BadGzipFile) as e:
        raise NvkmdError(ErrorCode.INVALID_ARGUMENT, f"{path}: not a readable module: {e}") from None
    info: dict[str, str] = {}
    for entry in (section or b"").split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep and key.decode(errors="replace") not in info:
            info[key.decode(errors="replace")] = value.decode(errors="replace")
    if is_signed(image):
        info.setdefault("sig", "yes")
    return info


SIG_MAGIC = b"~Module signature appended~\n"


def is_signed(image: bytes) -> bool:
    return image.endswith(SIG_MAGIC)
