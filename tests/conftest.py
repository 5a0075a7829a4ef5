from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers import TestRoot

# Every fixture is registered here, once; they live beside their helpers:
# nvkmd_daemon (a real daemon process); bus_factory, bus, bus_daemon (a
# private bus and the daemon on it); desktop, agent_factory (a desktop
# session and nvkmd-agent); logind_bus (the real logind on a private bus);
# root and tiny_tmpfs below.
pytest_plugins = ["daemon_helpers", "dbus_helpers", "desktop_helpers", "logind_helpers"]


@pytest.fixture
def root(tmp_path, monkeypatch) -> TestRoot:
    """A scratch root; the running kernel defaults to one that is not in it."""
    r = tmp_path / "root"
    r.mkdir()
    r.chmod(0o755)
    monkeypatch.setenv("NVKMD_RUNNING_KERNEL", "0.0.0-not-installed")
    return TestRoot(r)


@pytest.fixture
def tiny_tmpfs():
    """Factory: ``tiny_tmpfs(where, size="256k", fill=False)`` mounts a small
    real tmpfs (root's, 0755) at ``where``; ``fill`` fills it as a full disk
    is.  Unmounted at teardown."""
    mounts: list[Path] = []

    def mount(where: Path, size: str = "256k", fill: bool = False) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(where)], check=True)
        mounts.append(where)
        if fill:
            subprocess.run(["dd", "if=/dev/zero", f"of={where}/filler", "bs=4k"],
                           capture_output=True)
        return where
    yield mount
    for m in reversed(mounts):
        subprocess.run(["umount", "-l", str(m)], check=False)
