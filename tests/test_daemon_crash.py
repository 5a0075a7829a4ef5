"""kill -9 at random moments of a build, again and again: each restart
resumes the same job, no module is ever half installed, and the job
database stays intact."""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path

from daemon_helpers import assert_install_whole, installed_version
from helpers import need_kernels, set_tiny_version, wait_for

KILLS = 5


def _integrity(db: Path) -> str:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def _lines(log: Path) -> list[str]:
    return log.read_text(errors="replace").splitlines()


def test_kill9_during_builds_then_restart(root, nvkmd_daemon):
    k = need_kernels(1)[-1]
    tree = root.add_tiny_source()
    # No product cache: every restart compiles again, so every round has a
    # whole build to be killed in.
    root.configure(root.config_text + "[build]\ncache_keep = 0\n[daemon]\ndebounce_s = 0.2\n")
    root.add_kernel(k)
    seed = int(os.environ.get("NVKMD_TEST_SEED", random.randrange(1 << 30)))
    print(f"NVKMD_TEST_SEED={seed}")
    rng = random.Random(seed)
    latest = root.path / "var" / "log" / "nvkmd" / k / "latest.log"
    d = nvkmd_daemon(root)
    seen: set[Path] = set()
    kills, attempts, minor = 0, 0, 1
    killed_jobs: list[int] = []
    # (job id, attempts) of every build the loop aimed at: each start counts an attempt.
    started: set[tuple[int, int]] = set()

    def new_build():
        gone = d.exited()
        for j in d.jobs_for(k):
            if j["state"] == "running" and (j["id"], j["attempts"]) not in started:
                return j
        if gone:
            raise AssertionError(gone)
        return None
    while kills < KILLS:
        attempts += 1
        assert attempts <= 2 * KILLS, "builds kept finishing before the kill"
        build = wait_for(new_build, 120, "a build to start")
        started.add((build["id"], build["attempts"]))

        def this_build() -> Path | None:
            # latest.log moves to the new build's log when it opens.
            if latest.exists() and latest.resolve() not in seen:
                return latest.resolve()
            return None
        log = wait_for(this_build, 60, "the new build's log")
        seen.add(log)
        # A random moment: once the build has written a random number of
        # lines.  The tiny build writes a header (10 lines), make's output
        # (~20), strip, then "$ depmod" (~34) once the new modules were
        # swapped in and before depmod ran: the riskiest moment is included.
        n = rng.randint(1, 34)
        deadline = time.monotonic() + 120
        while True:                      # a tight poll: the moment must not slip by
            text = _lines(log)
            if len(text) >= n or any(x.startswith("# result:") for x in text):
                break
            assert time.monotonic() < deadline, f"the build never wrote {n} lines"
            time.sleep(0.002)
        d.kill9()
        print(f"attempt {attempts}: killed after {len(_lines(log))} lines of {log.name} (aimed at {n})")

        assert _integrity(d.db) == "ok"
        assert_install_whole(root, k)
        active = [j for j in d.jobs() if j["state"] in ("queued", "running")]
        d.start()
        d.wait_ready()
        if not active:
            # It finished just before the kill: give it something new to build.
            minor += 1
            set_tiny_version(tree, f"9.9.{minor}")
            continue
        [job] = active
        assert job["state"] == "running"
        kills += 1
        killed_jobs.append(job["id"])
        # The restarted daemon resumes this very job: started once more.
        resumed = wait_for(new_build, 120, f"job {job['id']} to start again")
        assert resumed["id"] == job["id"] and resumed["attempts"] == job["attempts"] + 1
    version = f"9.9.{minor}"
    done = d.wait_job(k, "succeeded", version=version, timeout=180)
    assert done["id"] == killed_jobs[-1]
    jobs = d.jobs()
    # One job per source version, each finished once: resumed, never duplicated.
    assert sorted(j["source_version"] for j in jobs) == [f"9.9.{m}" for m in range(1, minor + 1)]
    assert {j["id"] for j in jobs} >= set(killed_jobs)
    assert installed_version(root, k) == version
    assert_install_whole(root, k)
    assert "updates/nvkmd/nvidia.ko" in (root.modules / k / "modules.dep").read_text()
    assert list((root.modules / k / "updates").glob(".nvkmd-*")) == []
    assert _integrity(d.db) == "ok"
    assert d.stop() == 0
