"""nvkmctl checks its arguments before it contacts the daemon (issue 12):
a malformed one is exit 2 even with no daemon, and a closed stdout is a
clean error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import REPO

NOWHERE = "unix:path=/nonexistent/nvkmd-test-bus"


def nvkmctl(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nvkmd.cli", "--bus", NOWHERE, *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60,
                          stdin=subprocess.DEVNULL, **kw)


@pytest.mark.parametrize("args,message", [
    (("build", "-k", "../etc"), "not a kernel release: '../etc'"),
    (("logs", "-k", "a/b"), "not a kernel release"),
    (("logs", "-t", "-5"), "expected 0..100000, got -5"),
    (("logs", "-t", "100001"), "expected 0..100000"),
    (("cancel", "0"), "argument id"),
    (("cancel", "x"), "not an integer: 'x'"),
    (("jobs", "-n", "99999999"), "argument -n/--finished"),
    (("cleanup", "--keep", "-1"), "argument --keep"),
    (("source", "sync", "-k", "6.1..x"), "not a kernel release"),
    (("wait-ready", "-k", "../../etc"), "not a kernel release"),
    (("wait-ready", "-t", "nan"), "--timeout must be a positive number of seconds, not nan"),
    (("boot", "try", ""), "not a kernel release"),
])
def test_malformed_arguments_are_exit_2_with_no_daemon(args, message):
    proc = nvkmctl(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_a_malformed_bus_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "nvkmd.cli", "--bus", "bogus", "status"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2 and "--bus must be system, session or a D-Bus address" in proc.stderr


def test_well_formed_arguments_still_reach_for_the_daemon():
    proc = nvkmctl("build", "-k", "6.1.0-47-amd64")
    assert proc.returncode == 3, proc.stderr


def test_status_with_stdout_closed_is_a_clean_error():
    proc = subprocess.run(f"'{sys.executable}' -m nvkmd.cli --bus {NOWHERE} status >&-",
                          shell=True, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 1
    assert "standard output is closed" in proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
