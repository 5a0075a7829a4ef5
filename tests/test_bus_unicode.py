"""Non-ASCII strings on the bus, both ways, with whatever dbus-fast runs.

dbus-fast 1.84 (Debian 12) writes a string's length in characters, so a
non-ASCII string makes its message malformed and dbus-daemon drops the
sender.  A correct client (busctl) sending a non-ASCII kernel name used to
take the daemon off the bus that way, when it echoed the name in its
error; a compiler's ‘quotes’ in a build log did the same for GetLog."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dbus_helpers import BusDaemon, PrivateBus, owner
from helpers import TestRoot as Root, need_kernels
from nvkmd import api

LOG_LINE = "nv.c:1:2: error: ‘nv_foo’ undeclared (first use in this function) – voilà"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    k = need_kernels(1)[-1]
    base = tmp_path_factory.mktemp("unicode")
    root = Root(base / "root")
    root.add_tiny_source()
    root.add_kernel(k, headers=False)
    logs = root.path / "var/log/nvkmd" / k
    logs.mkdir(parents=True)
    (logs / "build-20261201-000000.log").write_text(f"make: start\n{LOG_LINE}\n")
    (logs / "latest.log").symlink_to("build-20261201-000000.log")
    bus = PrivateBus()
    d = BusDaemon(root, base / "nvkmd.log", bus, env={"NVKMD_RUNNING_KERNEL": k}).start()
    try:
        d.wait_on_bus(120)
        yield bus, d, k
    finally:
        try:
            d.stop(30)
        finally:
            bus.stop()
            print(d.log_text()[-5000:])


def busctl(bus: PrivateBus, member: str, signature: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["busctl", f"--address={bus.address}", "--timeout=30", "call",
                           api.BUS_NAME, api.OBJECT_PATH, api.INTERFACE, member, signature, *args],
                          capture_output=True, text=True, timeout=60)


def test_a_non_ascii_kernel_name_is_refused_and_the_daemon_stays_on_the_bus(served):
    bus, d, k = served
    daemon_name = owner(bus.address)
    for name in ("ÉVIL", "EVIL\u202e", "Ω" * 200):
        r = busctl(bus, "Build", "sb", name, "false")
        assert r.returncode == 1
        assert "not a kernel release" in r.stderr, r.stderr
        assert owner(bus.address) == daemon_name, f"the daemon left the bus after {name!r}"
    assert d.alive()
    assert busctl(bus, "ListKernels", "").returncode == 0


def test_a_non_ascii_log_line_reaches_busctl_and_nvkmctl(served):
    bus, d, k = served
    r = busctl(bus, "GetLog", "tsu", "0", k, "5")
    assert r.returncode == 0, r.stderr
    # busctl prints UTF-8 as octal escapes and a backslash doubled: the
    # exact quotes where dbus-fast marshals correctly, nvkmd's \u2018 escape
    # where it cannot (dbusconn.MARSHALS_CHARACTERS).
    exact, escaped = "\\342\\200\\230nv_foo", "\\\\u2018nv_foo"
    assert exact in r.stdout or escaped in r.stdout, r.stdout
    cli = subprocess.run([sys.executable, "-m", "nvkmd.cli", "--bus", bus.address, "logs", "-k", k,
                          "-t", "5"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert "nv_foo" in cli.stdout and "voil" in cli.stdout
    assert owner(bus.address)


def test_nvkmctl_with_a_non_ascii_kernel_is_a_usage_error_not_a_lost_connection(served):
    bus, d, k = served
    cli = subprocess.run([sys.executable, "-m", "nvkmd.cli", "--bus", bus.address, "build", "-k",
                          "ÉVIL"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2, cli.stderr
    assert "not a kernel release" in cli.stderr or "kernel" in cli.stderr
    assert owner(bus.address)
