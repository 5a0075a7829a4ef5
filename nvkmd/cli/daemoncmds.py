"""nvkmctl's commands that ask the daemon: kernels, jobs, build,
cancel, logs, cleanup, rescan.

Each is a ``setup_*`` that adds its options and a ``cmd_*`` coroutine that
connects, calls, and prints text or JSON; failures are NvkmdError, which
``main`` turns into one line and an exit status.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import TYPE_CHECKING, Any

from nvkmd.cli import argtypes
from nvkmd.cli.common import (client, glyphs, interactive, out, print_json, renderer, show,
                              watch_connection)
from nvkmd.errors import EXIT_FAILED, EXIT_OK, ErrorCode, NvkmdError

if TYPE_CHECKING:
    import asyncio


async def cmd_kernels(args: argparse.Namespace) -> int:
    await show(args, lambda c: c.kernels(), lambda ks: [k.to_dict() for k in ks],
               lambda ks: renderer().kernels_text(ks, glyphs()))
    return EXIT_OK


def setup_jobs(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--finished", type=argtypes.finished, default=20, metavar="N",
                   help="also show the N most recently finished jobs (default 20)")


async def cmd_jobs(args: argparse.Namespace) -> int:
    await show(args, lambda c: c.jobs(args.finished), lambda js: [j.to_dict() for j in js],
               lambda js: renderer().jobs_text(js))
    return EXIT_OK


def setup_build(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", "--kernel", default="", metavar="K", type=argtypes.kernel,
                   help="only this kernel release (default: every kernel that needs it)")
    p.add_argument("-f", "--force", action="store_true", help="rebuild even if the module is current")
    p.add_argument("-w", "--wait", action="store_true",
                   help="wait for the builds to finish, with a progress bar on a terminal")


async def cmd_build(args: argparse.Namespace) -> int:
    import asyncio    # not at module level: wait-ready's fast path imports this module
    from nvkmd.cli.render import finished_text, progress_bar
    from nvkmd.model import FINISHED_JOB_STATES, JobFinished, JobProgress
    finished: dict[int, JobFinished] = {}
    progress: dict[int, JobProgress] = {}
    changed = asyncio.Event()
    gone: list[str] = []
    # When each running job should end, by the previous build of its driver
    # version (JobInfo.eta_s; the JobProgress signal does not carry it).
    ends: dict[int, tuple[str, float]] = {}

    def on_event(e: Any) -> None:
        if isinstance(e, JobFinished):
            finished[e.job_id] = e
        elif isinstance(e, JobProgress):
            progress[e.job_id] = e
        changed.set()

    def on_owner(owner: str) -> None:
        if not owner:
            gone.append("nvkmd stopped")
            changed.set()

    async with await client(args) as c:
        if args.wait:
            # Subscribe before asking, so no signal of our jobs can be missed.
            await c.subscribe(on_event)
            await c.watch_owner(on_owner)
            watch_connection(c, lambda: on_owner(""))
        ids = await c.build(args.kernel, args.force, interactive=interactive())
        if not args.wait:
            if args.json:
                print_json({"job_ids": ids})
            elif ids:
                out("".join(f"queued job {i}\n" for i in ids))
            else:
                out("nothing to build: every module is current\n")
            return EXIT_OK
        # A job that ended before we subscribed is in the history.
        for j in await c.jobs(1000):
            if j.id in ids and j.id not in finished and j.state in FINISHED_JOB_STATES:
                finished[j.id] = JobFinished(j.id, j.kernel, j.result or j.state, j.cause, j.hint, j.log)
        tty = sys.stdout.isatty() and not args.json
        g = glyphs()
        shown: set[int] = set()
        while True:
            for i in ids:
                if i in finished and i not in shown:
                    shown.add(i)
                    f = finished[i]
                    if tty:
                        out("\r\x1b[K")
                    if not args.json:
                        out(finished_text(f.kernel, f.result, f.cause, f.hint, f.log))
            if len(shown) == len(ids):
                break
            if gone:
                raise NvkmdError(ErrorCode.UNREACHABLE, "nvkmd stopped before the build finished")
            running = [progress[i] for i in ids if i in progress and i not in finished]
            if tty and running:
                p = running[-1]
                if ends.get(p.job_id, ("",))[0] != p.phase:      # a few times per build
                    j = next((j for j in await c.jobs(0) if j.id == p.job_id), None)
                    eta = j.eta_s if j is not None else -1.0
                    ends[p.job_id] = (p.phase, time.monotonic() + eta if eta >= 0 else -1.0)
                end = ends[p.job_id][1]
                out("\r\x1b[K" + progress_bar(p.kernel, p.phase, p.percent, g,
                                               eta_s=max(end - time.monotonic(), 0.0) if end >= 0 else -1.0))
            changed.clear()
            await changed.wait()
    results = [finished[i] for i in ids]
    if args.json:
        print_json([dataclasses.asdict(f) for f in results])
    if not ids and not args.json:
        out("nothing to build: every module is current\n")
    return EXIT_OK if all(f.result in ("success", "up-to-date") for f in results) else EXIT_FAILED


def setup_cancel(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", type=argtypes.job_id, help="the job id (see `nvkmctl jobs`)")


async def cmd_cancel(args: argparse.Namespace) -> int:
    async with await client(args) as c:
        await c.cancel(args.id, interactive=interactive())
    if args.json:
        print_json({"cancelled": args.id})
    else:
        out(f"cancelled job {args.id}\n")
    return EXIT_OK


def setup_logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", "--kernel", default="", metavar="K", type=argtypes.kernel,
                   help="the latest log of this kernel")
    p.add_argument("-j", "--job", type=argtypes.log_job_id, default=0, metavar="ID", help="the log of this job")
    p.add_argument("-t", "--tail", type=argtypes.lines, default=50, metavar="N",
                   help="show the last N lines (default 50)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing the log as it grows, until its build ends")


async def cmd_logs(args: argparse.Namespace) -> int:
    import asyncio
    if args.tail < 0:
        raise NvkmdError(ErrorCode.INVALID_ARGUMENT, f"--tail must not be negative: {args.tail}")
    async with await client(args) as c:
        if not args.follow:
            path, lines = await c.get_log(args.job, args.kernel, args.tail)
            if args.json:
                print_json({"path": path, "lines": lines})
            else:
                print(f"==> {path} <==", file=sys.stderr)
                out("".join(line + "\n" for line in lines))
            return EXIT_OK
        from nvkmd.model import JobFinished
        ended = asyncio.Event()
        path = ""

        def on_event(e: Any) -> None:
            if isinstance(e, JobFinished) and e.log and e.log == path:
                ended.set()

        def on_owner(owner: str) -> None:
            if not owner:
                ended.set()
        await c.subscribe(on_event)
        await c.watch_owner(on_owner)
        watch_connection(c, lambda: on_owner(""))
        path, _ = await c.get_log(args.job, args.kernel, 0)
        return await _follow(path, args.tail, ended, args.json)


async def _follow(path: str, tail: int, ended: "asyncio.Event", as_json: bool) -> int:
    """Print the last ``tail`` lines of ``path``, then what is appended,
    until the build writing it ends (its "# result:" trailer, or the
    daemon's JobFinished for this log)."""
    import asyncio
    import json
    try:
        f = open(path, "rb")
    except OSError as e:
        raise NvkmdError(ErrorCode.ACCESS_DENIED if isinstance(e, PermissionError) else
                         ErrorCode.NO_SUCH_KERNEL, f"cannot read the log {path}: {e.strerror}") from None
    with f:
        if not as_json:
            print(f"==> {path} <==", file=sys.stderr)
        data = f.read()
        lines = data.decode(errors="replace").splitlines(keepends=True)
        pending = ""
        if lines and not lines[-1].endswith("\n"):
            pending = lines.pop()
        done = False

        def emit(line: str) -> None:
            nonlocal done
            out(json.dumps({"line": line.rstrip("\n")}) + "\n" if as_json else line)
            if line.startswith("# result: "):
                done = True
        for line in lines[-tail:] if tail else []:
            emit(line)
        done = done or any(line.startswith("# result: ") for line in lines)
        while not done:
            chunk = f.read()
            if chunk:
                text = pending + chunk.decode(errors="replace")
                *complete, pending = text.split("\n")
                for line in complete:
                    emit(line + "\n")
                continue
            if ended.is_set():
                break
            try:
                # Poll the file: nvkmctl has no inotify (the daemon's
                # watcher owns that), and a quarter second is prompt enough.
                await asyncio.wait_for(ended.wait(), 0.25)
            except asyncio.TimeoutError:
                pass
        rest = f.read()
        if rest or pending:
            for line in (pending + rest.decode(errors="replace")).splitlines(keepends=True):
                emit(line if line.endswith("\n") else line + "\n")
    return EXIT_OK


def setup_cleanup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep", type=argtypes.keep, default=2, metavar="N",
                   help="keep the N most recent kernels, plus the running one (default 2)")
    p.add_argument("--execute", action="store_true",
                   help="really remove; without it, only show what would be removed")


async def cmd_cleanup(args: argparse.Namespace) -> int:
    if args.keep < 0:
        raise NvkmdError(ErrorCode.INVALID_ARGUMENT, f"--keep must not be negative: {args.keep}")
    async with await client(args) as c:
        paths = await c.cleanup(args.keep, args.execute, interactive=interactive())
    if args.json:
        print_json({"executed": args.execute, "keep": args.keep, "paths": paths})
    else:
        from nvkmd.cli.render import cleanup_text
        out(cleanup_text(paths, args.keep, args.execute, glyphs()))
    return EXIT_OK


async def cmd_rescan(args: argparse.Namespace) -> int:
    async with await client(args) as c:
        await c.rescan(interactive=interactive())
    if args.json:
        print_json({"rescanned": True})
    else:
        out("rescan done\n")
    return EXIT_OK

