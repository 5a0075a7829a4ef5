"""P9: preflight.  The time from `apt-get update` finding a new kernel to
nvkmd's verdict on it, beside what the user would otherwise wait for: the
kernel's installation plus the real build.

The new kernel: Debian's linux-headers-6.1.0-56-amd64 and its common
headers, downloaded with apt-get download and rebuilt with a bumped
version (dpkg-deb -R/-b), in a local repository (apt-ftparchive) that apt
sees through a private APT_CONFIG; the machine's apt configuration is
never touched.  The anchor installs the same packages with the real dpkg
into the daemon's scratch root (`dpkg --root --unpack`: the files, without
the maintainer scripts that would run the machine's kernel hooks) and times
until the daemon has built and installed the module for it.  The source is
the figure's source (Debian's NVIDIA 535 in a full run: its verdict for
6.1.0-56 is "will break", the build that follows fails the same way)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from . import stats
from .context import Context
from .env import BenchError, BenchRoot, DaemonProc, log

P9 = "preflight verdict"
CANDIDATE = "6.1.0-56-amd64"
BUMP = "+nvkmdbench1"


def _run(*cmd: str, cwd: Path | None = None, env: dict | None = None) -> str:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=900,
                          env=env, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd[:3])}: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return proc.stdout


def _bumped(dl: Path) -> list[Path]:
    """Debian's packages of CANDIDATE, the arch and common ones with BUMP."""
    dl.mkdir(parents=True, exist_ok=True)
    series = CANDIDATE.rsplit("-", 1)[0]
    _run("apt-get", "download", "-q", f"linux-headers-{CANDIDATE}", f"linux-headers-{series}-common",
         "linux-kbuild-6.1", cwd=dl)
    out = []
    for deb in sorted(dl.glob("*.deb")):
        if "kbuild" in deb.name:
            out.append(deb)
            continue
        tree = dl / (deb.stem + ".tree")
        _run("dpkg-deb", "-R", str(deb), str(tree))
        control = tree / "DEBIAN" / "control"
        text = control.read_text()
        version = re.search(r"^Version: (\S+)$", text, re.M).group(1)
        text = text.replace(f"Version: {version}\n", f"Version: {version}{BUMP}\n")
        text = text.replace(f"-common (= {version})", f"-common (= {version}{BUMP})")
        control.write_text(text)
        new = dl / deb.name.replace(f"_{version}_", f"_{version}{BUMP}_")
        _run("dpkg-deb", "--root-owner-group", "-Zxz", "-b", str(tree), str(new))
        shutil.rmtree(tree)
        out.append(new)
    return out


def _private_apt(base: Path) -> Path:
    repo = base / "repo"
    for d in (repo, base / "lists" / "partial", base / "cache" / "archives" / "partial",
              base / "sources.list.d"):
        d.mkdir(parents=True, exist_ok=True)
    (base / "sources.list").write_text(f"deb [trusted=yes] file:{repo} ./\n")
    conf = base / "apt.conf"
    conf.write_text(f'Dir::Etc::sourcelist "{base}/sources.list";\n'
                    f'Dir::Etc::sourceparts "{base}/sources.list.d";\n'
                    f'Dir::State::lists "{base}/lists/";\nDir::Cache "{base}/cache/";\n'
                    'Acquire::Languages "none";\n')
    return conf


def _publish(repo: Path, debs: list[Path]) -> None:
    for d in debs:
        shutil.copy2(d, repo / d.name)
    (repo / "Packages").write_text(_run("apt-ftparchive", "packages", ".", cwd=repo))
    (repo / "Release").write_text(_run("apt-ftparchive", "release", ".", cwd=repo))


def _one(ctx: Context, run: int) -> dict:
    k = ctx.kernel
    root = BenchRoot(ctx.ws.new(f"p9-root-{run}"), ctx.source)
    root.add_kernel(k, headers_of=k)
    conf = _private_apt(root.path / "apt")
    root.configure('[daemon]\ndebounce_s = 0.5\n[preflight]\napt_config = "/apt/apt.conf"\n')
    debs = _bumped(ctx.ws.new(f"p9-debs-{run}"))
    d = DaemonProc(root.path, ctx.log_file(f"p9-nvkmd-{run}"), env={"NVKMD_RUNNING_KERNEL": k}).start()
    try:
        d.wait_event("ready", timeout=300)
        d.wait_settled(timeout=3600)
        _publish(root.path / "apt" / "repo", debs)
        mark = d.mark()
        t0 = time.monotonic()
        _run("apt-get", "update", "-q", env={"APT_CONFIG": str(conf), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
        t_update = time.monotonic() - t0
        t1, f = d.wait_event("preflight finished", mark, timeout=3600, kernel=CANDIDATE)
        verdict = f.get("verdict", "")
        # The anchor: install the kernel's headers for real, into the root, and build.
        dpkg = root.path / "var" / "lib" / "dpkg"
        for sub in ("updates", "info"):
            (dpkg / sub).mkdir(parents=True, exist_ok=True)
        (dpkg / "status").touch()
        mark = d.mark()
        t2 = time.monotonic()
        _run("dpkg", f"--root={root.path}", "--force-depends", "--unpack", *map(str, debs))
        t_dpkg = time.monotonic() - t2
        t3, b = d.wait_event("build finished", mark, timeout=3600, kernel=CANDIDATE)
        return {"update_to_verdict_s": t1 - t0, "apt_update_s": t_update, "verdict": verdict,
                "cause": f.get("cause", ""), "install_plus_build_s": t3 - t2, "dpkg_s": t_dpkg,
                "build_result": b.get("result", ""), "build_cause": b.get("cause", "")}
    finally:
        d.stop()
        shutil.rmtree(root.path, ignore_errors=True)


def p9(ctx: Context) -> stats.Figure:
    reps = 1 if ctx.dry else min(ctx.reps, 2)
    runs = []
    for i in range(reps):
        log(f"P9 run {i + 1}/{reps}: apt-get update brings {CANDIDATE}{BUMP} ({ctx.source.kind})")
        runs.append(_one(ctx, i))
    pf = stats.summarize([r["update_to_verdict_s"] for r in runs])
    inst = stats.summarize([r["install_plus_build_s"] for r in runs])
    verdicts = sorted({r["verdict"] for r in runs})
    agree = all((r["verdict"] == "ready") == (r["build_result"] == "success") for r in runs)
    value = (f"{stats.fmt(pf, 's')} from apt-get update to the verdict "
             f"({'/'.join(verdicts)} for {CANDIDATE}, nothing installed)")
    anchor = (f"dpkg install + build {stats.fmt(inst, 's')}, which then "
              f"{'succeeded' if runs[-1]['build_result'] == 'success' else 'failed'}")
    fig = stats.Figure(9, P9, value, stats.ratio(pf.median, inst.median), anchor,
                       {"runs": runs, "verdict_matches_the_real_build": agree})
    fig.notes.append("the verdict arrives before the kernel is installed; the anchor is the time "
                     "a user waits after installing it to learn the same")
    return fig
