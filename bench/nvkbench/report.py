"""The machine a run measured, and the JSON file a run leaves."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .env import DEBIAN_TARBALL, REPO, header_kernels


def _out(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _package_of(path: str) -> str:
    line = _out(["dpkg-query", "-S", path]).splitlines()
    return line[0].split(":")[0] if line else ""


def machine(source_version: str = "") -> dict[str, Any]:
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    headers = []
    for k in header_kernels():
        pkg = _package_of(f"/lib/modules/{k}/build")
        ver = _out(["dpkg-query", "-W", "-f", "${Version}", pkg]) if pkg else ""
        headers.append({"kernel": k, "package": pkg, "version": ver})
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_mib": mem_kib // 1024,
        "os": _out(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "running_kernel": platform.release(),
        "kernel_headers": headers,
        "driver_source": {
            "package": "nvidia-open-kernel-source",
            "version": _out(["dpkg-query", "-W", "-f", "${Version}", "nvidia-open-kernel-source"]),
            "tarball": str(DEBIAN_TARBALL) if DEBIAN_TARBALL.exists() else "",
        },
        "driver_version_built": source_version,
        "dkms": _out(["dpkg-query", "-W", "-f", "${Version}", "dkms"]) if shutil.which("dkms") else "",
        "python": platform.python_version(),
        "nvkmd_commit": _out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
    }


def write(results_dir: Path, figures: list, ctx, dry: bool) -> Path:
    mode = "dry-run" if dry else "quick" if ctx.quick else "full"
    src = ctx._source
    doc = {
        "mode": mode,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "runs_per_figure": ctx.reps,
        "figures_run": [int(f.line()[1]) for f in figures],
        "idle_minutes": ctx.idle_minutes,
        "source": src.kind if src else "",
        "machine": machine(src.version if src else ""),
        "figures": [f.to_dict() for f in figures],
        "lines": [f.line() for f in figures],
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    history = results_dir / "history"
    history.mkdir(exist_ok=True)
    path = history / f"{mode}-{stamp}.json"
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    path.write_text(text)
    latest = results_dir / f"latest-{mode}.json"
    tmp = latest.with_suffix(".json.tmp")
    tmp.write_text(text)
    tmp.replace(latest)
    return latest


def markdown(doc: dict[str, Any]) -> str:
    """The README's table for one results file."""
    m = doc["machine"]
    headers = ", ".join(f"{h['package']} {h['version']}" for h in m["kernel_headers"])
    rows = ["| figure | nvkmd | vs | anchor (same run) |", "|---|---|---|---|"]
    for f in doc["figures"]:
        cell = lambda s: s.replace("|", "\\|")
        rows.append(f"| {f['figure']} {cell(f['name'])} | {cell(f['value'])} | {f['ratio']} | "
                    f"{cell(f['anchor'])} |")
    machine_line = (f"{doc['mode']} run of {doc['date']}, nvkmd {m['nvkmd_commit']}: {m['cpus']} CPUs "
                    f"({m['cpu_model']}), {m['memory_mib'] // 1024} GiB, {m['os']}; kernel headers "
                    f"{headers}; driver source {m['driver_source']['package']} "
                    f"{m['driver_source']['version']} (built: {doc['source']}); dkms {m['dkms']}; "
                    f"{doc['runs_per_figure']} run{'' if doc['runs_per_figure'] == 1 else 's'} per figure, "
                    f"idle {doc['idle_minutes']:g} min.")
    return machine_line + "\n\n" + "\n".join(rows) + "\n"


def keep_logs(results_dir: Path, workspace: Path) -> Path:
    """The daemons' and apt's logs of a run, kept (under history/, not committed)."""
    dest = results_dir / "history" / f"logs-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir(parents=True, exist_ok=True)
    for f in workspace.glob("*.log"):
        shutil.copy2(f, dest / f.name)
    return dest
