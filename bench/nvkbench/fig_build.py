"""P2 (build cost: nvkmd vs raw make vs DKMS) and P3 (forced rebuild from
the cache vs a full build)."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from . import stats
from .context import Context
from .env import PY, REPO, SYSTEM_MODULES, BenchError, BenchRoot, DaemonProc, log, timed

P2 = "build cost"
P3 = "forced rebuild, nothing changed"


def _phases(log_path: str | None) -> dict[str, float]:
    """The build log's ``# phases:`` trailer: seconds per phase."""
    try:
        text = Path(log_path or "").read_text(errors="replace")
    except OSError:
        return {}
    m = re.search(r"^# phases: (.*)$", text, re.M)
    return {n: float(t) for n, t in re.findall(r"([\w-]+) (\d+\.\d+)s", m.group(1))} if m else {}


def _nvkmd_event_build(ctx: Context, k: str) -> tuple[float, float, dict[str, float]]:
    """(headers link appears -> module installed, build started -> installed,
    the build's phases) through a fresh daemon on a fresh root (no cache to
    help it)."""
    root = BenchRoot(ctx.ws.new("p2-nvkmd"), ctx.source)
    root.add_kernel(k)
    d = DaemonProc(root.path, ctx.log_file("p2-nvkmd"), env={"NVKMD_RUNNING_KERNEL": k}).start()
    try:
        d.wait_event("ready", timeout=120)
        mark = d.mark()
        t0 = time.monotonic()
        root.link_headers(k)
        t1, f = d.wait_event("build finished", mark, timeout=3600, kernel=k)
        if f.get("result") != "success" or not root.installed(k):
            raise BenchError(f"nvkmd's build for {k} failed: {f.get('cause')} (log {f.get('log')})")
        started = d.find("build started", mark, kernel=k)[0][0]
        return t1 - t0, t1 - started, _phases(f.get("log"))
    finally:
        d.stop()
        shutil.rmtree(root.path, ignore_errors=True)


def _raw_make(ctx: Context, k: str) -> float:
    """What a person types: make modules, copy the .ko files, depmod."""
    base = ctx.ws.new("p2-raw")
    tree = ctx.source.copy_into(base / "src")
    kdir = tree / "kernel-open" if (tree / "kernel-open").is_dir() else tree
    dest_root = base / "root"
    dest = dest_root / "lib" / "modules" / k / "updates" / "raw"
    real = SYSTEM_MODULES / k
    make = ["make", f"-j{ctx.jobs}", f"KERNEL_UNAME={k}", f"SYSSRC={(real / 'source').resolve()}",
            f"SYSOUT={(real / 'build').resolve()}", "modules"]
    t0 = time.monotonic()
    timed(make, cwd=kdir, timeout=3600)
    dest.mkdir(parents=True)
    for ko in kdir.glob("*.ko"):
        shutil.copy2(ko, dest / ko.name)
    timed(["depmod", "-a", "-b", str(dest_root), k])
    dt = time.monotonic() - t0
    if not any(dest.glob("*.ko")):
        raise BenchError(f"raw make for {k} produced no .ko files")
    shutil.rmtree(base, ignore_errors=True)
    return dt


