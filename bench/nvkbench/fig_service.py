"""P4 (idle cost), P5 (status vs dkms status), P6 (wait-ready vs dkms
autoinstall) and P8 (D-Bus under load), against one daemon at rest."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from . import stats
from .context import Context
from .env import PY, BenchError, bus_owner, cpu_seconds, log, memory_kib, nvkmctl, timed

P4, P5, P6, P8 = "idle cost", "status query", "boot ready check", "D-Bus under load"
LOAD = Path(__file__).with_name("load.py")


def p4(ctx: Context) -> stats.Figure:
    svc = ctx.service()
    pid = svc.daemon.pid
    windows = max(1, ctx.reps)
    window_s = ctx.idle_minutes * 60 / windows
    # The anchor: a bare Python interpreter doing nothing, over the same time.
    bare = subprocess.Popen([PY, "-c", "import time; time.sleep(86400)"])
    try:
        per_min = []
        log(f"P4: {windows} idle windows of {window_s:.0f} s")
        for _ in range(windows):
            c0 = cpu_seconds(pid)
            time.sleep(window_s)     # measuring idleness: nothing to wait for but time
            per_min.append((cpu_seconds(pid) - c0) * 60 / window_s)
        mem = memory_kib(pid)
        bare_mem = memory_kib(bare.pid)
        if not svc.daemon.alive():
            raise BenchError("nvkmd exited while idle")
        if len(svc.daemon.find("build started", 0)) != len(svc.daemon.find("build finished", 0)):
            raise BenchError("nvkmd was not idle (a build ran)")
    finally:
        bare.kill()
        bare.wait()
    s = stats.summarize(per_min)
    hwm, bare_hwm = mem["VmHWM"] / 1024, bare_mem["VmHWM"] / 1024
    data = {"cpu_s_per_minute": s.to_dict(), "cpu_percent_of_one_cpu": s.median / 60 * 100,
            "vm_hwm_mib": hwm, "vm_rss_mib": mem["VmRSS"] / 1024, "bare_python_vm_hwm_mib": bare_hwm,
            "minutes": ctx.idle_minutes, "windows": windows, "kernels": svc.kernels,
            "on_bus": bool(svc.bus), "samples": per_min}
    value = (f"{stats.fmt(s, 'CPU-s/min', 3)} ({s.median / 60 * 100:.2f}% of one CPU), "
             f"peak RSS {hwm:.1f} MiB over {ctx.idle_minutes:g} min")
    return stats.Figure(4, P4, value, stats.ratio(hwm, bare_hwm),
                        f"RSS of a bare idle Python {bare_hwm:.1f} MiB", data)


def _dkms_inventory() -> dict:
    from nvkmd.system import dkms as nd
    out = subprocess.run(["dkms", "status"], capture_output=True, text=True).stdout
    entries = nd.parse_status(out)
    return {"entries": len(entries), "modules": sorted({f"{e.name}/{e.version}" for e in entries}),
            "kernels": sorted({e.kernel for e in entries if e.kernel})}


def p5(ctx: Context) -> stats.Figure:
    svc = ctx.service()
    if not svc.bus:
        raise BenchError(f"nvkmctl status needs the bus: {svc.no_bus}")
    cmd = [*nvkmctl(), "--bus", svc.bus.address, "status"]
    _, p = timed([*cmd, "--json"])
    shown = len(json.loads(p.stdout)["kernels"])
    if shown != svc.kernels:
        raise BenchError(f"nvkmctl status showed {shown} kernels, not {svc.kernels}")
    reps = 2 if ctx.dry else max(ctx.reps, 5)
    ours, theirs = [], []
    inv = _dkms_inventory()
    for _ in range(reps):
        ours.append(timed(cmd)[0])
        theirs.append(timed(["dkms", "status"])[0])
    s, a = stats.summarize(ours), stats.summarize(theirs)
    def n(count: int, what: str) -> str:
        return f"{count} {what}{'' if count == 1 else 's'}"
    had = (f"{n(inv['entries'], 'line')}: {', '.join(inv['modules']) or 'no modules'}, "
           f"{n(len(inv['kernels']), 'kernel')}; {n(len(list(Path('/lib/modules').iterdir())), 'kernel dir')}")
    data = {"nvkmctl_status_s": s.to_dict(), "dkms_status_s": a.to_dict(), "nvkmd_kernels": svc.kernels,
            "dkms_machine": inv, "samples": {"nvkmctl": ours, "dkms": theirs}}
    return stats.Figure(5, P5, f"nvkmctl status {stats.fmt(s, 's', 3)} with {svc.kernels} kernels",
                        stats.ratio(s.median, a.median),
                        f"dkms status {stats.fmt(a, 's', 3)} on this machine ({had})", data)


def _wait_ready_exists() -> str:
    p = subprocess.run([*nvkmctl(), "wait-ready", "--help"], capture_output=True, text=True)
    return "" if p.returncode == 0 else "nvkmctl wait-ready not landed yet"


def p6(ctx: Context) -> stats.Figure:
    why = _wait_ready_exists()
    if why:
        raise BenchError(why)
    svc = ctx.service()
    k = svc.kernel
    cmd = [*nvkmctl(), "--root", str(svc.root.path), "wait-ready", "--timeout", "60"]
    reps = 2 if ctx.dry else max(ctx.reps, 5)
    ours = []
    before = svc.daemon.mark()
    for _ in range(reps):
        dt, p = timed(cmd, env=svc.env, timeout=120)
        ours.append(dt)
    if svc.daemon.mark() != before and svc.daemon.find("job queued", before):
        raise BenchError("wait-ready asked the daemon for a build on a healthy system")
    s = stats.summarize(ours)
    # The floor under any Python boot check: the interpreter starting and
    # exiting, same interpreter, same run.  What wait-ready adds is above it.
    floor = stats.summarize([timed([PY, "-c", "pass"])[0] for _ in range(reps)])
    data = {"kernel": k, "wait_ready_s": s.to_dict(), "python_start_s": floor.to_dict(),
            "samples": {"wait_ready": ours}}
    value = f"{stats.fmt(s, 's', 3)} on a healthy system (Python's own start {floor.median:.3f} s)"
    if ctx.dry:
        return stats.Figure(6, P6, value, "n/a", "dkms autoinstall (not run in a dry run: it may build)",
                            data)
    from .realsys import foreign_pending
    module = ctx.dkms_module()
    if module.state(k) != "installed":
        log(f"P6: building the bench's DKMS module for {k} so autoinstall has nothing to do")
        module.unbuild(k)
        module.build_install(k)
    try:
        from .env import wait_for
        wait_for(lambda: not foreign_pending(k), 120, "other DKMS registrations to be installed or gone",
                 interval=2)
    except BenchError:
        raise BenchError(f"dkms autoinstall would build {', '.join(foreign_pending(k))} "
                         f"(registered by someone else); not timing it")
    theirs = [timed(["dkms", "autoinstall", "-k", k], timeout=600)[0] for _ in range(reps)]
    if module.state(k) != "installed":
        raise BenchError("the bench's DKMS module is no longer installed after autoinstall")
    a = stats.summarize(theirs)
    data.update({"dkms_autoinstall_s": a.to_dict(), "dkms_machine": _dkms_inventory()})
    data["samples"]["dkms"] = theirs
    return stats.Figure(6, P6, value, stats.ratio(s.median, a.median),
                        f"dkms autoinstall -k {k} with nothing to do {stats.fmt(a, 's', 3)}", data)


def _load(address: str, *args: str, timeout: float = 600) -> dict:
    _, p = timed([PY, str(LOAD), address, *args], timeout=timeout)
    return json.loads(p.stdout.strip().splitlines()[-1])


def p8(ctx: Context) -> stats.Figure:
    svc = ctx.service()
    if not svc.bus:
        raise BenchError(f"needs the bus: {svc.no_bus}")
    addr = svc.bus.address
    seconds = 0.5 if ctx.dry else 3.0 if ctx.quick else 5.0
    reps = 1 if ctx.dry else ctx.reps
    rates: dict[int, stats.Summary] = {}
    errors: dict[str, int] = {}
    samples: dict[str, list[float]] = {}
    # CPU per call at 100 clients, the daemon's and the load process's: which
    # side of the bus runs out first on this machine's CPUs.
    cpu_us: dict[str, list[float]] = {k: [] for k in ("nvkmd", "bus", "load", "nvkmd_during_getid",
                                                       "bus_getid", "load_getid")}

    def level(n: int, target: str = "nvkmd") -> float:
        c0, b0 = cpu_seconds(svc.daemon.pid), cpu_seconds(svc.bus.proc.pid)
        r = _load(addr, "rate", str(n), str(seconds), target)
        per = 1e6 / max(1, r["calls"])
        if n == 100:
            getid = "" if target == "nvkmd" else "_getid"
            cpu_us["nvkmd" + ("_during_getid" if getid else "")].append(
                (cpu_seconds(svc.daemon.pid) - c0) * per)
            cpu_us["bus" + getid].append((cpu_seconds(svc.bus.proc.pid) - b0) * per)
            cpu_us["load" + getid].append(r.get("cpu_s", 0) * per)
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
        return r["calls"] / r["elapsed"]
    for n in (1, 10, 100):
        got = [level(n) for _ in range(reps)]
        rates[n] = stats.summarize(got)
        samples[f"nvkmd_{n}"] = got
    anchor = [level(100, "bus") for _ in range(reps)]
    a = stats.summarize(anchor)
    samples["bus_getid_100"] = anchor
    decode = _load(addr, "decode")
    # One client's flood must not starve another: a second client's call
    # latency, alone and while 100 connections of another process flood.
    quiet = _load(addr, "latency", str(seconds / 2))
    flood = subprocess.Popen([PY, str(LOAD), addr, "rate", "100", str(seconds + 2)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        during = _load(addr, "latency", str(seconds))
    finally:
        flooded = json.loads(flood.communicate(timeout=600)[0].strip().splitlines()[-1])
    samples["other_client_quiet_s"] = [quiet["median_s"]]
    # One call in flight per flooding connection: its mean latency is
    # connections / rate.  A client served as fairly as each of them waits as long.
    flood_ms = 100 * flooded["elapsed"] / max(1, flooded["calls"]) * 1000
    calls = 200 if ctx.dry else 5000
    log(f"P8: {calls} concurrent GetStatus calls from one client")
    b = _load(addr, "burst", str(calls))
    still = svc.daemon.alive() and bus_owner(addr) == svc.unique_name
    after = subprocess.run([*nvkmctl(), "--bus", addr, "status", "--json"], capture_output=True,
                           text=True, timeout=60)
    answer = after.returncode == 0
    data = {"calls_per_s": {str(n): rates[n].to_dict() for n in rates}, "seconds_per_level": seconds,
            "bus_getid_100_per_s": a.to_dict(), "errors": errors, "burst": b,
            "stayed_on_bus": still, "answering_after_burst": answer, "samples": samples,
            "after_burst_error": "" if answer else (after.stderr or after.stdout)[-400:],
            "cpu_us_per_call_100": {k: stats.summarize(v).to_dict() for k, v in cpu_us.items() if v},
            "client_decode": decode,
            "other_client": {"quiet": quiet, "during_flood": during,
                             "flood_calls_per_s": flooded["calls"] / flooded["elapsed"],
                             "flood_mean_latency_s": flood_ms / 1000}}
    levels = ", ".join(f"{stats.fmt(rates[n], '', 0).strip()}/s @{n}" for n in rates)
    value = (f"{levels} clients; after {calls} concurrent calls ({b['calls']} answered): "
             f"{'on the bus and answering' if still and answer else 'GONE from the bus'}")
    fig = stats.Figure(8, P8, value, stats.ratio(rates[100].median, a.median),
                       f"the bus's own GetId @100 clients {stats.fmt(a, '', 0).strip()}/s", data)
    fig.notes.append(f"another client's GetStatus during a 100-connection flood: median "
                     f"{during['median_s'] * 1000:.1f} ms, p95 {during['p95_s'] * 1000:.1f} ms, max "
                     f"{during['max_s'] * 1000:.1f} ms ({during['calls']} calls); alone "
                     f"{quiet['median_s'] * 1000:.1f} ms; the flood's own calls took {flood_ms:.1f} ms "
                     "on average (served no worse than a flooding connection: at most about that)")
    med = {k: stats.summarize(v).median for k, v in cpu_us.items() if v}
    fig.notes.append(f"CPU per GetStatus call at 100 clients: nvkmd {med.get('nvkmd', 0):.0f} us, the bus "
                     f"{med.get('bus', 0):.0f} us, the load process {med.get('load', 0):.0f} us (per GetId: "
                     f"bus {med.get('bus_getid', 0):.0f} us, load {med.get('load_getid', 0):.0f} us); "
                     f"dbus-fast alone reads a GetStatus reply ({decode['getstatus_reply_bytes']} bytes) in "
                     f"{decode['getstatus_unmarshal_us']:.0f} us, a GetId reply in "
                     f"{decode['getid_unmarshal_us']:.1f} us; {os.cpu_count()} CPUs shared by bus, nvkmd and load")
    fig.notes.append(f"private dbus-daemon with the system bus's policy and limits, except "
                     f"max_replies_per_connection={svc.bus.limits.get('max_replies_per_connection')} "
                     "(stock: 128) so that every concurrent call reaches nvkmd; one load process")
    return fig
