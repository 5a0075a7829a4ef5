"""Access control: an unprivileged client (setpriv to nobody) is refused every
privileged method with io.github.nvkmd.Manager1.Error.AccessDenied and can
still read everything, both with polkit absent (only root may act) and with
the real polkitd deciding."""

from __future__ import annotations

import json

import pytest

from dbus_helpers import BusDaemon, Polkitd, PrivateBus, as_nobody, raw_call, run
from helpers import TestRoot as Root
from helpers import need_kernels, wait_for
from nvkmd import api
from nvkmd.errors import ErrorCode

DENIED = api.error_name(ErrorCode.ACCESS_DENIED)

# (member, signature, args) for every privileged call, and read-only ones.
PRIVILEGED = [
    ("Build", "sb", ["", False]),
    ("Build", "sb", ["KERNEL", True]),
    ("Cancel", "t", [1]),
    ("Rescan", "", []),
    ("Cleanup", "ub", [0, True]),
]
READ_ONLY = [
    ("GetStatus", "", []),
    ("ListKernels", "", []),
    ("ListJobs", "u", [10]),
    ("GetLog", "tsu", [0, "", 5]),
    ("Cleanup", "ub", [0, False]),
]

# Runs as nobody: one raw call per line of argv[2] (JSON), flags from argv[3];
# prints [member, "ok" | error name, message] for each.
CALLER = r"""
import asyncio, json, sys
from dbus_fast import Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus
async def main(address, calls, flags):
    bus = await MessageBus(bus_address=address).connect()
    out = []
    for iface, path, member, sig, body in calls:
        r = await bus.call(Message(destination="io.github.nvkmd", path=path, interface=iface,
                                   member=member, signature=sig, body=body, flags=MessageFlag(flags)))
        out.append([member, "ok" if r.message_type is MessageType.METHOD_RETURN else r.error_name,
                    r.body[0] if r.message_type is MessageType.ERROR and r.body else ""])
    print(json.dumps(out))
asyncio.run(main(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])))
"""


def call_as_nobody(address: str, calls: list, kernel: str = "", flags: int = 0) -> list:
    wire = [[api.INTERFACE, api.OBJECT_PATH, m, sig, [kernel if a == "KERNEL" else a for a in args]]
            for m, sig, args in calls]
    r = as_nobody(["-c", CALLER, address, json.dumps(wire), str(flags)])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def read_as_nobody(address: str) -> list:
    calls = [["org.freedesktop.DBus.Properties", api.OBJECT_PATH, "GetAll", "s", [api.INTERFACE]],
             ["org.freedesktop.DBus.Properties", api.OBJECT_PATH, "Get", "ss", [api.INTERFACE, "State"]],
             ["org.freedesktop.DBus.Introspectable", api.OBJECT_PATH, "Introspect", "", []],
             ["org.freedesktop.DBus.Peer", api.OBJECT_PATH, "Ping", "", []]]
    calls += [[api.INTERFACE, api.OBJECT_PATH, m, sig, args] for m, sig, args in READ_ONLY]
    r = as_nobody(["-c", CALLER, address, json.dumps(calls), "0"])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def setup(tmp_path):
    """A root with the tiny source, one kernel with headers whose module is
    built, and a leftover module dir of a removed kernel (a cleanup target)."""
    made = []

    def make(polkit: bool, rules: dict[str, str] | None = None):
        k = need_kernels(1)[-1]
        root = Root(tmp_path / f"root{len(made)}")
        root.path.chmod(0o755)
        root.add_tiny_source()
        root.configure(root.config_text + "[daemon]\ndebounce_s = 0.2\n")
        root.add_kernel(k)
        gone = root.modules / "5.10.0-0-gone" / "updates" / "nvkmd"
        gone.mkdir(parents=True)
        (gone / "nvidia.ko").write_bytes(b"old")
        bus = PrivateBus(polkit=polkit)
        pk = Polkitd(bus, rules) if polkit else None
        d = BusDaemon(root, tmp_path / f"nvkmd{len(made)}.log", bus, env={"NVKMD_RUNNING_KERNEL": k})
        made.append((bus, pk, d))
        d.start()
        d.wait_on_bus()
        wait_for(lambda: all(x.state == "ready" for x in run(bus.address, lambda c: c.kernels())),
                 120, "the kernel's module to be built")
        return root, bus, d, k, gone
    yield make
    for bus, pk, d in made:
        if d.alive():
            d.stop()
        if pk:
            pk.stop()
            print("===== polkitd log")
            print(pk.log.read_text())
        bus.stop()
        print("===== daemon log")
        print(d.log_text())


