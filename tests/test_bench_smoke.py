"""bench/run's smoke mode: every figure's setup and one tiny iteration run,
ten lines come out in the documented format and the same go into the
JSON, and the real system is left as it was.  No figure's value is
asserted here: numbers belong to bench/, not to the tests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from helpers import REPO, need_kernels

LINE = re.compile(r"^P(?P<n>[1-9][0-9]*) (?P<name>[^:]+): (?P<value>.+) \((?P<ratio>\S+) vs (?P<anchor>.+)\)$")


def dkms_status() -> str:
    return subprocess.run(["dkms", "status"], capture_output=True, text=True).stdout


def test_bench_dry_run_prints_every_figure_and_leaves_the_system_alone(tmp_path):
    need_kernels(1)
    modules_before = {d.name: sorted(p.name for p in d.iterdir()) for d in Path("/lib/modules").iterdir()}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run"), "--quick", "--dry-run",
                           "--results", str(tmp_path)], capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert [LINE.match(x) and int(LINE.match(x)["n"]) for x in lines] == list(range(1, 11)), \
        proc.stdout + proc.stderr[-3000:]
    values = {int(LINE.match(x)["n"]): LINE.match(x)["value"] for x in lines}
    # P1 reinstalls a package on the real system: a dry run only checks its plan.
    assert values[1].startswith("n/a (dry run: plan checked")
    # Every other figure ran its setup and one iteration (whatever it measured).
    unmeasured = {n: v for n, v in values.items() if n != 1 and v.startswith("n/a")}
    assert not unmeasured, proc.stderr[-3000:]

    doc = json.loads((tmp_path / "latest-dry-run.json").read_text())
    assert doc["lines"] == lines
    assert [f["figure"] for f in doc["figures"]] == [f"P{n}" for n in range(1, 11)]
    m = doc["machine"]
    assert m["cpus"] >= 1 and m["memory_mib"] > 0
    assert m["kernel_headers"] and all(h["package"] for h in m["kernel_headers"])
    assert m["driver_version_built"]

    # README's table is printed from the same file.
    table = subprocess.run([sys.executable, str(REPO / "bench" / "run"), "--table",
                            str(tmp_path / "latest-dry-run.json")], capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    assert [r.split(" ")[1] for r in table.stdout.splitlines() if r.startswith("| P")] == \
        [f"P{n}" for n in range(1, 11)]

    assert "nvkmd-bench" not in dkms_status()
    assert not list(Path("/usr/src").glob("nvkmd-bench-*"))
    modules_after = {d.name: sorted(p.name for p in d.iterdir()) for d in Path("/lib/modules").iterdir()}
    assert modules_after == modules_before


def test_figure_lines_show_the_range_only_when_runs_spread_and_keep_the_format_when_unavailable():
    sys.path.insert(0, str(REPO / "bench"))
    from nvkbench import stats

    tight = stats.summarize([1.0, 1.1, 1.05])
    wide = stats.summarize([1.0, 1.3, 1.1])
    assert stats.fmt(tight, "s") == "1.05 s"
    assert stats.fmt(wide, "s") == "1.10 s [1.00..1.30]"
    assert stats.ratio(2.0, 4.0) == "0.50x" and stats.ratio(1.0, 0.0) == "n/a"
    fig = stats.Figure(2, "build cost", stats.fmt(wide, "s"), stats.ratio(1.1, 2.2), "raw make 2.20 s")
    assert LINE.match(fig.line()) and fig.measured
    gone = stats.unavailable(6, "boot ready check", "nvkmctl wait-ready\nnot landed yet", "dkms autoinstall")
    m = LINE.match(gone.line())
    assert m and m["value"] == "n/a (nvkmctl wait-ready not landed yet)" and not gone.measured
