"""P1: what the rebuild adds to a package transaction.

``apt-get install --reinstall linux-headers-<K>`` on the real system, the
same package every time, alternating two setups:

* DKMS: the driver registered with DKMS (as ``nvkmd-bench``); Debian's
  headers postinst runs /etc/kernel/header_postinst.d/dkms, which builds
  and installs the module inside the transaction.
* nvkmd: no DKMS registration; the real daemon watches the real root
  (``--root /`` with a private state and log directory from a config
  file) and builds once apt has released its lock.

Before each run the kernel's module is removed and its headers links
(``/lib/modules/<K>/build`` and ``source``, which the package ships) are
taken away, so both setups see what a headers install looks like: the
headers arrive, the module is missing.  apt puts the links back within
seconds; the bench puts them back itself if apt fails.
"""

from __future__ import annotations

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
    from nvkmd import pkgdb
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


def _apt(pkg: str, k: str, guard) -> tuple[float, float]:
    """(start, end) of one reinstall, the module and the headers links gone before it.
    The links go first: a module missing beside present headers is a reason to build now."""
    _wait_dpkg_free()
    for name in ("build", "source"):
        p = SYSTEM_MODULES / k / name
        if p.is_symlink():
            p.unlink()
    _drop_nvkmd_module(k)
    t0 = time.monotonic()
    try:
        timed(["apt-get", "-o", "DPkg::Lock::Timeout=600", "-o", "Dpkg::Use-Pty=0",
               "install", "--reinstall", "-y", "--no-install-recommends", pkg],
              env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=3600)
        return t0, time.monotonic()
    finally:
        guard.restore_links()


def _drop_nvkmd_module(k: str) -> None:
    shutil.rmtree(SYSTEM_MODULES / k / "updates" / "nvkmd", ignore_errors=True)


def _config(ctx: Context, module) -> Path:
    d = ctx.ws.new("p1-nvkmd")
    conf = d / "nvkmd.toml"
    conf.write_text(f'[source]\npath = "{module.dir}"\n[build]\nbackend = "kbuild"\n'
                    f'[state]\ndir = "{d / "state"}"\n[logs]\ndir = "{d / "logs"}"\n'
                    '[install]\ninitramfs = "never"\n')
    return conf


def p1(ctx: Context) -> stats.Figure:
    k = ctx.kernel
    p = plan(k)
    if ctx.dry:
        return stats.unavailable(1, P1, f"dry run: plan checked: {p['command']} "
                                 f"({'cached' if p['cached_deb'] else 'to download'}), DKMS hook present",
                                 "apt-get with DKMS building inside it", plan=p)
    guard = ctx.real_system()
    module = ctx.dkms_module()
    conf = _config(ctx, module)
    env = {"NVKMD_RUNNING_KERNEL": k}
    with_dkms, with_nvkmd, installed_after, start_latency, build_s = [], [], [], [], []
    for i in range(ctx.reps):
        log(f"P1 run {i + 1}/{ctx.reps}: {p['command']} with DKMS")
        module.unbuild(k)
        t0, t1 = _apt(p["package"], k, guard)
        with_dkms.append(t1 - t0)
        if module.state(k) != "installed":
            raise BenchError(f"DKMS did not install nvkmd-bench for {k} inside apt "
                             f"(dkms status says {module.state(k)})")

        log(f"P1 run {i + 1}/{ctx.reps}: {p['command']} with nvkmd watching")
        module.remove()
        d = DaemonProc(Path("/"), ctx.log_file(f"p1-nvkmd-{i}"), config=conf, env=env).start()
        try:
            d.wait_event("ready", timeout=300)
            d.wait_settled(timeout=3600)
            mark = d.mark()
            t0, t_apt_end = _apt(p["package"], k, guard)
            with_nvkmd.append(t_apt_end - t0)
            t_done, f = d.wait_event("build finished", mark, timeout=3600, kernel=k)
            if f.get("result") != "success":
                raise BenchError(f"nvkmd's build for {k} failed: {f.get('cause')} (log {f.get('log')})")
            started = d.find("build started", mark, kernel=k)[0][0]
            early = [t for t, _ in d.find("build started", mark, kernel=k) if t < t_apt_end]
            if early:
                raise BenchError("nvkmd started a build while apt held its lock")
            installed_after.append(t_done - t0)
            start_latency.append(started - t_apt_end)
            build_s.append(t_done - started)
        finally:
            d.stop()
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
