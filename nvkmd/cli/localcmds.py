"""nvkmctl commands that do their work on this machine, as root, and queue
builds through the daemon: ``source status|init|update|sync`` and ``fix``.

They change files the daemon only reads (a git checkout, ``/usr/src``
links, DKMS registrations, depmod's index), so they run in nvkmctl
itself; the builds they ask for go through the daemon's ``Build`` call
like ``nvkmctl build``.  This module imports only argparse and nvkmctl's
own light modules at load time: ``nvkmctl status`` never pays for git or
DKMS code.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from nvkmd.cli import argtypes
from nvkmd.cli.common import client, interactive, out, print_json
from nvkmd.errors import EXIT_OK, ErrorCode, NvkmdError, exit_status


def setup_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="nvkmd's configuration (default <root>/etc/nvkmd/nvkmd.toml)")
    # --json after the action too (`nvkmctl source status --json`); SUPPRESS keeps
    # `nvkmctl source --json status` working.
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                      help="print JSON instead of text")
    sub = p.add_subparsers(dest="source_command", metavar="ACTION", required=True)
    sub.add_parser("status", parents=[as_json],
                   help="the source: path, kind, current and newest git tag, version")
    init = sub.add_parser("init", parents=[as_json],
                          help="set up an open-gpu-kernel-modules clone as the source: "
                          "dkms.conf, /usr/src/nvidia-<version>, DKMS registration")
    init.add_argument("path", metavar="PATH", help="the clone")
    init.add_argument("--dkms", action="store_true",
                      help="register with DKMS even if build.backend is not \"dkms\"")
    init.add_argument("--exclude", action="append", default=[], metavar="MODULE",
                      help="leave MODULE out of dkms.conf (repeatable)")
    update = sub.add_parser("update", parents=[as_json], help="check out the newest tag and rebuild every kernel")
    update.add_argument("--no-build", action="store_true", help="update without queueing builds")
    sync = sub.add_parser("sync", parents=[as_json], help="rebuild every kernel (or -k K) from the current checkout")
    sync.add_argument("-k", "--kernel", default="", metavar="K", type=argtypes.kernel,
                      help="only this kernel release")
    sync.add_argument("-f", "--force", action="store_true", help="rebuild even if current")


def setup_fix(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="nvkmd's configuration (default <root>/etc/nvkmd/nvkmd.toml)")
    p.add_argument("--dry-run", action="store_true", help="only say what would be done")


def _load(args: argparse.Namespace):
    from nvkmd.paths import Paths
    return Paths.load(args.root, args.config)


RESCAN_WAIT_S = 60


class DaemonQueue:
    """Queue builds through the daemon, once its rescan sees the source this
    command just changed (Rescan returns before the scan is done, and Build
    decides from the daemon's last scan).  A failure to reach the daemon is
    remembered, not raised: the local work is done and must be reported."""

    def __init__(self, args: argparse.Namespace, paths=None, config=None):
        self.args = args
        self.paths, self.config = paths, config
        self.error = None

    def _expected(self) -> str:
        from nvkmd.system.source import discover
        try:
            return discover(self.paths, self.config, unpack=False).version if self.paths else ""
        except NvkmdError:
            return ""

    async def _build(self, kernel: str, force: bool) -> list[int]:
        import asyncio    # not at module level: wait-ready's fast path imports this module
        expected = self._expected()
        async with await client(self.args) as c:
            await c.rescan(interactive=interactive())
            deadline = time.monotonic() + RESCAN_WAIT_S
            while expected and (await c.status()).source.version != expected:
                if time.monotonic() > deadline:
                    raise NvkmdError(ErrorCode.TIMEOUT, f"the daemon did not see source version "
                                     f"{expected} within {RESCAN_WAIT_S}s of a rescan")
                await asyncio.sleep(0.1)
            return await c.build(kernel, force, interactive=interactive())

    def __call__(self, kernel: str, force: bool) -> list[int]:
        import asyncio
        try:
            return asyncio.run(self._build(kernel, force))
        except NvkmdError as e:
            self.error = e
            return []


def _print(args: argparse.Namespace, lines: list[str], data: Any) -> None:
    if args.json:
        print_json(data)
    else:
        out("\n".join(lines) + "\n")


def _progress(args: argparse.Namespace):
    """Where long-running output (make of the OS-agnostic objects) goes as it
    happens: stdout, or stderr when stdout is JSON."""
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    return lambda line: print(line, file=stream, flush=True)


def _finish(queue: DaemonQueue) -> int:
    if queue.error is None:
        return EXIT_OK
    print(f"nvkmctl: builds not queued: {queue.error} (`nvkmd --once` builds without the daemon)",
          file=sys.stderr)
    return exit_status(queue.error.code)


def cmd_source(args: argparse.Namespace) -> int:
    from nvkmd.admin import sourceops
    paths, config = _load(args)
    action = args.source_command
    if action == "status":
        st = sourceops.status(paths, config)
        _print(args, ["NVIDIA Source Status", *st.lines()], st.to_dict())
        return EXIT_OK
    if action == "init":
        r = sourceops.init(paths, config, Path(args.path), register=True if args.dkms else None,
                            exclude=args.exclude, log=_progress(args))
        _print(args, r.lines(), {"version": r.version, "tree": str(r.tree), "link": str(r.link),
                                 "dkms_conf": r.conf, "registered": r.registered, "notes": r.notes})
        return EXIT_OK
    queue = DaemonQueue(args, paths, config)
    if action == "update":
        u = sourceops.update(paths, config, no_build=args.no_build, queue=queue,
                              log=_progress(args))
        _print(args, u.lines(), {"path": str(u.path), "before": u.before, "after": u.after,
                                 "changed": u.changed, "jobs": u.jobs, "notes": u.notes})
    else:
        s = sourceops.sync(paths, config, queue, args.kernel, args.force)
        _print(args, s.lines(), {"version": s.version, "jobs": s.jobs})
    return _finish(queue)


def cmd_fix(args: argparse.Namespace) -> int:
    from nvkmd.admin import fix
    paths, config = _load(args)
    if args.dry_run:
        steps = fix.plan(paths, config)
        lines = [f"{s.kernel + ': ' if s.kernel else ''}{s.action}: {s.why}" for s in steps]
        _print(args, lines or ["nothing to fix"], [vars(s) for s in steps])
        return EXIT_OK
    queue = DaemonQueue(args, paths, config)
    local = False

    def build(release: str) -> str:
        nonlocal local
        if not local:
            ids = queue(release, False)
            if queue.error is None:
                return f"queued job {', '.join(map(str, ids))}" if ids else "nothing queued"
            local = True        # no daemon: do it here, as a person would
        import asyncio

        from nvkmd.install.engine import Engine
        from nvkmd.system.source import discover
        o = asyncio.run(Engine(paths, config).build(release, discover(paths, config)))
        return f"built here (the daemon is unreachable): {o.result}" + \
            (f": {o.diagnosis.cause}" if o.diagnosis else "")

    report = fix.run(paths, config, build)
    _print(args, report, {"done": report})
    return EXIT_OK
