"""Progress a person can trust (issue 16): the percent and the phase never
go backwards, the conftest total is the tree's own (so the percent does not
stall while they run), and the previous build of the same driver version
gives the weights and the ETA.

The inputs are real: tests/data/progress/ holds the marker lines of real
builds (the tiny tree's whole ``make modules`` output against Debian's
6.1.0-56 headers, and NVIDIA 535.261.03 from Debian's tarball against
6.1.0-57, which printed every conftest and failed at its second object),
and the conftest total is counted on Debian's real tarball against the
machine's real headers.  Compile and link of a whole NVIDIA build follow
the order Kbuild prints (the tiny log shows it: composite objects linked,
then each ``.mod.o`` compiled, then each ``.ko`` linked).
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

import helpers
from helpers import REPO, need_kernels
from nvkmd.build import history
from nvkmd.build.kbuild import count_lines
from nvkmd.build.progress import RANK, Counts, Learned, Progress, ProgressTracker, kind_of
from nvkmd.system.kernels import Kernel
from nvkmd.system.source import Source

DATA = REPO / "tests" / "data" / "progress"
TINY = (DATA / "tiny-9.9.1-6.1.0-56.make.txt").read_text().splitlines()
NV_REAL = (DATA / "nvidia-535.261.03-6.1.0-57.markers.txt").read_text().splitlines()
TARBALL = Path("/usr/src/nvidia-open-kernel.tar.xz")
MODULES = ("nvidia", "nvidia-uvm", "nvidia-modeset", "nvidia-drm", "nvidia-peermem")


def nvidia_build(objects: int) -> list[str]:
    """A whole 535 build's marker lines: the real conftests, then the
    objects, then Kbuild's link / .mod.o / .ko order."""
    conftests = [x for x in NV_REAL if kind_of(x) == "conftest"]
    return (conftests + [f"  CC [M]  <build>/obj{i}.o" for i in range(objects)]
            + [f"  LD [M]  <build>/{m}.o" for m in MODULES]
            + [f"  CC [M]  <build>/{m}.mod.o" for m in MODULES]
            + [f"  LD [M]  <build>/{m}.ko" for m in MODULES])


def shown(tracker: ProgressTracker, lines: list[str]) -> list[tuple[int, Progress]]:
    """(line index, progress) for every change the tracker reports."""
    return [(i, p) for i, line in enumerate(lines) if (p := tracker.feed(line)) is not None]


def assert_monotone(changes: list[tuple[int, Progress]]) -> None:
    for (_, a), (i, b) in zip(changes, changes[1:]):
        assert b.percent >= a.percent, f"line {i}: {a} -> {b}"
        assert RANK[b.phase] >= RANK[a.phase], f"line {i}: {a} -> {b}"
    assert all(p.percent <= 99 for _, p in changes)


def test_the_tiny_trees_real_output_never_goes_back():
    """The real output ends link, compile (.mod.o), link: the phase stays link."""
    kinds = [k for line in TINY if (k := kind_of(line))]
    assert kinds[-4:] == ["compile", "compile", "link", "link"] and "link" in kinds[:-4], kinds
    changes = shown(ProgressTracker(Counts(2, 3, 2)), TINY)
    assert_monotone(changes)
    assert changes[-1][1].phase == "link"


@pytest.fixture(scope="module")
def real_535_counts(tmp_path_factory) -> Counts:
    """count_lines on Debian's real 535 tree against the machine's headers."""
    if not TARBALL.is_file():
        pytest.fail(f"{TARBALL} missing: scripts/setup installs nvidia-open-kernel-source")
    k = need_kernels(1)[-1]
    base = tmp_path_factory.mktemp("nv535")
    root = helpers.TestRoot(base / "root")
    root.add_kernel(k)
    with tarfile.open(TARBALL) as t:
        t.extractall(base / "src", filter="data") if hasattr(tarfile, "data_filter") \
            else t.extractall(base / "src")  # noqa: S202  (Debian's own archive)
    tree = next(p.parent for p in (base / "src").rglob("count-lines.mk"))
    from nvkmd.paths import Paths
    paths, _ = Paths.load(str(root.path))
    src = Source("debian", TARBALL, tree, "535.261.03", MODULES, "-")
    return count_lines(Kernel(paths, k), src, tree)


def test_conftest_total_is_what_the_real_535_tree_prints(real_535_counts):
    """count-lines.mk says 273; Kbuild's header presence tests make the 375
    CONFTEST lines the real build printed."""
    printed = sum(kind_of(x) == "conftest" for x in NV_REAL)
    assert printed == 375
    assert real_535_counts.conftests == printed, real_535_counts


