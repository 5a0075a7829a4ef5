from __future__ import annotations

import pytest

from helpers import TestRoot

# Fixtures that live beside their helpers: nvkmd_daemon (a real daemon process).
pytest_plugins = ["daemon_helpers"]


@pytest.fixture
def root(tmp_path, monkeypatch) -> TestRoot:
    """A scratch root; the running kernel defaults to one that is not in it."""
    r = tmp_path / "root"
    r.mkdir()
    r.chmod(0o755)
    monkeypatch.setenv("NVKMD_RUNNING_KERNEL", "0.0.0-not-installed")
    return TestRoot(r)
