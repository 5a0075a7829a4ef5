"""``nvkmctl``: the thin command-line client of nvkmd.

Every command is one entry in ``COMMANDS``: a name, a help line, a function
that adds its options, and the function that runs it (or its
"module:function" name, imported only when that command runs, so that
``nvkmctl status`` loads nothing it does not use).  Adding a command is
adding one entry.

A run function takes the parsed arguments and returns an exit status, and
may be a coroutine function.  It reports failures by raising NvkmdError;
``main`` turns that into one line on stderr and the exit status that
``nvkmd.errors.exit_status`` gives its code.  The commands themselves live in
``daemoncmds`` (through the daemon), ``localcmds`` (on this machine) and
``waitready`` (the boot check).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import inspect
import os
import sys
from typing import Any, Callable

from nvkmd import __version__
from nvkmd.cli import argtypes
from nvkmd.cli.common import print_json
from nvkmd.cli.daemoncmds import (
    cmd_build,
    cmd_cancel,
    cmd_cleanup,
    cmd_jobs,
    cmd_kernels,
    cmd_logs,
    cmd_rescan,
    cmd_status,
    setup_build,
    setup_cancel,
    setup_cleanup,
    setup_jobs,
    setup_logs,
)
from nvkmd.cli.bootcmds import setup_boot
from nvkmd.cli.localcmds import setup_fix, setup_source
from nvkmd.cli.preflightcmd import setup_preflight
from nvkmd.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, NvkmdError, exit_status

EXIT_HELP = """\
exit status:
  0  success
  1  the operation failed (e.g. a build failed)
  2  usage error (unknown option, malformed kernel release, ...)
  3  the daemon is unreachable (not running, or no bus)
  4  access denied (polkit, or without polkit not root)
  5  wait-ready: the build did not finish within --timeout
  next-boot: 0 the next boot's kernel has a ready module, 1 it has not,
             2 which kernel boots next (or its state) cannot be known
  preflight: 0 ready, 1 will break, 6 could not tell (a download failed, ...)
"""


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    setup: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Any] | str


def _none(p: argparse.ArgumentParser) -> None:
    pass


def setup_wait_ready(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", "--kernel", default="", metavar="K",
                   help="the kernel release to check (default: the running kernel)")
    p.add_argument("-t", "--timeout", type=float, default=600.0, metavar="S",
                   help="give up after S seconds (default 600; nvkmd-ready.service's "
                        "TimeoutStartSec= stays above it)")


COMMANDS: list[Command] = [
    Command("status", "the daemon, the driver source, every kernel and the jobs", _none, cmd_status),
    Command("kernels", "every installed kernel and its module", _none, cmd_kernels),
    Command("jobs", "queued, running and recently finished builds", setup_jobs, cmd_jobs),
    Command("build", "queue builds (privileged)", setup_build, cmd_build),
    Command("cancel", "cancel a queued or running build (privileged)", setup_cancel, cmd_cancel),
    Command("logs", "show or follow a build log", setup_logs, cmd_logs),
    Command("cleanup", "remove modules of old kernels; a dry run unless --execute "
            "(--execute is privileged)", setup_cleanup, cmd_cleanup),
    Command("rescan", "look at kernels and driver sources again now (privileged)", _none, cmd_rescan),
    Command("next-boot", "will the next boot have a ready NVIDIA module? exit 0 yes, 1 no, "
            "2 cannot be known", _none, "nvkmd.cli.bootcmds:cmd_next_boot"),
    Command("boot", "boot try KERNEL (once, a kernel whose module is ready), boot guard "
            "off|warn|pin|config (privileged)", setup_boot, "nvkmd.cli.bootcmds:cmd_boot"),
    Command("preflight", "would the driver build for a kernel that is not installed yet? "
            "(privileged; exit 0 ready, 1 will break, 6 could not tell)",
            setup_preflight, "nvkmd.cli.preflightcmd:cmd_preflight"),
    # Files only when the module is there; D-Bus only when it is not (waitready.py, waiter.py).
    Command("wait-ready", "wait until the running kernel (or -k K) has its NVIDIA module, "
            "building it if needed", setup_wait_ready, "nvkmd.cli.waitready:cmd_wait_ready"),
    # Run here, as root; builds go through the daemon (localcmds.py).
    Command("source", "the driver source: status, init PATH, update, sync (init, update "
            "and sync need root)", setup_source, "nvkmd.cli.localcmds:cmd_source"),
    Command("fix", "tidy, rebuild what is missing, run depmod where stale, and say what "
            "was done (needs root)", setup_fix, "nvkmd.cli.localcmds:cmd_fix"),
]


# -- parsing and running ----------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nvkmctl", description="Control and inspect nvkmd, the daemon that keeps NVIDIA's "
        "open kernel modules built for every kernel.",
        epilog=EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bus", default="system", metavar="system|session|ADDRESS", type=argtypes.bus,
                   help="the D-Bus nvkmd is on (default system)")
    p.add_argument("--root", default="/", metavar="DIR",
                   help="root of the system for checks nvkmctl makes itself (default /)")
    p.add_argument("--version", action="version", version=f"nvkmctl {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS:
        sp = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, parents=[common],
                            epilog=EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.setup(sp)
        sp.set_defaults(run=cmd.run)
    return p


def _resolve(run: Callable[[argparse.Namespace], Any] | str) -> Callable[[argparse.Namespace], Any]:
    if callable(run):
        return run
    module, _, name = run.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        try:
            # No UnicodeEncodeError tracebacks on a terminal that cannot show ✓
            # (or a kernel release or log line that is not ASCII).
            stream.reconfigure(errors="replace")  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            pass
    args = parser().parse_args(argv)          # usage errors exit 2 here
    if sys.stdout is None:
        # Started with standard output closed (`nvkmctl status >&-`).
        print("nvkmctl: standard output is closed; nothing to print the answer to",
              file=sys.stderr)
        return EXIT_FAILED
    try:
        result = _resolve(args.run)(args)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except NvkmdError as e:
        print(f"nvkmctl: {e}", file=sys.stderr)
        if getattr(args, "json", False):
            print_json({"error": {"code": e.code.value, "message": str(e)}})
        return exit_status(e.code)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`nvkmctl logs | head`); nothing left to say.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (no second error at exit)
        except OSError:
            pass
        return EXIT_OK
    except Exception as e:  # a bug: still one line, never a traceback
        print(f"nvkmctl: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