def assert_refused_without_effect(address: str, kernel: str, gone, flags: int = 0) -> list:
    jobs_before = run(address, lambda c: c.jobs(100))
    results = call_as_nobody(address, PRIVILEGED, kernel, flags)
    assert [r[0] for r in results] == [m for m, _, _ in PRIVILEGED]
    for member, name, message in results:
        assert name == DENIED, (member, name, message)
        assert message.startswith("not authorized to "), message
    assert run(address, lambda c: c.jobs(100)) == jobs_before, "a refused call queued or changed a job"
    assert gone.exists(), "a refused cleanup removed something"
    return results


def assert_reads_allowed(address: str) -> None:
    results = read_as_nobody(address)
    assert all(r[1] == "ok" for r in results), results


def test_without_polkit_only_root_may_act(setup):
    root, bus, d, k, gone = setup(polkit=False)
    results = assert_refused_without_effect(bus.address, k, gone)
    assert all("polkit is not available, so only root may do this" in r[2] for r in results)
    assert_reads_allowed(bus.address)
    # nvkmctl as nobody: refused with exit status 4, reading works
    r = as_nobody(["-m", "nvkmd.cli", "--bus", bus.address, "build", "--kernel", k])
    assert r.returncode == 4 and r.stderr.count("\n") == 1, r
    assert r.stderr.startswith("nvkmctl: not authorized to build modules")
    r = as_nobody(["-m", "nvkmd.cli", "--bus", bus.address, "status"])
    assert r.returncode == 0 and k in r.stdout, r
    # root passes the same checks without polkit
    assert raw_call(bus.address, "Rescan", "", []).error_name is None
    assert d.alive()


def test_real_polkitd_refuses_nobody_every_privileged_method(setup):
    root, bus, d, k, gone = setup(polkit=True)
    results = assert_refused_without_effect(bus.address, k, gone)
    # polkit answered (not the fallback): an administrator's password is needed
    assert all("authentication is required" in r[2] for r in results), results
    # asking for interactive authorization changes nothing without an agent
    assert_refused_without_effect(bus.address, k, gone, flags=4)
    assert_reads_allowed(bus.address)
    r = as_nobody(["-m", "nvkmd.cli", "--bus", bus.address, "cleanup", "--execute"])
    assert r.returncode == 4 and "authentication is required" in r.stderr, r
    assert raw_call(bus.address, "Cleanup", "ub", [2, True]).error_name is None   # root
    assert not gone.exists()
    assert d.alive()


def test_real_polkitd_decides_a_local_rule_can_grant_rescan(setup):
    rule = ('polkit.addRule(function(action, subject) {\n'
            '  if (action.id == "io.github.nvkmd.rescan" && subject.user == "nobody")\n'
            '    return polkit.Result.YES;\n'
            '});\n')
    root, bus, d, k, gone = setup(polkit=True, rules={"50-nvkmd-test.rules": rule})
    granted = call_as_nobody(bus.address, [("Rescan", "", [])])
    assert granted == [["Rescan", "ok", ""]]
    refused = call_as_nobody(bus.address, [("Build", "sb", ["", True])])
    assert refused[0][1] == DENIED
    assert "full rescan" in d.log_text() and "authorized=True" in d.log_text()
