"""READY=1 means "on the bus": systemd starts the ready check after the
daemon's READY, and that check must find the daemon's name owned."""

from __future__ import annotations

from daemon_helpers import NotifySocket
from dbus_helpers import owner
from helpers import wait_for


def test_ready_is_sent_only_once_the_bus_name_is_owned(root, tmp_path, bus, bus_daemon):
    root.add_tiny_source()
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        d = bus_daemon(root, bus, env={"NOTIFY_SOCKET": str(sock.path)}, wait=False)
        wait_for(lambda: sock.assignments("READY"), 60, "READY=1")
        assert owner(bus.address), "READY=1 arrived but nobody owns io.github.nvkmd"
        # The order the daemon did them in: owned the name, then told systemd.
        text = d.log_text()
        assert 0 <= text.index("event='serving'") < text.index("event='ready'"), text
        assert d.stop() == 0
    finally:
        sock.close()
