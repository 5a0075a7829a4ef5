"""Unpacking a source tarball in a short-lived child process.

Debian's nvidia-open-kernel.tar.xz is compressed with a 64 MiB dictionary:
decompressing it in the daemon raised its peak memory by that much (92.7
MiB over a build, issue 16), and tarfile keeps a TarInfo per member for as
long as the archive is open.  The child runs untar.py as a script with
``-I`` (only the standard library, nothing from the environment), so the
daemon itself never loads tarfile or lzma for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

UNTAR = Path(__file__).with_name("untar.py")
TIMEOUT_S = 900


class UnpackFailed(OSError):
    """The child's error: ``errno`` as the child saw it (ENOSPC counts),
    and its message as it is."""

    def __init__(self, errno: int | None, message: str):
        super().__init__(errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def extract(tarball: Path, dest: Path, timeout: float = TIMEOUT_S) -> None:
    """untar.extract(tarball, dest), in a child; UnpackFailed when it fails."""
    cmd = [sys.executable, "-I", str(UNTAR), str(tarball), str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                              stdin=subprocess.DEVNULL, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise UnpackFailed(None, f"unpacking did not finish within {timeout:g}s") from None
    if proc.returncode == 0:
        return
    try:
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
        errno, message = answer["errno"], str(answer["message"])
    except (ValueError, IndexError, KeyError, TypeError):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise UnpackFailed(None, f"the unpacker exited with {proc.returncode}: "
                           f"{' / '.join(tail) or 'no output'}") from None
    raise UnpackFailed(errno if isinstance(errno, int) else None, message)
