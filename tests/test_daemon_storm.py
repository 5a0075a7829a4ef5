"""An event storm that overflows the daemon's inotify queue: events are lost,
the daemon notices (IN_Q_OVERFLOW), rescans everything, and builds each new
kernel exactly once."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from daemon_helpers import installed_version
from helpers import need_kernels

LIMIT = Path("/proc/sys/fs/inotify/max_queued_events")


def test_overflowing_storm_builds_every_new_kernel_exactly_once(root, bus, bus_daemon):
    k1, k2 = need_kernels(2)[-2:]
    root.add_tiny_source()
    root.configure(root.config_text + "[daemon]\ndebounce_s = 0.2\n")
    original = int(LIMIT.read_text())
    limit = original
    # The queue length is fixed when the daemon creates its inotify instance:
    # lower the limit for that moment only (when the kernel lets us).
    try:
        try:
            LIMIT.write_text("64\n")
            limit = 64
        except OSError:
            pass
        d = bus_daemon(root, bus)
        d.wait_ready()
    finally:
        if limit != original:
            LIMIT.write_text(f"{original}\n")
    assert d.jobs() == []

    # Freeze the daemon so that nothing drains its queue during the storm.
    os.kill(d.pid, signal.SIGSTOP)
    try:
        for i in range(limit + 2000):
            (root.modules / f".storm-{i}").touch()
            if i == limit // 2:
                root.add_kernel(k1)
            if i == limit + 1000:
                root.add_kernel(k2)
        for i in range(0, limit + 2000, 2):
            (root.modules / f".storm-{i}").unlink()
    finally:
        os.kill(d.pid, signal.SIGCONT)

    # That the queue did overflow, and why the daemon rescanned, only its log says.
    d.wait_log(r"event='inotify queue overflowed; events were lost, rescanning everything'")
    d.wait_log(r"event='full rescan'")
    for k in (k1, k2):
        d.wait_job(k, "succeeded")
        assert installed_version(root, k) == "9.9.1"
    assert sorted(j["kernel"] for j in d.jobs()) == sorted([k1, k2])

    # The watches were restored by the rescan: a later change is seen again.
    root.add_kernel("9.9.9-late", headers=False)
    d.wait_kernel("9.9.9-late", "waiting-for-headers")
    assert d.stop() == 0
