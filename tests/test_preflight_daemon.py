"""The daemon finds a new candidate kernel after a real `apt-get update`
and test-builds the driver for it before it is installed; the verdict
reaches `nvkmctl status`, D-Bus and the desktop agent (real dunst).

The candidate: Debian's linux-headers-6.1.0-56-amd64 (and its common
headers), downloaded with apt-get download and rebuilt with its version
bumped (dpkg-deb -R/-b), published in a local repository made with
apt-ftparchive.  apt sees it through a private APT_CONFIG (sources list,
lists, caches in the test's directory; the machine's dpkg status), so the
machine's apt configuration is never touched.  The daemon runs with
/lib/modules and dpkg's database mounted read-only: the preflight installs
nothing.  The driver source is the tiny tree calling pci_resize_resource()
as 6.1.0-47's headers declare it: it builds for the installed 6.1.0-47
and will break for the candidate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aptrepo
from dbus_helpers import run
from helpers import REPO, need_kernels, wait_for
from test_preflight import OLD, tiny_root

CANDIDATE = "6.1.0-56-amd64"
BUMP = "+nvkmd1"
SUMMARY = f"The coming kernel {CANDIDATE} would break the NVIDIA driver"
CAUSE = "the driver source does not support this kernel's API: the arguments of pci_resize_resource() changed"
READ_ONLY = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
             " && ".join(f"mount --bind -o ro {d} {d}" for d in aptrepo.READ_ONLY) + ' && exec "$@"',
             "sh")


def nvkmctl(address: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nvkmd.cli", "--bus", address, *args],
                          capture_output=True, text=True, timeout=600, cwd=REPO,
                          stdin=subprocess.DEVNULL)


def candidates(address: str) -> list[dict]:
    return run(address, lambda c: c.status()).candidates


def test_apt_update_brings_a_candidate_that_will_break(root, bus, bus_daemon, desktop,
                                                         agent_factory, tmp_path):
    if OLD not in need_kernels(2):
        raise AssertionError(f"{OLD}'s headers are needed (scripts/setup installs them)")
    root.add_kernel(OLD)
    tiny_root(root, variant=True)
    local = aptrepo.LocalApt(root.path / "apt")
    root.configure(root.config_text + "[daemon]\ndebounce_s = 0.2\n"
                   f'[preflight]\napt_config = "/apt/apt.conf"\n')
    # Debian's packages, the version bumped: apt will see an upgrade.
    dl = tmp_path / "dl"
    arch, common, kbuild = aptrepo.headers_debs(dl, CANDIDATE)
    debs = [aptrepo.bump(arch, BUMP, dl), aptrepo.bump(common, BUMP, dl), kbuild]
    version = aptrepo.run("dpkg-deb", "-f", str(debs[0]), "Version").stdout.strip()
    assert version.endswith(BUMP)
    before = aptrepo.kernel_packages_state()

    desktop.start_server()
    agent = agent_factory(bus.address)
    daemon = bus_daemon(root, bus, wrapper=READ_ONLY)
    wait_for(lambda: any(k.release == OLD and k.state == "ready"
                         for k in run(bus.address, lambda c: c.status()).kernels), 120,
             f"{OLD} to be built")
    assert candidates(bus.address) == []

    # A new kernel package appears in the repository; `apt update` finds it.
    local.publish(*debs)
    local.update()
    cands = wait_for(lambda: [c for c in candidates(bus.address) if c.get("state") == "will-break"],
                     300, "the candidate's preflight verdict in GetStatus")
    (c,) = cands
    assert c["kernel"] == CANDIDATE and c["package"] == f"linux-headers-{CANDIDATE}"
    assert c["package_version"] == version and c["manager"] == "apt"
    assert c["cause"] == CAUSE and "pci_resize_resource" in c["first_error"]
    assert c["hold"] == f"apt-mark hold linux-headers-{CANDIDATE}" and c["held"] is False
    assert c["log"].startswith(str(root.path / "var/log/nvkmd/preflight" / CANDIDATE))
    assert run(bus.address, lambda c: c.call("GetCandidates"))[0][0]["verdict"].value == "will-break"

    # status shows it under Candidates.
    st = nvkmctl(bus.address, "status")
    assert st.returncode == 0, st.stderr
    assert "Candidates (1, kernels the next upgrade would install):" in st.stdout
    assert f"{CANDIDATE}  linux-headers-{CANDIDATE} {version}: will break: {CAUSE}" in st.stdout
    assert f"keep it out: apt-mark hold linux-headers-{CANDIDATE}" in st.stdout

    # The agent warned, naming the kernel and the command that holds it back.
    (n,) = desktop.monitor.wait_notify(SUMMARY)
    assert f"To keep it out until a driver supports it: apt-mark hold linux-headers-{CANDIDATE}" in n["body"]
    assert n["body"].startswith("The driver source does not support this kernel's API")

    # Preflight over D-Bus (nvkmctl preflight): the cached result, exit 1, and
    # the PreflightFinished signal it waits for.  The agent does not warn again.
    p = nvkmctl(bus.address, "preflight", f"linux-headers-{CANDIDATE}={version}", "--json")
    assert p.returncode == 1, p.stdout + p.stderr
    (r,) = json.loads(p.stdout)["results"]
    assert r["verdict"] == "will-break" and r["message"] == f"will break: {CAUSE}"
    assert r["log"] == c["log"]                      # from the cache, not built again
    listed = [x for x in (root.path / "var/log/nvkmd/preflight" / CANDIDATE).glob("build-*.log")]
    assert len(listed) == 1
    shown = [x["summary"] for x in desktop.monitor.notifies()]
    assert shown.count(SUMMARY) == 1

    # Nothing was installed, no kernel package changed.
    assert aptrepo.kernel_packages_state() == before
    assert not any((root.path / "var/lib/nvkmd/cache/preflight").iterdir())
    assert agent.stop() == 0
    assert daemon.stop() == 0


def test_hold_keeps_a_breaking_kernel_out_until_a_driver_builds_it(root, bus, bus_daemon, tmp_path):
    """preflight.hold = true: the will-break candidate is held with apt-mark
    (in a private copy of dpkg's database: DPkg::Options --admindir), and
    released once a new driver source builds for it."""
    from helpers import set_tiny_version
    need_kernels(2)
    root.add_kernel(OLD)
    tree = tiny_root(root, variant=True)
    local = aptrepo.LocalApt(root.path / "apt", private_dpkg=True)
    root.configure(root.config_text + "[daemon]\ndebounce_s = 0.2\n"
                   f'[preflight]\napt_config = "/apt/apt.conf"\nhold = true\n')
    dl = tmp_path / "dl"
    arch, common, kbuild = aptrepo.headers_debs(dl, CANDIDATE)
    local.publish(aptrepo.bump(arch, BUMP, dl), aptrepo.bump(common, BUMP, dl), kbuild)
    local.update()
    pkg = f"linux-headers-{CANDIDATE}"
    assert local.selection(pkg) == "install"

    daemon = bus_daemon(root, bus, wrapper=READ_ONLY)
    (c,) = wait_for(lambda: [c for c in candidates(bus.address) if c.get("state") == "will-break"],
                    300, "the will-break verdict")
    assert c["held"] is True and local.selection(pkg) == "hold"
    st = nvkmctl(bus.address, "status").stdout
    assert f"keep it out: apt-mark hold {pkg} (held by nvkmd)" in st
    # Held, apt's upgrade leaves it out; it is still a candidate, and shown.
    sim = local.apt("apt-get", "-s", "--with-new-pkgs", "upgrade").stdout
    assert f"Inst {pkg} " not in sim

    # A driver source that builds for it: the hold is released.
    kb = tree / "kernel-open/nvidia/nvidia.Kbuild"
    kb.write_text(kb.read_text().replace(" nvidia/nv-resize.o", ""))
    (tree / "kernel-open/nvidia/nv-resize.c").unlink()
    set_tiny_version(tree, "9.9.2")
    (c,) = wait_for(lambda: [c for c in candidates(bus.address)
                             if c.get("state") == "ready" and c.get("driver_version") == "9.9.2"],
                    300, "the ready verdict with the new source")
    wait_for(lambda: local.selection(pkg) == "install", 30, "the hold to be released")
    assert c["held"] is False
    assert daemon.stop() == 0


def test_a_real_build_cancels_the_background_preflight_which_runs_again_after(root, bus, bus_daemon,
                                                                            tmp_path):
    need_kernels(2)
    root.add_kernel(OLD)
    tiny_root(root)
    local = aptrepo.LocalApt(root.path / "apt")
    root.configure(root.config_text + "[daemon]\ndebounce_s = 0.2\n"
                   f'[preflight]\napt_config = "/apt/apt.conf"\n')
    dl = tmp_path / "dl"
    arch, common, kbuild = aptrepo.headers_debs(dl, CANDIDATE)
    local.publish(aptrepo.bump(arch, BUMP, dl), aptrepo.bump(common, BUMP, dl), kbuild)
    daemon = bus_daemon(root, bus, wrapper=READ_ONLY)
    wait_for(lambda: any(k.release == OLD and k.state == "ready"
                         for k in run(bus.address, lambda c: c.status()).kernels), 120, "the first build")
    local.update()
    wait_for(lambda: [c for c in candidates(bus.address) if c.get("state") == "checking"], 120,
             "the background preflight to start", interval=0.01)
    # A kernel arrives: its real build goes first.
    new = "6.1.0-56-amd64"
    root.add_kernel(new)
    wait_for(lambda: any(k.release == new and k.state == "ready"
                         for k in run(bus.address, lambda c: c.status()).kernels), 120, "the real build")
    (c,) = wait_for(lambda: [c for c in candidates(bus.address) if c.get("state") == "ready"], 300,
                    "the preflight, run again after the real build")
    logs = sorted((root.path / "var/log/nvkmd/preflight" / CANDIDATE).glob("build-*.log"),
                  key=lambda p: p.stat().st_mtime_ns)
    results = [next(line for line in p.read_text().splitlines() if line.startswith("# result:"))
               for p in logs]
    # Only the log can say a preflight was stopped before it wrote one.
    assert "preflight cancelled: a real build is needed" in daemon.log_text()
    # Cancelled, if it had got as far as a build log; then built to the end.
    assert results[-1] == "# result: success" and set(results[:-1]) <= {"# result: cancelled"}, results
    real = (root.path / "var/log/nvkmd" / new / "latest.log").resolve().stat().st_mtime
    assert Path(c["log"]).stat().st_mtime > real
    # What the cancelled run had unpacked is gone too.
    work = root.path / "var/lib/nvkmd/cache/preflight"
    wait_for(lambda: not any(work.iterdir()), 30, "the private directories to be removed")
