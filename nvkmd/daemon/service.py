"""``nvkmd``: the long-running daemon.

Wires the parts together on one asyncio loop: the watcher feeds the core,
the core's events feed sd_notify (and the D-Bus adapter, when there is
one), signals stop or reload.  SIGTERM stops within a few seconds: a
running build is killed and queued again, never left half installed.
SIGHUP reloads the configuration; a bad one is refused and the old one
kept.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import importlib
import importlib.util
import signal

import structlog

from nvkmd import __version__
from nvkmd.config import Config, ConfigError
from nvkmd.daemon.core import Core
from nvkmd.daemon.sdnotifier import Notifier, status_line, watchdog_interval
from nvkmd.daemon.tasks import cancel_tasks
from nvkmd.paths import Paths

log = structlog.get_logger()


def run_daemon(paths: Paths, config: Config, args: argparse.Namespace) -> int:
    # SIGUSR1 writes every thread's stack to stderr (the journal): what a
    # daemon that does not stop, or does not answer, is doing right now.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    return asyncio.run(Daemon(paths, config, args).main())


# The D-Bus adapter is loaded by name: the bus stage imports the daemon's
# core, never the other way round, and a system without dbus-fast still
# runs with --bus none.  Only a missing package means "no adapter": a
# broken one is an error.
BUS_ADAPTER = "nvkmd.bus"


def _bus_adapter():
    """The adapter module (``serve``, ``ShutdownInhibitor``), or None."""
    if importlib.util.find_spec(BUS_ADAPTER) is None:
        return None
    return importlib.import_module(BUS_ADAPTER)


class Daemon:
    def __init__(self, paths: Paths, config: Config, args: argparse.Namespace):
        self.paths = paths
        self.config = config
        self.args = args
        self.core = Core(paths, config)
        self.notifier = Notifier()
        self.stop_requested = asyncio.Event()
        self.exit_code = 0

    def _reload(self) -> None:
        try:
            config = Config.load(self.paths.config_file, required=bool(self.args.config))
        except ConfigError as e:
            log.error("configuration reload refused; keeping the old one", reason=e.message)
            return
        self.config = config
        self.core.reload(config)

    def _request_stop(self, signame: str) -> None:
        if not self.stop_requested.is_set():
            log.info("stopping", signal=signame)
            self.stop_requested.set()

    def _on_event(self, event) -> None:
        # Every event can change the line (counts, phase, percent); the
        # notifier sends it only when it differs from the last one.
        self.notifier.status(status_line(**self.core.summary()))

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        for sig, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
            loop.add_signal_handler(sig, self._request_stop, name)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        log.info("starting", version=__version__, root=str(self.paths.root),
                 state_dir=str(self.paths.state_dir), log_dir=str(self.paths.log_dir),
                 bus=self.args.bus)

        from nvkmd.watch.watcher import Watcher  # the one place pyinotify is loaded
        watcher = Watcher(loop, self.core.intake.on_watch_event)
        self.core.intake.watcher = watcher
        tasks: list[asyncio.Task] = []
        inhibitor = None
        stopper = asyncio.create_task(self.stop_requested.wait())
        try:
            # The first scan can take a while (unpacking a source tarball):
            # a SIGTERM meanwhile must still stop us promptly.
            starting = asyncio.create_task(self.core.start())
            await asyncio.wait([starting, stopper], return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
            else:
                starting.result()
                self.core.subscribe(self._on_event)
                # READY=1 only once the bus name is ours: whatever systemd
                # starts after us (the ready check) must find us on the bus.
                serving = asyncio.Event()
                bus = self._start_bus(serving.set)
                if bus is not None:
                    tasks.append(bus)
                    waiter = asyncio.create_task(serving.wait())
                    await asyncio.wait([bus, waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                if bus is None or serving.is_set():
                    line = status_line(**self.core.summary())
                    self.notifier.ready(line)
                    log.info("ready", status=line)
                    inhibitor = await self._start_inhibitor()
                    tasks = self.core.run() + tasks
                    interval = watchdog_interval()
                    if interval:
                        tasks.append(asyncio.create_task(self.notifier.watchdog_loop(interval),
                                                         name="nvkmd-watchdog"))
                done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if t is stopper:
                        continue
                    # A core task or the bus ended on its own: that is a failure.
                    exc = t.exception() if not t.cancelled() else None
                    log.error("daemon task ended unexpectedly", task=t.get_name(),
                              error=repr(exc) if exc else "returned")
                    self.exit_code = 1
        except Exception as e:
            log.exception("fatal error", error=str(e))
            self.exit_code = 1
        finally:
            stopper.cancel()
            self.notifier.stopping()
            await self.core.stop()
            await cancel_tasks(tasks)
            watcher.close()
            if inhibitor is not None:
                inhibitor.close()
        log.info("stopped", exit_code=self.exit_code)
        return self.exit_code

    async def _start_inhibitor(self):
        """logind's delay lock on shutdown while modules are swapped in
        (nvkmd.bus.logind, on the daemon's bus); None without one."""
        adapter = None if self.args.bus == "none" else _bus_adapter()
        if adapter is None:
            log.info("no D-Bus: module installs will not delay shutdown")
            return None
        inhibitor = adapter.ShutdownInhibitor(self.args.bus, asyncio.get_running_loop())
        try:
            # A bus that does not answer must not hold the daemon up.
            async with asyncio.timeout(10):
                found = await inhibitor.start()
        except TimeoutError:
            log.info("no logind: module installs will not delay shutdown",
                     reason="the bus did not answer within 10s")
            found = False
        if not found:
            inhibitor.close()
            return None
        self.core.critical_hooks.append(inhibitor)
        self.core.subscribe(inhibitor.on_event)      # the next boot's build, by name
        return inhibitor

    def _start_bus(self, on_serving) -> asyncio.Task | None:
        if self.args.bus == "none":
            return None
        adapter = _bus_adapter()
        if adapter is None:
            log.warning("no D-Bus adapter installed; running without a bus", bus=self.args.bus)
            return None
        return asyncio.create_task(adapter.serve(self.core, self.args.bus, on_serving), name="nvkmd-bus")
