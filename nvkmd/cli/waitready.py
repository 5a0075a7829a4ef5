"""``nvkmctl wait-ready``: the boot-time check that the running kernel has
its NVIDIA module, run by nvkmd-ready.service before the display manager.

The healthy path, here, reads files only (the install manifest beside the
modules, and the driver source's version and fingerprint) and imports no
D-Bus code: on a normal boot it costs a Python start and a few stat calls.
Only when the module is missing or stale does it hand over to ``waiter``,
which talks to the daemon.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from nvkmd.cli.common import READY_PREFIX, fail, say
from nvkmd.config import Config
from nvkmd.errors import EXIT_OK, EXIT_USAGE, NvkmdError
from nvkmd.paths import Paths


class FileCheck:
    """A plain class: a dataclass costs a third of a millisecond to create,
    on every boot."""

    __slots__ = ("ready", "detail")

    def __init__(self, ready: bool, detail: str):
        self.ready = ready
        self.detail = detail            # what was found, or why the files cannot tell


def check_files(paths: Paths, config: Config, release: str) -> FileCheck:
    """Does ``release`` have current NVIDIA modules, judging by files alone?

    ``ready=False`` means "cannot say yes", not "no": the daemon decides.
    Nothing is written: a Debian source tarball is used only if it has
    been unpacked already (by the daemon).
    """
    from nvkmd.system import source
    from nvkmd.system.installed import module_is_current
    from nvkmd.system.kernels import Kernel

    kernel = Kernel(paths, release)
    try:
        src = source.discover(paths, config, unpack=False)
    except NvkmdError as e:
        return FileCheck(False, f"the driver source cannot be read from files: {e.message}")
    if module_is_current(kernel, src) or _dkms_current(paths, config, kernel, src):
        return FileCheck(True, f"{release} has NVIDIA modules {src.version} ({src.kind} source)")
    return FileCheck(False, f"{release} has no current NVIDIA modules for {src.version}")


def _dkms_current(paths: Paths, config: Config, kernel, src) -> bool:
    """The DKMS backend's notion of current, from DKMS's tree and nvkmd's
    record of the digest it built, without running ``dkms status`` (a
    shell script that takes longer than the rest of this check)."""
    from nvkmd.system import dkms
    if config.build_backend == "kbuild" or not dkms.usable(paths):
        return False
    return any(dkms.is_current(paths, kernel, src, dkms.Registration(name, version, src.origin, src.tree))
               for name, version in dkms.installed(paths, kernel.release) if version == src.version)


def run(paths: Paths, config: Config, release: str | None, timeout: float, bus: str,
        clock: Callable[[], float] = time.monotonic) -> int:
    """``nvkmctl wait-ready``; returns the exit status."""
    from nvkmd.system.kernels import check_release
    release = check_release(release or paths.running_kernel())
    deadline = clock() + timeout
    found = check_files(paths, config, release)
    if found.ready:
        say(found.detail)
        return EXIT_OK
    say(f"{found.detail}; asking nvkmd")
    import asyncio

    from nvkmd.cli.waiter import Notifier, Waiter
    waiter = Waiter(release, deadline, bus, Notifier(), clock,
                    files_ready=lambda: check_files(paths, config, release).ready)
    return asyncio.run(waiter.run())


# -- nvkmctl wait-ready ---------------------------------------------------------

def cmd_wait_ready(args) -> int:
    """Load the configuration of ``--root`` and run the check."""
    # The source's fingerprint is a few hundred short sha256 updates: Python's
    # builtin sha256 does them as fast as OpenSSL, whose libcrypto and
    # openssl.cnf hashlib would otherwise load on every boot (the daemon
    # refuses it the same way, daemon/footprint.py).  Loaded already: kept.
    sys.modules.setdefault("_hashlib", None)
    if not args.timeout > 0:
        fail(f"--timeout must be a positive number of seconds, not {args.timeout}")
        return EXIT_USAGE
    paths, config = Paths.load(args.root)
    if not getattr(args, "json", False):
        return run(paths, config, args.kernel or None, args.timeout, args.bus)
    # --json: the same lines, collected, then one object.
    import contextlib
    import io
    import json
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = run(paths, config, args.kernel or None, args.timeout, args.bus)
    lines = [line.removeprefix(READY_PREFIX) for line in buf.getvalue().splitlines()]
    print(json.dumps({"kernel": args.kernel or paths.running_kernel(), "ready": code == EXIT_OK,
                      "exit_status": code, "messages": lines}, indent=2))
    return code
