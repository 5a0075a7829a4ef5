"""The environment child processes (make, depmod, dkms, ...) run with."""

from __future__ import annotations

import os

from nvkmd.paths import DEFAULT_PATH

# NOTIFY_SOCKET: a child must never speak for the daemon to systemd.
# MAKEFLAGS & co.: a make we were started from must not steer our builds.
_DROP = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "MAKEFLAGS", "MFLAGS", "MAKELEVEL",
         "KBUILD_OUTPUT", "ARCH", "CROSS_COMPILE", "CC", "LD", "LLVM", "CFLAGS", "LDFLAGS")


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP}
    env["LC_ALL"] = "C"
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(extra)
    return env
