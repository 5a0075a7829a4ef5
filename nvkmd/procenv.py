"""The environment child processes (make, depmod, dkms, ...) run with."""

from __future__ import annotations

import os
from typing import Any

from nvkmd.errors import ErrorCode, NvkmdError
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


def run_tool(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None,
             missing: "ErrorCode | None" = None, prefix: str = "", **kw: Any) -> Any:
    """``subprocess.run`` of a system tool, with no stdin and a timeout: a
    missing program (as ``missing``, default NotSupported) and the timeout
    come back as NvkmdError, with ``prefix`` (a diagnosis marker) first."""
    import subprocess  # not at the top: the boot check imports this module
    try:
        return subprocess.run(cmd, text=True, env=env if env is not None else child_env(),
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL, **kw)
    except FileNotFoundError:
        raise NvkmdError(missing or ErrorCode.NOT_SUPPORTED,
                         f"{prefix}{cmd[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise NvkmdError(ErrorCode.TIMEOUT, f"{prefix}{' '.join(cmd[:3])} did not finish "
                         f"within {timeout:g}s") from None
