from __future__ import annotations

import pytest

from helpers import TestRoot

# Every fixture is registered here, once; they live beside their helpers:
# nvkmd_daemon (a real daemon process); bus_factory, bus, bus_daemon (a
# private bus and the daemon on it); desktop, agent_factory (a desktop
# session and nvkmd-agent); logind_bus (the real logind on a private bus).
pytest_plugins = ["daemon_helpers", "dbus_helpers", "desktop_helpers", "logind_helpers"]


@pytest.fixture
def root(tmp_path, monkeypatch) -> TestRoot:
    """A scratch root; the running kernel defaults to one that is not in it."""
    r = tmp_path / "root"
    r.mkdir()
    r.chmod(0o755)
    monkeypatch.setenv("NVKMD_RUNNING_KERNEL", "0.0.0-not-installed")
    return TestRoot(r)
