"""What the system tests do with nvkmd inside a container, as a user would:
apt, systemctl, nvkmctl, the config file.

The driver source for most tests is tests/data/tiny-open (builds in
seconds), copied to /usr/src/tiny-open.  Its Makefile gets one line: while
/run/nvkmd-test-gate exists, make waits before it starts Kbuild.  That
holds a build as long as a test needs (a kill, a queued job behind it)
without a timing guess; /run is visible but read-only in nvkmd's sandbox,
so only the test can open the gate.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from sysimage import GOOD
from sysnspawn import Container

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "data" / "tiny-open"
TINY_INSIDE = "/usr/src/tiny-open"
GATE = "/run/nvkmd-test-gate"
CONFIG = "/etc/nvkmd/nvkmd.toml"
APT = "apt-get -q -y -o DPkg::Lock::Timeout=600 --no-install-recommends"
# Only for `make modules`: count-lines.mk includes this Makefile too.
GATE_LINE = (f"  ifeq ($(MAKECMDGOALS),modules)\n"
             f"    _gate := $(shell while [ -e {GATE} ]; do sleep 0.1; done)\n  endif\n")

TINY_CONFIG = f"""\
[source]
path = "{TINY_INSIDE}"

[build]
# Every forced build compiles: a cache hit would skip the gated conftest.
cache_keep = 0
"""


def apt(c: Container, args: str, timeout: float = 900.0):
    """apt-get as root; when the image's package lists went stale (the
    archive dropped a version it names), update them once and retry.
    Without Recommends: nvkmd's would pull linux-headers-amd64, the newest
    kernel's headers (another download and a third kernel to build);
    polkitd, the other one, is in the image."""
    r = c.run(f"{APT} {args}", check=False, timeout=timeout)
    if r.returncode != 0 and ("Failed to fetch" in r.out or "Unable to locate" in r.out):
        c.run("apt-get -q update", timeout=600)
        r = c.run(f"{APT} {args}", check=False, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"apt-get {args}: exit status {r.returncode}\n{r.out}")
    return r


def install_deb(c: Container, deb: Path):
    shutil.copy2(deb, c.path(f"/root/{deb.name}"))
    return apt(c, f"install /root/{deb.name}")


def add_tiny_source(c: Container) -> None:
    dest = c.path(TINY_INSIDE)
    shutil.copytree(TINY, dest, dirs_exist_ok=True)
    makefile = dest / "kernel-open" / "Makefile"
    lines = makefile.read_text().splitlines(keepends=True)
    at = lines.index("else\n") + 1       # the outer make, not Kbuild's pass
    makefile.write_text("".join(lines[:at] + [GATE_LINE] + lines[at:]))
    # nvkmd refuses a source tree that anyone but root can write.
    c.run(f"chown -R root:root {TINY_INSIDE} && chmod -R go-w {TINY_INSIDE}")


def use_tiny_source(c: Container) -> None:
    """Point the config at the tiny tree and make the daemon read it."""
    add_tiny_source(c)
    c.path(CONFIG).write_text(TINY_CONFIG)
    c.run("systemctl reload nvkmd")
    wait_status(c, lambda s: s["source"]["path"] == TINY_INSIDE, "the daemon to use the tiny source")


def close_gate(c: Container) -> None:
    c.run(f"touch {GATE}")


def open_gate(c: Container) -> None:
    c.run(f"rm -f {GATE}")


def running_kernel_dropin(c: Container, unit: str, kernel: str = GOOD) -> None:
    """The container runs this machine's kernel, which has no headers: name
    one that has, the way a test of the running kernel needs."""
    d = c.path(f"/etc/systemd/system/{unit}.d")
    d.mkdir(parents=True, exist_ok=True)
    (d / "running-kernel.conf").write_text(f"[Service]\nEnvironment=NVKMD_RUNNING_KERNEL={kernel}\n")
    c.run("systemctl daemon-reload")


def nvkmctl_json(c: Container, cmd: str, user: str = "", timeout: float = 60.0):
    r = c.run(f"nvkmctl {cmd} --json", user=user, timeout=timeout)
    return json.loads(r.stdout)


def status(c: Container) -> dict:
    return nvkmctl_json(c, "status")


def jobs(c: Container) -> list[dict]:
    return nvkmctl_json(c, "jobs -n 1000")


def job(c: Container, job_id: int) -> dict | None:
    return next((j for j in jobs(c) if j["id"] == job_id), None)


def _transient(r, what: str) -> None:
    """Waiting is for nvkmd being busy or restarting (exit 3, unreachable),
    not for nvkmctl failing: fail at once on anything else."""
    if r.returncode not in (0, 3):
        raise AssertionError(f"while waiting for {what}: `{r.args[-1]}` failed with status "
                             f"{r.returncode}:\n{r.out}")


def wait_status(c: Container, cond, what: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    last: dict | str = "no answer"
    while True:
        r = c.run("nvkmctl status --json", check=False, timeout=60)
        _transient(r, what)
        if r.returncode == 0:
            last = json.loads(r.stdout)
            if cond(last):
                return last
        else:
            last = r.out
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last status:\n"
                                 f"{json.dumps(last, indent=1) if isinstance(last, dict) else last}")
        time.sleep(0.2)


def wait_job(c: Container, job_id: int, states: tuple[str, ...], timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while True:
        r = c.run("nvkmctl jobs -n 1000 --json", check=False, timeout=60)
        _transient(r, f"job {job_id}")
        if r.returncode == 0:
            last = next((j for j in json.loads(r.stdout) if j["id"] == job_id), None)
            if last and last["state"] in states:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for job {job_id} to be "
                                 f"{'/'.join(states)}; last: {last}\n{c.journal('-u', 'nvkmd', lines=40)}")
        time.sleep(0.2)


def kernel(s: dict, release: str) -> dict:
    for k in s["kernels"]:
        if k["release"] == release:
            return k
    raise AssertionError(f"no kernel {release} in {[k['release'] for k in s['kernels']]}")


def wait_kernel_ready(c: Container, release: str, timeout: float = 300.0) -> dict:
    return wait_status(c, lambda s: any(k["release"] == release and k["state"] == "ready"
                                        for k in s["kernels"]) and s["daemon"]["state"] == "idle",
                       f"{release} to be ready and the daemon idle", timeout)


def module_files(c: Container, release: str) -> list[str]:
    d = c.path(f"/lib/modules/{release}/updates/nvkmd")
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def modules_dep(c: Container, release: str) -> str:
    p = c.path(f"/lib/modules/{release}/modules.dep")
    return p.read_text() if p.exists() else ""


def assert_depmod_current(c: Container, release: str) -> None:
    """depmod's index lists nvkmd's installed modules, and every module it
    lists exists: modprobe would find what it names."""
    dep = modules_dep(c, release)
    for ko in module_files(c, release):
        if ko.endswith(".ko"):
            assert f"updates/nvkmd/{ko}:" in dep, f"modules.dep of {release} lacks {ko}:\n{dep}"
    listed = {p.rstrip(":") for line in dep.splitlines() for p in line.split()}
    missing = sorted(p for p in listed if not c.path(f"/lib/modules/{release}/{p}").exists())
    assert not missing, f"modules.dep of {release} names files that do not exist: {missing}"


def build(c: Container, release: str, force: bool = True) -> int:
    """Queue a build as root; its job id."""
    out = nvkmctl_json(c, f"build -k {release}{' --force' if force else ''}")
    assert len(out["job_ids"]) == 1, out
    return out["job_ids"][0]


def wait_gated(c: Container, job_id: int, timeout: float = 120.0) -> dict:
    """The job is running and held at the gate.  (pgrep without a shell:
    a `sh -c` around it would carry the pattern and match itself.)"""
    deadline = time.monotonic() + timeout
    while True:
        j = job(c, job_id)
        if j and j["state"] == "running" and c.run(["pgrep", "-f", f"while \\[ -e {GATE} "],
                                                   check=False).returncode == 0:
            return j
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not reach the gate within {timeout:.0f}s: {j}")
        time.sleep(0.2)
