"""The shipped systemd units, checked by systemd's own tools.

``systemd-analyze verify`` insists that ExecStart= binaries exist, so the
units are checked, unchanged, inside a scratch root that holds systemd's
real unit directory, the real /usr/bin/kill and the entry points this
venv installed, at the /usr/bin paths the units name.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

UNITS = REPO / "systemd"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
MY_UNITS = ("nvkmd.service", "nvkmd-ready.service")


def unit_values(path: Path, key: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^{key}=(.*)$", path.read_text(), re.M)]


def make_root(tmp: Path, dropin: bool = False) -> Path:
    root = tmp / "sysroot"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    for link in ("bin", "sbin", "lib"):
        (root / link).symlink_to(f"usr/{link}")
    (root / "usr/bin").mkdir()
    (root / "usr/sbin").mkdir()
    venv_bin = Path(sys.executable).parent
    for prog in ("nvkmd", "nvkmctl"):
        shutil.copy2(venv_bin / prog, root / "usr/bin" / prog)
    shutil.copy2(shutil.which("kill"), root / "usr/bin/kill")
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for unit in MY_UNITS:
        shutil.copy2(UNITS / unit, etc / unit)
    if dropin:
        (etc / "nvkmd.service.d").mkdir()
        shutil.copy2(UNITS / "nvkmd.service.d/initramfs.conf", etc / "nvkmd.service.d")
    return root


def verify(root: Path, unit: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", unit],
                          capture_output=True, text=True, timeout=60)


def exposure(root: Path, unit: str) -> float:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}",
                           "--no-pager", unit], capture_output=True, text=True, timeout=60)
    m = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    return float(m.group(1))


@pytest.mark.parametrize("unit", MY_UNITS)
def test_systemd_analyze_verify_is_clean(tmp_path, unit):
    proc = verify(make_root(tmp_path), unit)
    # verify exits 0 on unknown keys and only warns: any output is a finding.
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr


def test_verify_is_clean_with_the_initramfs_dropin(tmp_path):
    proc = verify(make_root(tmp_path, dropin=True), "nvkmd.service")
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr


def test_verify_would_catch_a_broken_unit(tmp_path):
    """The check above can fail: a misspelt key and a missing binary show up."""
    root = make_root(tmp_path)
    unit = root / "etc/systemd/system/nvkmd.service"
    unit.write_text(unit.read_text().replace("Nice=10", "Nicety=10"))
    (root / "usr/bin/nvkmctl").unlink()
    assert "Unknown key 'Nicety'" in verify(root, "nvkmd.service").stderr
    bad = verify(root, "nvkmd-ready.service")
    assert bad.returncode != 0 and "/usr/bin/nvkmctl" in bad.stderr


def test_security_exposure_is_at_most_3(tmp_path):
    score = exposure(make_root(tmp_path), "nvkmd.service")
    assert score <= 3.0, f"systemd-analyze security rates nvkmd.service {score}"
    # Same with /boot writable for the initramfs step.
    score = exposure(make_root(tmp_path / "dropin", dropin=True), "nvkmd.service")
    assert score <= 3.0, f"with the initramfs drop-in: {score}"


def test_security_score_reacts_to_hardening(tmp_path):
    """Without the sandbox the same check scores far worse, so the bound means something."""
    root = make_root(tmp_path)
    unit = root / "etc/systemd/system/nvkmd.service"
    text = unit.read_text()
    kept = [line for line in text.splitlines()
            if not re.match(r"(Protect|Private|Restrict|SystemCall|Capability|NoNew|Memory|"
                            r"LockPersonality|IPAddress|KeyringMode|RemoveIPC|UMask)", line)]
    unit.write_text("\n".join(kept) + "\n")
    assert exposure(root, "nvkmd.service") > 8.0


def test_daemon_unit_has_the_required_settings():
    u = UNITS / "nvkmd.service"
    assert unit_values(u, "Type") == ["notify"]
    assert unit_values(u, "NotifyAccess") == ["main"]
    assert unit_values(u, "Restart") == ["on-failure"]
    assert unit_values(u, "RestartPreventExitStatus") == ["78"]
    assert unit_values(u, "WatchdogSec")
    assert unit_values(u, "ProtectSystem") == ["strict"]
    assert not unit_values(u, "ProtectKernelModules")
    rw = " ".join(unit_values(u, "ReadWritePaths")).split()
    assert {"-/lib/modules", "-/usr/lib/modules"} <= set(rw)
    assert not any("boot" in p for p in rw), "/boot is writable only with the initramfs drop-in"
    dropin = " ".join(unit_values(UNITS / "nvkmd.service.d/initramfs.conf", "ReadWritePaths"))
    assert "-/boot" in dropin.split()
    for key in ("StateDirectory", "CacheDirectory", "LogsDirectory"):
        assert unit_values(u, key) == ["nvkmd"]
    assert unit_values(u, "RestrictAddressFamilies") == ["AF_UNIX"]
    for key in ("Nice", "CPUWeight", "IOWeight"):
        assert unit_values(u, key), key


def test_bus_name_and_activation_link_match_the_dbus_files():
    activation = REPO / "dbus" / "io.github.nvkmd.service"
    name = unit_values(activation, "Name")[0]
    assert unit_values(UNITS / "nvkmd.service", "BusName") == [name]
    alias = f"dbus-{name}.service"
    assert unit_values(UNITS / "nvkmd.service", "Alias") == [alias]
    assert unit_values(activation, "SystemdService")[0] in ("nvkmd.service", alias)


def test_ready_unit_timeout_matches_its_command():
    u = UNITS / "nvkmd-ready.service"
    assert unit_values(u, "Type") == ["oneshot"]
    assert unit_values(u, "RemainAfterExit") == ["yes"]
    assert "nvkmd.service" in unit_values(u, "After")[0].split()
    before = unit_values(u, "Before")[0].split()
    assert {"display-manager.service", "systemd-user-sessions.service"} <= set(before)
    cmd = unit_values(u, "ExecStart")[0].split()
    assert cmd[:2] == ["/usr/bin/nvkmctl", "wait-ready"]
    timeout = int(cmd[cmd.index("--timeout") + 1])
    start = int(unit_values(u, "TimeoutStartSec")[0])
    # wait-ready gives up first, with its own message; systemd's kill is the backstop.
    assert timeout < start <= timeout + 60
