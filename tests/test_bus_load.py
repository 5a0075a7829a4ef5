"""5000 concurrent status calls from one client leave the daemon on the bus
and answering.  No timing is asserted: only that every call is answered
and the daemon survives."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from dbus_helpers import owner, run
from helpers import TestRoot as Root
from helpers import need_kernels
from nvkmd.errors import ErrorCode, NvkmdError

N = 5000


@pytest.fixture
def loaded(tmp_path, bus_factory, bus_daemon):
    made = []

    def make(limits):
        k = need_kernels(1)[-1]
        root = Root(tmp_path / f"root{len(made)}")
        root.add_tiny_source()
        root.add_kernel(k, headers=False)
        root.add_kernel("6.0.0-1-fake", headers=False)
        bus = bus_factory(limits=limits)
        d = bus_daemon(root, bus, env={"NVKMD_RUNNING_KERNEL": k})
        made.append(d)
        return bus, d
    yield make
    # Surviving the load includes stopping cleanly afterwards.
    for d in made:
        if d.alive():
            assert d.stop() == 0


async def burst(c) -> Counter:
    results = await asyncio.gather(*(c.status() for _ in range(N)), return_exceptions=True)
    out: Counter = Counter()
    for r in results:
        if isinstance(r, NvkmdError):
            out[r.code.value] += 1
        elif isinstance(r, BaseException):
            out[f"{type(r).__name__}: {r}"] += 1
        else:
            assert len(r.kernels) == 2 and r.version
            out["ok"] += 1
    return out


def test_5000_concurrent_status_calls_all_answered(loaded):
    # Limits raised so that every call reaches the daemon (the most load).
    bus, d = loaded({"max_replies_per_connection": 2 * N})
    counts = run(bus.address, burst, timeout=600)
    assert counts == Counter({"ok": N}), counts
    assert d.alive() and owner(bus.address)
    assert run(bus.address, lambda c: c.status()).version
    assert run(bus.address, lambda c: c.properties())["Version"]


def test_5000_concurrent_status_calls_with_the_system_bus_limits(loaded):
    # The system bus's own default limits: it refuses what exceeds its
    # pending-reply limit itself (LimitsExceeded, i.e. Busy); the daemon
    # answers everything that reaches it and stays.
    bus, d = loaded(None)
    counts = run(bus.address, burst, timeout=600)
    assert set(counts) <= {"ok", ErrorCode.BUSY.value}, counts
    assert counts["ok"] >= 100 and sum(counts.values()) == N, counts
    assert d.alive() and owner(bus.address)
    assert run(bus.address, lambda c: c.status()).version
