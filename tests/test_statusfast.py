"""The import budget of ``nvkmctl status`` (issue 16, P5).

status is a process that starts, asks the daemon once and exits: its cost
is Python's start plus what it imports, and dbus-fast's package import
(its asyncio and GLib buses) cost more than all the rest.  The real console
script runs against a real daemon on a private bus, and the modules loaded
when it exits are looked for the ones status must never load.  Another
command (``kernels``, through the asyncio client), traced the same way,
shows them, so the check can fail.  No timing is asserted: the machine is
shared (``python -X importtime`` shows where the time goes).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dbus_helpers import serve_root
from helpers import REPO

NVKMCTL = Path(sys.executable).parent / "nvkmctl"
# Heavy, and not needed to ask once and print: the asyncio client and the
# libraries of logging, storage and the daemon's side.
FORBIDDEN = ("asyncio", "dbus_fast.aio", "dbus_fast.glib", "dbus_fast.service", "gi", "ssl",
             "concurrent", "logging", "argparse", "structlog", "sqlite3", "_sqlite3", "sdnotify",
             "tenacity", "pyinotify", "tomllib", "subprocess", "tarfile", "shutil",
             "nvkmd.dbusconn", "nvkmd.clients.manager", "nvkmd.cli.daemoncmds",
             "nvkmd.cli.localcmds", "nvkmd.cli.waiter", "nvkmd.daemon", "nvkmd.bus", "nvkmd.config",
             "nvkmd.paths", "nvkmd.system", "nvkmd.jobs")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serve_root(tmp_path_factory.mktemp("statusfast"), kernels=2) as s:
        yield s


def traced(*args: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run the installed nvkmctl script itself; the modules loaded at its exit."""
    out = tmp_path / "modules"
    out.unlink(missing_ok=True)
    argv = [str(NVKMCTL), *args]
    probe = (f"import atexit, sys; atexit.register(lambda: open({str(out)!r}, 'w').write("
             f"'\\n'.join(sorted(sys.modules)))); sys.argv = {argv!r}; "
             f"exec(compile(open({str(NVKMCTL)!r}).read(), {str(NVKMCTL)!r}, 'exec'))")
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                          timeout=120, cwd=REPO, stdin=subprocess.DEVNULL)
    return proc, set(out.read_text().split("\n")) if out.exists() else set()


def heavy(mods: set[str]) -> list[str]:
    return sorted({m for m in mods for f in FORBIDDEN if m == f or m.startswith(f + ".")})


def test_status_imports_only_what_it_needs(served, tmp_path):
    proc, mods = traced("--bus", served.address, "status", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(k in proc.stdout for k in served.kernels), proc.stdout
    assert {"nvkmd.cli.statuscmd", "nvkmd.clients.quick", "nvkmd.cli.render",
            "dbus_fast.message"} <= mods, sorted(mods)
    # dbus-fast's modules, without its package __init__ (which imports every bus)
    assert "dbus_fast" not in mods
    assert heavy(mods) == [], heavy(mods)
    assert "json" not in mods
    # --json: the same budget, and the daemon's own answer
    proc, mods = traced("--bus", served.address, "status", "--json", tmp_path=tmp_path)
    assert proc.returncode == 0 and heavy(mods) == [], (proc.stderr[-3000:], heavy(mods))
    assert json.loads(proc.stdout) == served.status().to_dict()


def test_another_command_shows_the_heavy_modules(served, tmp_path):
    """kernels goes through argparse and the asyncio client: the same trace
    shows what status must not load (so the check above can fail)."""
    proc, mods = traced("--bus", served.address, "kernels", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"asyncio", "argparse", "nvkmd.dbusconn", "nvkmd.clients.manager"} <= set(heavy(mods))


def test_an_address_the_one_call_cannot_reach_goes_through_the_client(tmp_path):
    """tcp: is not a unix socket: status asks through the asyncio client,
    which says, as for every command, that it cannot connect."""
    address = "tcp:host=127.0.0.1,port=1"
    proc, mods = traced("--bus", address, "status", tmp_path=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith(f"nvkmctl: cannot connect to the bus at {address}: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert {"asyncio", "nvkmd.clients.manager"} <= mods


def test_dbus_fast_imported_after_the_one_call_is_whole(served):
    """The stand-in package exists only while dbus-fast's modules load: a
    later import of dbus_fast in the same process is the real package, and
    its asyncio client gives the same answer."""
    probe = ("import asyncio, json, sys\n"
             "from nvkmd.clients import quick, manager\n"
             "first = quick.status(sys.argv[1]).to_dict()\n"
             "import dbus_fast, dbus_fast.message\n"
             "assert dbus_fast.Message is dbus_fast.message.Message, 'two Message classes'\n"
             "async def ask():\n"
             "    async with await manager.connect(sys.argv[1]) as c:\n"
             "        return (await c.status()).to_dict()\n"
             "print(json.dumps([first, asyncio.run(ask()), hasattr(dbus_fast, 'aio')]))\n")
    r = subprocess.run([sys.executable, "-c", probe, served.address], capture_output=True, text=True,
                       cwd=REPO, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    first, second, whole = json.loads(r.stdout)
    assert whole and first == second == served.status().to_dict()


def test_a_daemon_that_does_not_answer_is_a_timeout(served):
    """The one-call connection waits no longer than its timeout: a stopped
    (SIGSTOP) daemon is UNREACHABLE, as through the asyncio client."""
    from nvkmd.clients import quick
    from nvkmd.errors import ErrorCode, NvkmdError
    served.daemon.signal(signal.SIGSTOP)
    try:
        with pytest.raises(NvkmdError) as e:
            quick.ask(served.address, "GetStatus", timeout=1.0)
    finally:
        served.daemon.signal(signal.SIGCONT)
    assert e.value.code is ErrorCode.UNREACHABLE
    assert str(e.value) == "nvkmd did not answer within 1s"
    assert quick.status(served.address).to_dict() == served.status().to_dict()
