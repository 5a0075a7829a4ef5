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

import dataclasses
import importlib
import os
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Callable

from nvkmd import __version__
from nvkmd.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, NvkmdError, exit_status

if TYPE_CHECKING:
    import argparse

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
    setup: Callable[[argparse.ArgumentParser], None] | str
    run: Callable[[argparse.Namespace], Any] | str


def _none(p: argparse.ArgumentParser) -> None:
    pass


def setup_wait_ready(p: argparse.ArgumentParser) -> None:
    # Checked by wait-ready itself, before it reads or asks anything, as one
    # line (the boot's console shows it).
    p.add_argument("-k", "--kernel", default="", metavar="K",
                   help="the kernel release to check (default: the running kernel)")
    p.add_argument("-t", "--timeout", type=float, default=600.0, metavar="S",
                   help="give up after S seconds (default 600; nvkmd-ready.service's "
                        "TimeoutStartSec= stays above it)")


# Commands by "module:function" name: a command module is imported when its
# command runs or the full parser is built, never by wait-ready's fast path.
_D, _L, _B, _P = (f"nvkmd.cli.{m}:" for m in ("daemoncmds", "localcmds", "bootcmds",
                                             "preflightcmd"))

COMMANDS: list[Command] = [
    Command("status", "the daemon, the driver source, every kernel and the jobs", _none,
            "nvkmd.cli.statuscmd:cmd_status"),
    Command("kernels", "every installed kernel and its module", _none, _D + "cmd_kernels"),
    Command("jobs", "queued, running and recently finished builds", _D + "setup_jobs", _D + "cmd_jobs"),
    Command("build", "queue builds (privileged)", _D + "setup_build", _D + "cmd_build"),
    Command("cancel", "cancel a queued or running build (privileged)", _D + "setup_cancel", _D + "cmd_cancel"),
    Command("logs", "show or follow a build log", _D + "setup_logs", _D + "cmd_logs"),
    Command("cleanup", "remove modules of old kernels; a dry run unless --execute "
            "(--execute is privileged)", _D + "setup_cleanup", _D + "cmd_cleanup"),
    Command("rescan", "look at kernels and driver sources again now (privileged)", _none, _D + "cmd_rescan"),
    Command("next-boot", "will the next boot have a ready NVIDIA module? exit 0 yes, 1 no, "
            "2 cannot be known", _none, _B + "cmd_next_boot"),
    Command("boot", "boot try KERNEL (once, a kernel whose module is ready), boot guard "
            "off|warn|pin|config (privileged)", _B + "setup_boot", _B + "cmd_boot"),
    Command("preflight", "would the driver build for a kernel that is not installed yet? "
            "(privileged; exit 0 ready, 1 will break, 6 could not tell)",
            _P + "setup_preflight", _P + "cmd_preflight"),
    # Files only when the module is there; D-Bus only when it is not (waitready.py, waiter.py).
    Command("wait-ready", "wait until the running kernel (or -k K) has its NVIDIA module, "
            "building it if needed", setup_wait_ready, "nvkmd.cli.waitready:cmd_wait_ready"),
    # Run here, as root; builds go through the daemon (localcmds.py).
    Command("source", "the driver source: status, init PATH, update, sync (init, update "
            "and sync need root)", _L + "setup_source", _L + "cmd_source"),
    Command("fix", "tidy, rebuild what is missing, run depmod where stale, and say what "
            "was done (needs root)", _L + "setup_fix", _L + "cmd_fix"),
]


# -- parsing and running ----------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    import argparse

    from nvkmd.cli import argtypes
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
        _resolve(cmd.setup)(sp)
        sp.set_defaults(run=cmd.run)
    return p


def _resolve(run: Callable[..., Any] | str) -> Callable[..., Any]:
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
    from nvkmd.cli import readyargs
    # wait-ready runs on every boot: its usual command lines skip building the parser.
    args = readyargs.parse(sys.argv[1:] if argv is None else argv) or \
        parser().parse_args(argv)             # usage errors exit 2 here
    if sys.stdout is None:
        # Started with standard output closed (`nvkmctl status >&-`).
        print("nvkmctl: standard output is closed; nothing to print the answer to",
              file=sys.stderr)
        return EXIT_FAILED
    try:
        result = _resolve(args.run)(args)
        if isinstance(result, Coroutine):
            import asyncio    # only here: not on wait-ready's fast path
            result = asyncio.run(result)
        return int(result or 0)
    except NvkmdError as e:
        print(f"nvkmctl: {e}", file=sys.stderr)
        if getattr(args, "json", False):
            from nvkmd.cli.common import print_json
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
