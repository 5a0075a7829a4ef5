"""systemd/nvkmd.service.d/preflight.conf: the drop-in that lets the
hardened service download candidates' headers verifies cleanly with the
real systemd-analyze, opens exactly the network and the two caches, and
leaves the rest of the sandbox as it was."""

from __future__ import annotations

import shutil

from test_systemd_units import UNITS, exposure, make_root, unit_values, verify

DROPIN = UNITS / "nvkmd.service.d" / "preflight.conf"


def test_preflight_dropin_verifies_and_opens_only_what_it_says(tmp_path):
    root = make_root(tmp_path)
    d = root / "etc/systemd/system/nvkmd.service.d"
    d.mkdir()
    shutil.copy2(DROPIN, d)
    proc = verify(root, "nvkmd.service")
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr
    assert unit_values(DROPIN, "PrivateNetwork") == ["no"]
    assert unit_values(DROPIN, "RestrictAddressFamilies") == ["AF_UNIX AF_INET AF_INET6"]
    assert set(" ".join(unit_values(DROPIN, "ReadWritePaths")).split()) == {
        "-/var/cache/apt/archives", "-/var/cache/pacman/pkg"}
    # Still a sandbox: the score stays well below an unhardened unit's.
    assert exposure(root, "nvkmd.service") <= 4.0
