"""P1: what the rebuild adds to a package transaction.

``apt-get install --reinstall linux-headers-<K>`` on the real system, the
same package every time, alternating two setups:

* DKMS: the driver registered with DKMS (as ``nvkmd-bench``); Debian's
  headers postinst runs /etc/kernel/header_postinst.d/dkms, which builds
  and installs the module inside the transaction.
* nvkmd: no DKMS registration; the real daemon watches the real root
  (``--root /`` with a private state and log directory from a config
  file) and builds once apt has released its lock.

Before each run the kernel's module is removed, so both setups see what a
headers install for a kernel without the module looks like.  For nvkmd,
each run starts a daemon with a fresh state directory (no cache, no
history: the headers are news to it, as a new headers package would be),
with the module it built in a first run put back so that the daemon
starts idle; the module goes just before apt starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from . import stats
from .context import Context
from .env import SYSTEM_MODULES, BenchError, DaemonProc, log, timed, wait_for

P1 = "package transaction time added by the rebuild"
HOOK = Path("/etc/kernel/header_postinst.d/dkms")
ARCHIVES = Path("/var/cache/apt/archives")


def _query(*args: str) -> str:
    return subprocess.run(["dpkg-query", *args], capture_output=True, text=True).stdout.strip()


def plan(k: str) -> dict:
    """What P1 will do, or a BenchError saying why it cannot."""
    link = SYSTEM_MODULES / k / "build"
    owner = _query("-S", str(link)).split(":")[0]
    if not owner:
        raise BenchError(f"{link} belongs to no package; nothing to reinstall")
    version = _query("-W", "-f", "${Version}", owner)
    if not shutil.which("apt-get"):
        raise BenchError("apt-get is not installed")
    if not shutil.which("dkms") or not HOOK.exists():
        raise BenchError(f"dkms and its headers hook {HOOK} are needed for the DKMS side")
    debs = list(ARCHIVES.glob(f"{owner}_*.deb"))
    return {"kernel": k, "package": owner, "version": version, "cached_deb": str(debs[0]) if debs else "",
            "command": f"apt-get install --reinstall -y {owner}"}


def _wait_dpkg_free() -> None:
    """Start the clock only when no other package transaction is running, and
    no other DKMS registration exists: the headers hook would build it too
    (and nvkmd refuses a kernel whose nvidia module DKMS installed)."""
    from nvkmd.system import pkgdb
    from nvkmd.paths import Paths

    from .realsys import DKMS_NAME, dkms_entries
    paths = Paths.build("/")
    others = lambda: sorted({f"{e.name}/{e.version}" for e in dkms_entries() if e.name != DKMS_NAME})
    try:
        wait_for(lambda: not pkgdb.holders(paths) and not others(), 900,
                 "other package transactions and DKMS registrations to go", interval=1)
    except BenchError:
        raise BenchError(f"the machine is busy: {'dpkg locked' if pkgdb.holders(paths) else ''} "
                         f"{'DKMS has ' + ', '.join(others()) if others() else ''}".strip()) from None


class AptFailed(BenchError):
    pass


def _apt(pkg: str, k: str, guard, out: Path) -> tuple[float, float]:
    """(start, end) of one reinstall, the kernel's nvkmd module gone before it.
    apt's output goes to ``out``.  A failed transaction is finished with
    ``dpkg --configure -a`` once the machine is quiet again, so no package is
    left half configured, and raised as AptFailed."""
    _wait_dpkg_free()
    _drop_nvkmd_module(k)
    t0 = time.monotonic()
    try:
        _, p = timed(["apt-get", "-o", "DPkg::Lock::Timeout=600", "-o", "Dpkg::Use-Pty=0",
                      "install", "--reinstall", "-y", "--no-install-recommends", pkg],
                     env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=3600, check=False)
        t1 = time.monotonic()
        out.write_text(p.stdout + p.stderr)
        if p.returncode != 0:
            _wait_dpkg_free()
            subprocess.run(["dpkg", "--configure", "-a"], capture_output=True,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            raise AptFailed(f"apt-get exited {p.returncode} (output in {out})")
        return t0, t1
    finally:
        guard.restore_links()


def _retrying(what: str, fn, tries: int = 3):
    """A shared machine: another DKMS registration appearing mid-transaction
    makes the headers hook fail.  Try the run again, a few times."""
    for attempt in range(1, tries + 1):
        try:
            return fn()
        except AptFailed as e:
            if attempt == tries:
                raise
            log(f"P1: {what} failed ({e}); trying again")


def _drop_nvkmd_module(k: str) -> None:
    shutil.rmtree(SYSTEM_MODULES / k / "updates" / "nvkmd", ignore_errors=True)


def _config(ctx: Context, module, name: str) -> Path:
    """A config for nvkmd on the real root with its own state and log directory."""
    d = ctx.ws.new(name)
    conf = d / "nvkmd.toml"
    conf.write_text(f'[source]\npath = "{module.dir}"\n[build]\nbackend = "kbuild"\n'
                    f'[state]\ndir = "{d / "state"}"\n[logs]\ndir = "{d / "logs"}"\n'
                    '[install]\ninitramfs = "never"\n')
    return conf


def _daemon(ctx: Context, conf: Path, name: str, k: str) -> DaemonProc:
    d = DaemonProc(Path("/"), ctx.log_file(name), config=conf, env={"NVKMD_RUNNING_KERNEL": k}).start()
    try:
        d.wait_event("ready", timeout=300)
        d.wait_settled(timeout=3600)
    except BaseException:
        d.stop()
        raise
    return d


def _prime(ctx: Context, module, k: str) -> Path:
    """nvkmd builds the kernel once; a copy of what it installed is kept."""
    module.remove()
    _wait_dpkg_free()
    d = _daemon(ctx, _config(ctx, module, "p1-prime"), "p1-prime", k)
    d.stop()
    installed = SYSTEM_MODULES / k / "updates" / "nvkmd"
    if not (installed / "nvkmd.json").is_file():
        done = d.find("build finished", 0, kernel=k)
        why = f"{done[-1][1].get('result')}: {done[-1][1].get('cause')}" if done else "no build ran"
        raise BenchError(f"nvkmd did not build {k} on the real root ({why}); log {d.log_path}")
    saved = ctx.ws.new("p1-saved") / "nvkmd"
    shutil.copytree(installed, saved, symlinks=True)
    return saved


def _put_back(saved: Path, k: str) -> None:
    dest = SYSTEM_MODULES / k / "updates" / "nvkmd"
    if not dest.exists():
        shutil.copytree(saved, dest, symlinks=True)
        subprocess.run(["depmod", "-a", k], capture_output=True)


def p1(ctx: Context) -> stats.Figure:
    k = ctx.kernel
    p = plan(k)
    if ctx.dry:
        return stats.unavailable(1, P1, f"dry run: plan checked: {p['command']} "
                                 f"({'cached' if p['cached_deb'] else 'to download'}), DKMS hook present",
                                 "apt-get with DKMS building inside it", plan=p)
    guard = ctx.real_system()
    module = ctx.dkms_module()
    log(f"P1: a first nvkmd build for {k} on the real root")
    saved = _prime(ctx, module, k)
    with_dkms, with_nvkmd, installed_after, start_latency, build_s = [], [], [], [], []

    def nvkmd_run(i: int) -> None:
        module.remove()
        _put_back(saved, k)
        d = _daemon(ctx, _config(ctx, module, f"p1-nvkmd-{i}"), f"p1-nvkmd-{i}", k)
        try:
            if d.find("job queued", 0, kernel=k):
                raise BenchError(f"nvkmd did not take {k}'s module as current; log {d.log_path}")
            mark = d.mark()
            t0, t_apt_end = _apt(p["package"], k, guard, ctx.log_file(f"p1-apt-nvkmd-{i}"))
            t_done, f = d.wait_event("build finished", mark, timeout=3600, kernel=k)
            if f.get("result") != "success":
                raise BenchError(f"nvkmd's build for {k} failed: {f.get('cause')} (log {f.get('log')})")
            started = d.find("build started", mark, kernel=k)[0][0]
            if started < t_apt_end:
                raise BenchError("nvkmd started a build while apt held its lock")
        finally:
            d.stop()
        with_nvkmd.append(t_apt_end - t0)
        installed_after.append(t_done - t0)
        start_latency.append(started - t_apt_end)
        build_s.append(t_done - started)

    for i in range(ctx.reps):
        log(f"P1 run {i + 1}/{ctx.reps}: {p['command']} with DKMS")
        def dkms_run() -> tuple[float, float]:
            module.unbuild(k)
            return _apt(p["package"], k, guard, ctx.log_file(f"p1-apt-dkms-{i}"))
        t0, t1 = _retrying("apt with DKMS", dkms_run)
        with_dkms.append(t1 - t0)
        if module.state(k) != "installed":
            raise BenchError(f"DKMS did not install nvkmd-bench for {k} inside apt "
                             f"(dkms status says {module.state(k)})")

        log(f"P1 run {i + 1}/{ctx.reps}: {p['command']} with nvkmd watching")
        _retrying("apt with nvkmd", lambda: nvkmd_run(i))
    a, b = stats.summarize(with_dkms), stats.summarize(with_nvkmd)
    inst, lat = stats.summarize(installed_after), stats.summarize(start_latency)
    data = {**p, "source": ctx.source.kind, "apt_with_dkms_s": a.to_dict(), "apt_with_nvkmd_s": b.to_dict(),
            "nvkmd_module_installed_after_apt_start_s": inst.to_dict(),
            "nvkmd_lock_release_to_build_start_s": lat.to_dict(),
            "nvkmd_build_s": stats.summarize(build_s).to_dict(),
            "samples": {"dkms": with_dkms, "nvkmd": with_nvkmd, "installed_after": installed_after,
                        "start_latency": start_latency}}
    value = (f"apt-get {stats.fmt(b, 's')} with nvkmd watching, module installed "
             f"{stats.fmt(inst, 's')} after apt began (build start {stats.fmt(lat, 's')} after apt "
             "released its lock)")
    fig = stats.Figure(1, P1, value, stats.ratio(b.median, a.median),
                       f"apt-get {stats.fmt(a, 's')} with DKMS building inside it", data)
    fig.notes.append("lock release is taken as apt-get's exit; the build start includes nvkmd's "
                     "debounce (daemon.debounce_s, default 2 s)")
    return fig
