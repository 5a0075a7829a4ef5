"""nvkmd-agent's user unit and XDG autostart entry, checked by systemd's and
freedesktop's own tools, and the one-agent-per-session rule."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

UNIT = REPO / "systemd" / "nvkmd-agent.service"
DESKTOP = REPO / "etc" / "nvkmd-agent.desktop"
GENERATOR = Path("/usr/lib/systemd/user-generators/systemd-xdg-autostart-generator")


def unit_values(key: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^{key}=(.*)$", UNIT.read_text(), re.M)]


def user_verify(tmp: Path, with_binary: bool) -> subprocess.CompletedProcess:
    """``systemd-analyze --user verify`` on the unit as shipped.  It insists
    that ExecStart=/usr/bin/nvkmd-agent exists, and --root does not work
    with --user, so the command runs in a private mount namespace where an
    overlay adds the venv's entry point to /usr/bin (the host is untouched)."""
    if not shutil.which("unshare"):
        pytest.fail("unshare (util-linux) is needed")
    runtime = tmp / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    extra = tmp / "extra-bin"
    extra.mkdir(exist_ok=True)
    if with_binary:
        shutil.copy2(Path(sys.executable).parent / "nvkmd-agent", extra / "nvkmd-agent")
    script = (f"mount -t overlay overlay -o lowerdir={extra}:/usr/bin /usr/bin || exit 99; "
              f"exec systemd-analyze --user verify --man=no {UNIT}")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, XDG_RUNTIME_DIR=str(runtime)))
    if proc.returncode == 99:
        pytest.skip(f"this machine cannot mount an overlay in a private namespace (needs "
                    f"CAP_SYS_ADMIN): {proc.stderr.strip()[-300:]}")
    return proc


def test_user_unit_passes_systemd_analyze_user_verify(tmp_path):
    proc = user_verify(tmp_path, with_binary=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
    # The check is real: without the binary it fails.
    without = tmp_path / "without"
    without.mkdir()
    bad = user_verify(without, with_binary=False)
    assert bad.returncode != 0 and "nvkmd-agent" in bad.stderr


def test_user_unit_lives_and_dies_with_the_graphical_session():
    assert unit_values("PartOf") == ["graphical-session.target"]
    assert unit_values("After") == ["graphical-session.target"]
    assert unit_values("WantedBy") == ["graphical-session.target"]
    assert unit_values("ExecStart") == ["/usr/bin/nvkmd-agent"]
    assert not unit_values("User")          # a user unit runs as its user


def test_autostart_entry_is_valid_and_skipped_where_systemd_runs_the_session(tmp_path):
    if shutil.which("desktop-file-validate") is None:
        pytest.fail("desktop-file-validate not installed (scripts/setup installs desktop-file-utils)")
    proc = subprocess.run(["desktop-file-validate", str(DESKTOP)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr
    text = DESKTOP.read_text()
    assert re.search(r"^Exec=nvkmd-agent$", text, re.M)
    assert not re.search(r"^(OnlyShowIn|NotShowIn)=", text, re.M)
    if not GENERATOR.exists():
        pytest.fail(f"{GENERATOR} is missing (package systemd)")

    def generated(desktop_text: str, name: str) -> list[str]:
        xdg = tmp_path / name / "xdg"
        (xdg / "autostart").mkdir(parents=True)
        (xdg / "autostart" / "nvkmd-agent.desktop").write_text(desktop_text)
        out = tmp_path / name / "out"
        out.mkdir()
        env = dict(os.environ, XDG_CONFIG_DIRS=str(xdg), XDG_CONFIG_HOME=str(tmp_path / "none"),
                   PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin')}")
        subprocess.run([str(GENERATOR), str(out), str(out), str(out)], env=env, check=True,
                       capture_output=True, timeout=30)
        return sorted({p.name for p in out.rglob("*.service")})

    # systemd's generator honours X-systemd-skip: no second agent from autostart...
    assert generated(text, "shipped") == []
    # ...and would otherwise make a unit of it (so the check above means something).
    assert generated(text.replace("X-systemd-skip=true", "X-systemd-skip=false"), "control") == \
        ["app-nvkmd\\x2dagent@autostart.service"]


def test_a_second_agent_in_the_same_session_exits(bus, desktop, agent_factory):
    first = agent_factory(bus.address)
    first.wait_ready()
    second = agent_factory(bus.address)
    second.proc.wait(30)
    assert second.proc.returncode == 0
    assert "another nvkmd-agent runs in this session" in second.text()
    assert first.alive()
    assert first.stop() == 0