def test_535_never_goes_back_and_never_stalls(real_535_counts):
    lines = nvidia_build(real_535_counts.objects)
    changes = shown(ProgressTracker(real_535_counts), lines)
    assert_monotone(changes)
    # Not one stretch of the build without a change: at most one percent's
    # worth of lines (plus rounding) between two changes, conftests included.
    step = real_535_counts.total / 100
    gaps = [b - a for (a, _), (b, _) in zip(changes, changes[1:])]
    assert max(gaps) <= step + 1, (max(gaps), step)
    conftest_end = [i for i, p in changes if p.phase == "conftest"][-1]
    assert conftest_end >= 370, "the percent stopped moving before the conftests ended"
    assert changes[-1][1] == Progress("link", 99)


def test_previous_build_gives_weights_and_eta(tmp_path):
    """Same driver version, same machine: the second build's percent follows
    time, and its ETA is the first build's duration less the time spent."""
    lines = nvidia_build(40)
    # A build where conftests are quick and objects slow (as on this machine).
    cost = {"conftest": 0.1, "compile": 2.0, "link": 0.5}
    now = [0.0]

    def clock() -> float:
        return now[0]

    first = ProgressTracker(Counts(273, 40, 5), clock=clock)
    for line in lines:
        now[0] += cost[kind_of(line)]
        first.feed(line)
    learned = first.learned_now()
    assert learned.lines == {"conftest": 375, "compile": 45, "link": 10}
    assert learned.total_s == pytest.approx(now[0])

    history.record(tmp_path, "535.261.03", learned, at=1.0)
    again = history.previous(tmp_path, "535.261.03")
    assert again == learned
    assert history.previous(tmp_path, "550.1") is None

    now[0] = 0.0
    second = ProgressTracker(Counts(273, 40, 5), again, clock)
    changes = []
    for line in lines:
        now[0] += cost[kind_of(line)]
        if (p := second.feed(line)) is not None:
            changes.append((now[0], p))
    assert_monotone(list(enumerate(p for _, p in changes)))
    for t, p in changes:
        assert abs(p.percent - 100 * t / learned.total_s) <= 2, (t, p)
        assert p.eta_s == pytest.approx(learned.total_s - t)
    # Without a previous build there is no ETA to give.
    assert ProgressTracker(Counts(1, 1, 1), clock=clock).feed(" CONFTEST: a").eta_s == -1


def test_history_file_damaged_or_odd_is_no_previous_build(tmp_path):
    f = tmp_path / history.FILE
    for text in ("", "{", "[]", '{"kbuild:1.0": 5}', '{"kbuild:1.0": {"lines": {}, "seconds": {}, "total_s": 1}}',
                 '{"kbuild:1.0": {"lines": {"conftest": "x"}, "seconds": {}, "total_s": -1}}',
                 '{"kbuild:1.0": {"lines": {"conftest": NaN}, "seconds": {}, "total_s": 3}}'):
        f.write_text(text)
        assert history.previous(tmp_path, "1.0") is None, text
    # Many versions: the newest few are kept.
    for i in range(history.KEEP + 3):
        history.record(tmp_path, f"1.{i}", Learned({"conftest": 1}, {"conftest": 1.0}, 1.0), at=float(i))
    assert history.previous(tmp_path, "1.0") is None
    assert history.previous(tmp_path, f"1.{history.KEEP + 2}") is not None


def test_a_real_build_is_remembered_for_the_next(root):
    """``nvkmd --once`` builds the tiny tree for real: the state dir then
    holds what it printed, which the next build of 9.9.1 starts from."""
    from helpers import run_nvkmd
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    assert run_nvkmd("--once", "--root", str(root.path)).returncode == 0
    learned = history.previous(root.path / "var" / "lib" / "nvkmd", "9.9.1")
    assert learned is not None
    # As the recorded output of the same build shows (tests/data/progress).
    assert learned.lines == {"conftest": 2, "compile": 5, "link": 4}
    assert learned.total_s > 0 and sum(learned.seconds.values()) <= learned.total_s
    t = ProgressTracker(Counts(2, 3, 2), learned, clock=lambda: 0.0)
    assert t.feed(" CONFTEST: kernel_version").eta_s == pytest.approx(learned.total_s)


def test_the_eta_is_shown_where_people_look():
    from nvkmd.agent.rules import progress_notice
    from nvkmd.cli.render import progress_bar
    assert progress_notice("6.1.0-9-amd64", "compile", 40, eta_s=65.2).body == \
        "Compiling: 40%, about 1:05 left"
    assert progress_notice("6.1.0-9-amd64", "compile", 40).body == "Compiling: 40%"
    assert progress_bar("6.1.0-9-amd64", "link", 99, eta_s=4).endswith(" 99%  about 4s left")
    assert progress_bar("6.1.0-9-amd64", "link", 99).endswith(" 99%")
