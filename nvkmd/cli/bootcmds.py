"""``nvkmctl next-boot`` and ``nvkmctl boot``: the next boot's readiness,
a one-shot boot of a kernel whose module is ready, and the boot guard.

next-boot's exit status is the answer itself: 0 the next boot has a ready
module, 1 it has not, 2 which kernel boots (or its state) cannot be known;
3 and 4 keep their meaning for every command (unreachable, denied).
"""

from __future__ import annotations

import argparse

from nvkmd.cli import argtypes
from nvkmd.cli.common import client, glyphs, interactive, out, print_json, renderer, show

EXIT_NOT_READY = 1
EXIT_UNKNOWN = 2


async def cmd_next_boot(args: argparse.Namespace) -> int:
    nb = await show(args, lambda c: c.next_boot(), lambda nb: nb.to_dict(),
                    lambda nb: "\n".join(renderer().next_boot_lines(nb, glyphs())) + "\n")
    if nb.ready:
        return 0
    return EXIT_UNKNOWN if nb.reason == "unknown" or not nb.kernel else EXIT_NOT_READY


def setup_boot(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="boot_command", metavar="try|guard", required=True)
    t = sub.add_parser("try", help="boot KERNEL once, at the next boot only, if its module is "
                       "ready (privileged)")
    t.add_argument("kernel", metavar="KERNEL", type=argtypes.release)
    g = sub.add_parser("guard", help="set the boot guard: off, warn, pin, or config (what "
                       "boot.guard in the configuration says) (privileged)")
    g.add_argument("mode", choices=("off", "warn", "pin", "config"))


async def cmd_boot(args: argparse.Namespace) -> int:
    async with await client(args) as c:
        if args.boot_command == "try":
            msg = await c.boot_try(args.kernel, interactive=interactive())
        else:
            mode = "" if args.mode == "config" else args.mode
            msg = await c.set_boot_guard(mode, interactive=interactive())
    if args.json:
        print_json({"message": msg})
    else:
        out(msg + "\n")
    return 0
