"""``nvkmctl``: the thin command-line client of nvkmd.

Every command is one entry in ``COMMANDS``: a name, a help line, a function
that adds its options, and the function that runs it (or its
"module:function" name, imported only when that command runs, so that
``nvkmctl status`` loads nothing it does not use).  Adding a command is
adding one entry.

A run function takes the parsed arguments and returns an exit status, and
may be a coroutine function.  It reports failures by raising NvkmdError;
``main`` turns that into one line on stderr and the exit status below.
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
from nvkmd.cli.localcmds import setup_fix, setup_source
from nvkmd.errors import ErrorCode, NvkmdError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_DENIED = 4

EXIT_HELP = """\
exit status:
  0  success
  1  the operation failed (e.g. a build failed)
  2  usage error (unknown option, malformed kernel release, ...)
  3  the daemon is unreachable (not running, or no bus)
  4  access denied (polkit, or without polkit not root)
  5  wait-ready: the build did not finish within --timeout
"""


def exit_status(code: ErrorCode) -> int:
    if code is ErrorCode.UNREACHABLE:
        return EXIT_UNREACHABLE
    if code is ErrorCode.ACCESS_DENIED:
        return EXIT_DENIED
    if code is ErrorCode.INVALID_ARGUMENT:
        return EXIT_USAGE
    return EXIT_FAILED


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    setup: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Any] | str


# -- helpers for commands -----------------------------------------------------

def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def print_json(value: Any) -> None:
    import json
    _out(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def glyphs():
    from nvkmd.cli.render import glyphs_for
    return glyphs_for(sys.stdout.encoding)


def interactive() -> bool:
    """May polkit ask for a password?  Only with a person at the terminal."""
    return sys.stdin.isatty()


def watch_connection(c: Any, lost: Callable[[], None]) -> None:
    """Call ``lost()`` if the bus connection itself goes away while waiting."""
    task = asyncio.get_running_loop().create_task(c.wait_disconnected())
    task.add_done_callback(lambda t: lost())
    _keep.add(task)


_keep: set = set()


async def client(args: argparse.Namespace):
    from nvkmd.clients.manager import connect
    return await connect(args.bus)


# -- the commands ---------------------------------------------------------------

async def cmd_status(args: argparse.Namespace) -> int:
    async with await client(args) as c:
        s = await c.status()
    if args.json:
        print_json(s.to_dict())
    else:
        from nvkmd.cli.render import status_text
        _out(status_text(s, glyphs()))
    return EXIT_OK


async def cmd_kernels(args: argparse.Namespace) -> int:
    async with await client(args) as c:
        ks = await c.kernels()
    if args.json:
        print_json([k.to_dict() for k in ks])
    else:
        from nvkmd.cli.render import kernels_text
        _out(kernels_text(ks, glyphs()))
    return EXIT_OK


def setup_jobs(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--finished", type=int, default=20, metavar="N",
                   help="also show the N most recently finished jobs (default 20)")


async def cmd_jobs(args: argparse.Namespace) -> int:
    async with await client(args) as c:
        js = await c.jobs(args.finished)
    if args.json:
        print_json([j.to_dict() for j in js])
    else:
        from nvkmd.cli.render import jobs_text
        _out(jobs_text(js))
    return EXIT_OK


def setup_build(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", "--kernel", default="", metavar="K",
                   help="only this kernel release (default: every kernel that needs it)")
    p.add_argument("-f", "--force", action="store_true", help="rebuild even if the module is current")
    p.add_argument("-w", "--wait", action="store_true",
                   help="wait for the builds to finish, with a progress bar on a terminal")


async def cmd_build(args: argparse.Namespace) -> int:
    from nvkmd.cli.render import finished_text, progress_bar
    from nvkmd.model import JobFinished, JobProgress
    finished: dict[int, JobFinished] = {}
    progress: dict[int, JobProgress] = {}
    changed = asyncio.Event()
    gone: list[str] = []

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
                _out("".join(f"queued job {i}\n" for i in ids))
            else:
                _out("nothing to build: every module is current\n")
            return EXIT_OK
        # A job that ended before we subscribed is in the history.
        for j in await c.jobs(1000):
            if j.id in ids and j.id not in finished and j.state in ("succeeded", "failed", "cancelled"):
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
                        _out("\r\x1b[K")
                    if not args.json:
                        _out(finished_text(f.kernel, f.result, f.cause, f.hint, f.log))
            if len(shown) == len(ids):
                break
            if gone:
                raise NvkmdError(ErrorCode.UNREACHABLE, "nvkmd stopped before the build finished")
            running = [progress[i] for i in ids if i in progress and i not in finished]
            if tty and running:
                p = running[-1]
                _out("\r\x1b[K" + progress_bar(p.kernel, p.phase, p.percent, g))
            changed.clear()
            await changed.wait()
    results = [finished[i] for i in ids]
    if args.json:
        print_json([dataclasses.asdict(f) for f in results])
    if not ids and not args.json:
        _out("nothing to build: every module is current\n")
    return EXIT_OK if all(f.result in ("success", "up-to-date") for f in results) else EXIT_FAILED


def setup_cancel(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", type=int, help="the job id (see `nvkmctl jobs`)")


async def cmd_cancel(args: argparse.Namespace) -> int:
    async with await client(args) as c:
        await c.cancel(args.id, interactive=interactive())
    if args.json:
        print_json({"cancelled": args.id})
    else:
        _out(f"cancelled job {args.id}\n")
    return EXIT_OK


def setup_logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", "--kernel", default="", metavar="K", help="the latest log of this kernel")
    p.add_argument("-j", "--job", type=int, default=0, metavar="ID", help="the log of this job")
    p.add_argument("-t", "--tail", type=int, default=50, metavar="N",
                   help="show the last N lines (default 50)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing the log as it grows, until its build ends")


async def cmd_logs(args: argparse.Namespace) -> int:
    if args.tail < 0:
        raise NvkmdError(ErrorCode.INVALID_ARGUMENT, f"--tail must not be negative: {args.tail}")
    async with await client(args) as c:
        if not args.follow:
            path, lines = await c.get_log(args.job, args.kernel, args.tail)
            if args.json:
                print_json({"path": path, "lines": lines})
            else:
                print(f"==> {path} <==", file=sys.stderr)
                _out("".join(line + "\n" for line in lines))
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


async def _follow(path: str, tail: int, ended: asyncio.Event, as_json: bool) -> int:
    """Print the last ``tail`` lines of ``path``, then what is appended,
    until the build writing it ends (its "# result:" trailer, or the
    daemon's JobFinished for this log)."""
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
            _out(json.dumps({"line": line.rstrip("\n")}) + "\n" if as_json else line)
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
    p.add_argument("--keep", type=int, default=2, metavar="N",
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
        _out(cleanup_text(paths, args.keep, args.execute, glyphs()))
    return EXIT_OK


async def cmd_rescan(args: argparse.Namespace) -> int:
    async with await client(args) as c:
        await c.rescan(interactive=interactive())
    if args.json:
        print_json({"rescanned": True})
    else:
        _out("rescan done\n")
    return EXIT_OK


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
    # Files only when the module is there; D-Bus only when it is not (readycheck.py).
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
    p.add_argument("--bus", default="system", metavar="system|session|ADDRESS",
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
        return 130
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