def p2(ctx: Context) -> stats.Figure:
    k = ctx.kernel
    reps = 1 if ctx.dry else ctx.reps
    ev, build_only, raw, dk, phases = [], [], [], [], []
    module = None
    if not ctx.dry:
        module = ctx.dkms_module()
    for i in range(reps):
        log(f"P2 run {i + 1}/{reps}: nvkmd, raw make, dkms ({ctx.source.kind}, {k})")
        e, b, ph = _nvkmd_event_build(ctx, k)
        ev.append(e)
        build_only.append(b)
        phases.append(ph)
        raw.append(_raw_make(ctx, k))
        if module is not None:
            module.unbuild(k)
            dk.append(module.build_install(k))
    s_ev, s_raw = stats.summarize(ev), stats.summarize(raw)
    s_b = stats.summarize(build_only)
    data = {"kernel": k, "source": ctx.source.kind, "nvkmd_event_to_installed_s": s_ev.to_dict(),
            "nvkmd_build_started_to_installed_s": s_b.to_dict(), "raw_make_copy_depmod_s": s_raw.to_dict(),
            "samples": {"nvkmd": ev, "nvkmd_build": build_only, "raw": raw, "dkms": dk}}
    anchor = f"raw make+copy+depmod {stats.fmt(s_raw, 's')}"
    if dk:
        s_dk = stats.summarize(dk)
        data["dkms_build_install_s"] = s_dk.to_dict()
        anchor += f"; {stats.ratio(s_ev.median, s_dk.median)} vs dkms build+install {stats.fmt(s_dk, 's')}"
    else:
        anchor += "; dkms build+install not run in a dry run"
    value = f"{stats.fmt(s_ev, 's')} event to installed (build itself {stats.fmt(s_b, 's')})"
    fig = stats.Figure(2, P2, value, stats.ratio(s_ev.median, s_raw.median), anchor, data)
    fig.notes.append("nvkmd's figure includes its debounce (daemon.debounce_s: the quiet period "
                     "after the last event) and a private copy of the tree; raw make builds in place")
    names = list(dict.fromkeys(n for ph in phases for n in ph))
    if names:
        median = {n: stats.summarize([ph.get(n, 0.0) for ph in phases]).median for n in names}
        data["nvkmd_phases_s"] = median
        data["samples"]["nvkmd_phases"] = phases
        fig.notes.append("where nvkmd's build time went (median, from its logs): "
                         + ", ".join(f"{n} {v:.2f} s" for n, v in median.items())
                         + f"; raw make+copy+depmod {s_raw.median:.2f} s")
    return fig


def _once(root: BenchRoot, k: str, force: bool) -> float:
    cmd = [PY, "-m", "nvkmd.daemon", "--root", str(root.path), "--once", "--kernel", k]
    dt, p = timed(cmd + (["--force"] if force else []), env={"NVKMD_RUNNING_KERNEL": k},
                  timeout=3600, cwd=REPO)
    return dt


def p3(ctx: Context) -> stats.Figure:
    k = ctx.kernel
    reps = 1 if ctx.dry else ctx.reps
    cached = BenchRoot(ctx.ws.new("p3-cache"), ctx.source)
    cached.add_kernel(k, headers_of=k)
    full = BenchRoot(ctx.ws.new("p3-nocache"), ctx.source, "[build]\ncache_keep = 0\n")
    full.add_kernel(k, headers_of=k)
    log(f"P3: first builds ({ctx.source.kind}, {k})")
    _once(cached, k, False)
    _once(full, k, False)
    c, f = [], []
    anchor_reps = reps      # every build figure runs at least --reps times, its anchor too
    for i in range(reps):
        log(f"P3 run {i + 1}/{reps}")
        c.append(_once(cached, k, True))
        if i < anchor_reps:
            f.append(_once(full, k, True))
    products = list((cached.path / "var" / "lib" / "nvkmd" / "cache" / "products").glob(f"{k}/*/*.ko"))
    if not products:
        raise BenchError("the forced rebuild did not use the cache (no products stored)")
    s_c, s_f = stats.summarize(c), stats.summarize(f)
    data = {"kernel": k, "source": ctx.source.kind, "cached_s": s_c.to_dict(), "full_s": s_f.to_dict(),
            "samples": {"cached": c, "full": f},
            "command": "nvkmd --once --kernel K --force (cache_keep=1 vs cache_keep=0)"}
    for r in (cached, full):
        shutil.rmtree(r.path, ignore_errors=True)
    return stats.Figure(3, P3, f"{stats.fmt(s_c, 's')} from the cache", stats.ratio(s_c.median, s_f.median),
                        f"full build {stats.fmt(s_f, 's')}", data)
