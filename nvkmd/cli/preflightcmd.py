"""``nvkmctl preflight [TARGET] [--json]``: would the driver build for a
kernel that is not installed yet?  Asks the daemon (D-Bus ``Preflight``,
privileged) and waits for its ``PreflightFinished``.

TARGET: an apt package (``linux-headers-6.1.0-57-amd64``,
``linux-image-amd64``, ``name=version``) or a kernel release; a package
file (.deb, .pkg.tar.zst, .rpm); an unpacked headers directory.  None:
every kernel the next upgrade would install.  Exit status 0 ready, 1 will
break, 2 usage, 3 unreachable, 4 denied, 6 could not tell.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from nvkmd.cli.common import client, interactive, out, print_json, watch_connection
from nvkmd.errors import EXIT_USAGE, ErrorCode, NvkmdError
from nvkmd.verdict import EXIT_UNKNOWN

SIGNAL = "PreflightFinished"


def setup_preflight(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", default="", metavar="TARGET",
                   help="a kernel package or release, a .deb/.pkg.tar.zst/.rpm file, or an unpacked "
                        "headers directory (default: every kernel the next upgrade would install)")
    p.add_argument("-t", "--timeout", type=float, default=7200.0, metavar="S",
                   help="give up waiting after S seconds (default 7200; the preflight goes on)")


def _target(raw: str) -> str:
    # A file or directory is named for the daemon, which runs elsewhere (cwd, namespace).
    if raw and ("/" in raw or raw.startswith(".") or os.path.exists(raw)):
        return os.path.abspath(raw)
    return raw


def text(results: list[dict[str, Any]]) -> str:
    from nvkmd.verdict import PreflightResult
    if not results:
        return "no kernel to check: the next upgrade installs none\n"
    lines = []
    for d in results:
        r = PreflightResult.from_dict(d)
        lines.append(r.message())
        if not r.ok:
            for label, value in (("hint", r.hint), ("first error", r.first_error)):
                if value:
                    lines.append(f"  {label}: {value}")
            if r.verdict == "will-break" and r.hold:
                lines.append(f"  to keep it out: {r.hold}" + (" (held by nvkmd)" if r.held else ""))
        if r.log:
            lines.append(f"  log: {r.log}")
    return "\n".join(lines) + "\n"


async def cmd_preflight(args: argparse.Namespace) -> int:
    import asyncio    # not at module level: main.py imports this module on wait-ready's fast path
    from nvkmd import api
    from nvkmd.dbusconn import unwrap
    from nvkmd.verdict import PreflightResult, worst
    target = _target(args.target)
    if args.timeout <= 0:
        raise NvkmdError(ErrorCode.INVALID_ARGUMENT, "--timeout must be above 0")
    done: asyncio.Future = asyncio.get_running_loop().create_future()
    wanted: list[int] = []
    early: dict[int, list] = {}

    def handler(msg: Any) -> None:
        if (msg.path == api.OBJECT_PATH and msg.interface == api.INTERFACE and msg.member == SIGNAL
                and msg.signature == "taa{sv}"):
            rid, results = msg.body[0], [unwrap(r) for r in msg.body[1]]
            if wanted and rid == wanted[0] and not done.done():
                done.set_result(results)
            elif not wanted:
                early[rid] = results

    async with await client(args) as c:
        await c._add_match(f"type='signal',sender='{api.BUS_NAME}',path='{api.OBJECT_PATH}',"
                           f"interface='{api.INTERFACE}',member='{SIGNAL}'")
        c.conn.on_signal(handler)
        watch_connection(c, lambda: done.done() or done.set_exception(
            NvkmdError(ErrorCode.UNREACHABLE, "lost the connection to the daemon")))
        (rid,) = await c.call("Preflight", target, interactive=interactive())
        wanted.append(rid)
        if rid in early:
            done.set_result(early.pop(rid))
        try:
            results = await asyncio.wait_for(done, args.timeout)
        except asyncio.TimeoutError:
            print(f"nvkmctl: no preflight result within {args.timeout:g}s; it goes on in the "
                  "daemon (`nvkmctl status` shows it)", file=sys.stderr)
            return EXIT_UNKNOWN
    if args.json:
        print_json({"target": target, "results": results})
    else:
        out(text(results))
    parsed = [PreflightResult.from_dict(r) for r in results]
    if any(r.kind == "refused" for r in parsed):
        return EXIT_USAGE       # the daemon could not make sense of TARGET
    return worst(parsed)

