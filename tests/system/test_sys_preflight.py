"""The preflight in the installed, hardened nvkmd.service (a booted Debian
12): without its drop-in the service has no network, so a package not in
apt's cache cannot be fetched ("could not tell", exit 6); with
nvkmd.service.d/preflight.conf (shipped in the package's examples) it
fetches Debian's newest headers with apt-get download into apt's cache and
says "ready" for the tiny tree.  Nothing is installed."""

from __future__ import annotations

import json
import re

import pytest

from sysimage import GOOD
from sysnvkmd import use_tiny_source, wait_kernel_ready

pytestmark = pytest.mark.system

DROPIN = "/etc/systemd/system/nvkmd.service.d/preflight.conf"


def newest_abi(c) -> str:
    out = c.run("apt-cache search --names-only '^linux-headers-6\\.1\\.0-[0-9]+-amd64$'").stdout
    abis = sorted(int(m) for m in re.findall(r"^linux-headers-6\.1\.0-(\d+)-amd64 ", out, re.M))
    assert abis, out
    return f"6.1.0-{abis[-1]}-amd64"


def test_preflight_needs_the_dropin_for_downloads_and_installs_nothing(installed):
    c = installed
    use_tiny_source(c)
    wait_kernel_ready(c, GOOD)
    k = newest_abi(c)
    c.run(f"rm -f /var/cache/apt/archives/linux-headers-{k}_*.deb")
    before = c.run("dpkg-query -W -f '${Package} ${Version}\\n'").stdout

    r = c.run(f"nvkmctl preflight linux-headers-{k} --json", check=False, timeout=600)
    assert r.returncode == 6, r.out
    (res,) = json.loads(r.stdout)["results"]
    assert res["verdict"] == "unknown" and res["kind"] == "download-failed", res

    c.run("mkdir -p /etc/systemd/system/nvkmd.service.d && "
          f"cp /usr/share/doc/nvkmd/examples/preflight.conf {DROPIN} && "
          "systemctl daemon-reload && systemctl restart nvkmd")
    c.wait("systemctl is-active nvkmd", 60, "nvkmd to be back")
    r = c.run(f"nvkmctl preflight linux-headers-{k} --json", check=False, timeout=900)
    assert r.returncode == 0, r.out
    (res,) = json.loads(r.stdout)["results"]
    assert res["verdict"] == "ready" and res["kernel"] == k, res
    assert res["log"].startswith(f"/var/log/nvkmd/preflight/{k}/")
    assert c.run(f"ls /var/cache/apt/archives/linux-headers-{k}_*.deb", check=False).returncode == 0
    assert c.run(f"test -e /lib/modules/{k}", check=False).returncode == 1
    assert c.run("dpkg-query -W -f '${Package} ${Version}\\n'").stdout == before
    st = c.run("ls -A /var/cache/nvkmd/preflight").stdout.strip()
    assert st == "", st

    # No TARGET: apt's own simulation of the upgrade, inside the sandbox.
    r = c.run("nvkmctl preflight --json", check=False, timeout=900)
    assert r.returncode in (0, 1, 6), r.out
    results = json.loads(r.stdout)["results"]
    assert all(x["kind"] != "refused" for x in results), results
    journal = c.run("journalctl -u nvkmd --no-pager -o cat").stdout
    assert "cannot list the candidate kernels" not in journal, journal[-3000:]
