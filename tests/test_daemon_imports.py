"""The core runs without the daemon's outside world: sd_notify, D-Bus and
inotify are the service's business (daemon/service.py, daemon/sdnotifier.py,
bus/, watch/watcher.py), so the core's modules must not load them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORE = ("nvkmd.daemon.core", "nvkmd.daemon.intake", "nvkmd.daemon.builder",
        "nvkmd.daemon.requests", "nvkmd.daemon.state")
OUTSIDE = ("sdnotify", "nvkmd.daemon.sdnotifier", "dbus_fast", "nvkmd.bus", "nvkmd.dbusconn",
           "pyinotify", "nvkmd.watch.watcher")


def test_the_core_loads_no_sd_notify_dbus_or_inotify():
    probe = (f"import sys\nfor m in {CORE!r}: __import__(m)\n"
             "print(' '.join(sorted(sys.modules)))\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    assert set(CORE) <= loaded
    assert not loaded & set(OUTSIDE), sorted(loaded & set(OUTSIDE))


def test_the_service_finds_the_bus_adapter_by_name():
    """service.py loads nvkmd.bus by name (a system without dbus-fast still
    runs with --bus none); it is there, and serves the core it is given."""
    from nvkmd.daemon import service
    adapter = service._bus_adapter()
    assert adapter is not None and adapter.__name__ == service.BUS_ADAPTER
    assert callable(adapter.serve) and callable(adapter.ShutdownInhibitor)
