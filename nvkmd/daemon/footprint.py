"""What the long-lived daemon keeps resident (issue 16, P4: idle at most
30 MiB, where it was 46.5), decided before it loads anything else."""

from __future__ import annotations

import sys

# Loaded whenever they can be: ssl by asyncio, OpenSSL's libcrypto by
# hashlib, GLib (through gi) by dbus-fast.  The daemon speaks no TLS, needs
# nothing from OpenSSL that Python's builtin sha256 does not do (the big
# digests are a child's, build/cache.py), and runs no GLib loop, yet they
# were 9 MiB of its resident memory.  None in sys.modules makes an import
# fail as if the module were missing, which asyncio, hashlib and dbus-fast
# each handle.
NOT_IN_THE_DAEMON = ("ssl", "_ssl", "_hashlib", "gi")

# glibc's mallopt(3) parameters.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
# Big blocks (a GetLog reply, a log chunk) are mapped and given back when
# freed.  A fixed threshold also stops glibc from raising it after the
# first big free, which kept later big blocks in the heap for good.
BIG_BLOCK = 256 << 10


def refuse_unused_modules() -> None:
    for name in NOT_IN_THE_DAEMON:
        sys.modules.setdefault(name, None)      # already loaded: too late, leave it


def tune_malloc() -> None:
    """One malloc arena for all threads, instead of one per thread that ever
    allocated (the worker threads of asyncio.to_thread): the daemon's
    threads mostly wait on subprocesses, and each arena kept its own free
    memory resident (1.6 MiB here).  Not glibc: nothing to tune."""
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mallopt(M_ARENA_MAX, 1)
    mallopt(M_MMAP_THRESHOLD, BIG_BLOCK)
    mallopt(M_TRIM_THRESHOLD, BIG_BLOCK)
