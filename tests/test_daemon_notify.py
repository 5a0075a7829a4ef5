"""sd_notify on a real NOTIFY_SOCKET datagram socket: READY after the first
scan, STATUS lines while idle and building, WATCHDOG pings, STOPPING."""

from __future__ import annotations

import re

from daemon_helpers import NotifySocket
from helpers import need_kernels, wait_for


def test_ready_status_watchdog_and_stopping(root, nvkmd_daemon, tmp_path):
    k = need_kernels(1)[-1]
    root.add_tiny_source()
    root.configure(root.config_text + "[daemon]\ndebounce_s = 0.2\n")
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        # A small WATCHDOG_USEC: pings every 0.15 s.
        d = nvkmd_daemon(root, env={"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "300000"})
        wait_for(lambda: sock.assignments("READY"), 60, "READY=1")
        assert sock.assignments("READY") == ["1"]
        statuses = sock.assignments("STATUS")
        assert statuses[0] == "idle: 0 kernels ready"       # the first scan found no kernel
        d.wait_ready()

        root.add_kernel(k)
        wait_for(lambda: "idle: 1 kernel ready" in sock.assignments("STATUS"), 120,
                 "STATUS=idle: 1 kernel ready")
        statuses = sock.assignments("STATUS")
        building = [s for s in statuses if s.startswith("building ")]
        assert building, statuses
        for s in building:
            assert re.fullmatch(rf"building {re.escape(k)}: (prepare|conftest|compile|link|install|done) "
                                r"\d{1,3}%", s), s
        assert any(re.search(r": compile \d+%", s) for s in building), building
        assert all(s.isascii() and "\n" not in s for s in statuses)

        pings = len(sock.assignments("WATCHDOG"))
        wait_for(lambda: len(sock.assignments("WATCHDOG")) >= pings + 3, 30, "three more pings")
        assert set(sock.assignments("WATCHDOG")) == {"1"}

        assert sock.assignments("STOPPING") == []
        assert d.stop() == 0
        wait_for(lambda: sock.assignments("STOPPING"), 10, "STOPPING=1")
        assert sock.assignments("STOPPING") == ["1"]
        # Only the daemon itself spoke: make, gcc and depmod never inherit the socket.
        assert sock.senders() == {d.pid}
    finally:
        sock.close()
