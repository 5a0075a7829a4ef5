"""The import budget of ``nvkmctl wait-ready``'s healthy path (issue 16, P6).

nvkmd-ready.service runs it on every boot before the display manager; on a
healthy system its cost is Python's start plus what it imports.  The real
console script runs against a real healthy install (``nvkmd --once`` built
the tiny tree against the machine's real headers), and the modules loaded
when it exits are looked for the ones the fast path must never load.  The
waiting path, traced the same way, shows them, so the check can fail.  No
timing is asserted: the machine is shared (``python -X importtime`` is the
tool to see where the time goes; it does not list modules loaded through
importlib, hence sys.modules here).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, TINY, need_kernels, run_nvkmd
from nvkmd.cli import readyargs
from nvkmd.cli.main import parser
from nvkmd.errors import EXIT_OK, EXIT_UNREACHABLE

NVKMCTL = Path(sys.executable).parent / "nvkmctl"
# Heavy, and needed only to talk to the daemon or to log: never on a healthy boot.
FORBIDDEN = ("asyncio", "structlog", "dbus_fast", "sqlite3", "_sqlite3", "sdnotify", "tenacity",
             "pyinotify", "argparse", "nvkmd.cli.daemoncmds", "nvkmd.cli.localcmds",
             "nvkmd.clients", "nvkmd.daemon", "nvkmd.bus",
             # unpacking and running tools: not for reading a few files
             "tarfile", "subprocess", "shutil",
             # OpenSSL's libcrypto (and its openssl.cnf): the builtin sha256 fingerprints the tree
             "_hashlib", "ssl")


def traced(root: Path, *args: str, kernel: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the installed nvkmctl script itself; the modules loaded at its exit
    (a name refused with None in sys.modules was not loaded)."""
    gone = f"unix:path={tmp_path}/no-such-bus"
    env = {**os.environ, "NVKMD_RUNNING_KERNEL": kernel,
           "DBUS_SYSTEM_BUS_ADDRESS": gone, "DBUS_SESSION_BUS_ADDRESS": gone}
    env.pop("NOTIFY_SOCKET", None)
    out = tmp_path / "modules"
    argv = [str(NVKMCTL), "--root", str(root), "--bus", gone, "wait-ready", *args]
    probe = (f"import atexit, sys; atexit.register(lambda: open({str(out)!r}, 'w').write("
             f"'\\n'.join(sorted(m for m, v in sys.modules.items() if v is not None)))); "
             f"sys.argv = {argv!r}; "
             f"exec(compile(open({str(NVKMCTL)!r}).read(), {str(NVKMCTL)!r}, 'exec'))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                          timeout=120, cwd=REPO, stdin=subprocess.DEVNULL)
    return proc, out.read_text().split("\n") if out.exists() else []


def heavy(mods: list[str]) -> list[str]:
    return sorted({m for m in mods for f in FORBIDDEN if m == f or m.startswith(f + ".")})


def test_healthy_fast_path_imports_only_what_it_needs(root, tmp_path):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    assert run_nvkmd("--once", "--root", str(root.path)).returncode == 0
    proc, mods = traced(root.path, "--timeout", "5", kernel=k, tmp_path=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout == f"nvkmd-ready: {k} has NVIDIA modules 9.9.1 (git source)\n"
    assert {"nvkmd.cli.main", "nvkmd.cli.waitready", "nvkmd.system.installed"} <= set(mods), mods
    assert heavy(mods) == [], heavy(mods)
    # --json is a line people and scripts use: the same budget.
    proc, mods = traced(root.path, "--json", kernel=k, tmp_path=tmp_path)
    assert proc.returncode == EXIT_OK and heavy(mods) == [], (proc.stdout, heavy(mods))


def test_healthy_debian_source_is_read_without_unpacking_code(root, tmp_path):
    """Debian's nvidia-open-kernel.tar.xz (the usual install): the copy the
    daemon unpacked is read as it is, with none of the unpacking code."""
    import shutil
    import tarfile
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    staging = tmp_path / "staging"
    shutil.copytree(TINY / "kernel-open", staging / "modules/nvidia-open-kernel")
    with tarfile.open(root.path / "usr/src/nvidia-open-kernel.tar.xz", "w:xz") as tf:
        tf.add(staging / "modules", arcname="modules")
    root.configure("")
    assert run_nvkmd("--once", "--root", str(root.path)).returncode == 0
    proc, mods = traced(root.path, kernel=k, tmp_path=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout == f"nvkmd-ready: {k} has NVIDIA modules 9.9.1 (debian source)\n"
    assert heavy(mods) == [] and "nvkmd.system.unpack" not in mods, heavy(mods)


def test_waiting_path_trace_shows_the_heavy_modules(root, tmp_path):
    """A kernel without its module goes to the daemon: the same trace then
    shows asyncio and the D-Bus client (so the check above can fail)."""
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    proc, mods = traced(root.path, "--timeout", "2", kernel=k, tmp_path=tmp_path)
    assert proc.returncode == EXIT_UNREACHABLE, proc.stdout + proc.stderr[-3000:]
    assert {"asyncio", "dbus_fast"} <= set(heavy(mods)), heavy(mods)


# -- the fast reading of the command line is argparse's reading ----------------------

# The lines a boot or a person writes: read fast, exactly as argparse reads them.
FAST = [
    ["wait-ready"], ["--root", "/r", "wait-ready"], ["--root=/r", "--bus=session", "wait-ready"],
    ["--bus", "unix:path=/run/x", "wait-ready", "-k", "6.1.0-9-amd64", "-t", "30"],
    ["wait-ready", "--kernel=6.1.0-9-amd64", "--timeout=2.5", "--json"],
    ["wait-ready", "--json", "--timeout", "600", "--kernel", "6.1.0-9-amd64"],
    ["wait-ready", "-t", "5", "-t", "7"], ["wait-ready", "--timeout", "1e3"],
    ["wait-ready", "--timeout", " 5 "], ["--root", "wait-ready", "wait-ready"],
    # status (P5): the same reading, no options of its own
    ["status"], ["status", "--json"], ["--bus", "unix:path=/run/x", "status"],
    ["--root=/r", "--bus=session", "status", "--json"], ["--root", "status", "status"],
]
# Left to argparse: help, abbreviations, errors, odd spellings, other commands.
LEFT = [
    ["wait-ready", "--help"], ["-h"], ["--version"], ["wait-ready", "--time", "5"],
    ["wait-ready", "--timeout", "soon"], ["wait-ready", "--timeout", "-5"], ["wait-ready", "-t"],
    ["wait-ready", "-k=6.1.0-9-amd64"], ["wait-ready", "-k6.1.0-9-amd64"], ["--bus", "nope", "wait-ready"],
    ["wait-ready", "--bus", "system"], ["--json", "wait-ready"], ["wait-ready", "extra"],
    ["wait-ready", "--"], ["wait-ready", "--kernel", ""], [], ["--root", "/r"],
    ["wait-ready", "wait-ready"], ["--ro", "/r", "wait-ready"], ["--root", "/r", "status", "wait-ready"],
    ["status", "--help"], ["status", "-k", "6.1.0-9-amd64"], ["status", "extra"], ["--json", "status"],
    ["status", "--jso"], ["status", "--json=1"], ["kernels"], ["status", "status"],
]


@pytest.mark.parametrize("argv", FAST, ids=" ".join)
def test_fast_reading_is_argparse_reading(argv):
    assert vars(readyargs.parse(argv)) == vars(parser().parse_args(argv))


@pytest.mark.parametrize("argv", LEFT, ids=" ".join)
def test_anything_else_is_left_to_argparse(argv):
    assert readyargs.parse(argv) is None
