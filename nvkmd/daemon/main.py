"""``nvkmd``: the daemon, and ``nvkmd --once`` for a single pass."""

from __future__ import annotations

import argparse
import os
import sys

from nvkmd import __version__
from nvkmd.api import parse_bus
from nvkmd.config import Config, ConfigError
from nvkmd.daemon import footprint
from nvkmd.errors import EXIT_CONFIG, ErrorCode, NvkmdError
from nvkmd.paths import Paths
from nvkmd.system import trust


def _bus_arg(value: str) -> str:
    """Checked while the arguments are parsed, before any start-up work."""
    if value == "none":
        return value
    try:
        parse_bus(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nvkmd", description="Keep NVIDIA's open kernel modules "
                                "built for every installed kernel.")
    p.add_argument("--root", default="/", help="root of the system to manage (default /)")
    p.add_argument("--config", help="configuration file (default <root>/etc/nvkmd/nvkmd.toml)")
    p.add_argument("--bus", default="system", type=_bus_arg,
                   help="D-Bus to serve on: system, session, none or an address (default system)")
    p.add_argument("--once", action="store_true",
                   help="build every kernel whose module is missing or stale, then exit")
    p.add_argument("--kernel", help="with --once: only this kernel release")
    p.add_argument("--force", action="store_true", help="with --once: rebuild even if current")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--version", action="version", version=f"nvkmd {__version__}")
    return p.parse_args(argv)


def load(args: argparse.Namespace) -> tuple[Paths, Config]:
    paths, config = Paths.load(args.root, args.config, required=bool(args.config))
    # Before anything is read from or written to them: nvkmd installs what
    # it finds in the cache and trusts its queue (trust.py).
    trust.check_dirs(paths)
    return paths, config


def main(argv: list[str] | None = None) -> int:
    footprint.refuse_unused_modules()   # before asyncio, which loads ssl
    footprint.tune_malloc()             # before any thread
    import asyncio
    args = parse_args(argv)
    from nvkmd import logsetup
    logsetup.setup(args.verbose)
    try:
        paths, config = load(args)
    except ConfigError as e:
        logsetup.fatal(str(e))      # err in the journal: `journalctl -p err` names the key
        return EXIT_CONFIG
    except NvkmdError as e:         # trust.check_dirs: a state, cache or log dir not root's alone
        logsetup.fatal(str(e))
        return EXIT_CONFIG if e.code is ErrorCode.CONFIG else 1
    try:
        if args.once:
            from nvkmd.daemon.once import run_once
            return asyncio.run(run_once(paths, config, args.kernel, args.force))
        from nvkmd.daemon import instance
        from nvkmd.daemon.service import run_daemon
        try:
            lock = instance.hold(paths)      # before anything else the daemon does
        except instance.AlreadyRunning as e:
            logsetup.fatal(e.message)
            return 1
        try:
            return run_daemon(paths, config, args)
        finally:
            os.close(lock)
    except NvkmdError as e:
        logsetup.fatal(str(e))
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:          # a crash: still err in the journal, with the traceback
        logsetup.fatal(f"crashed: {type(e).__name__}: {e}", exc_info=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
