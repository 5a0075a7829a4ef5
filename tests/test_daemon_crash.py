"""kill -9 at random moments of a build, again and again: each restart
resumes the same job, no module is ever half installed, and the job
database stays intact."""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

from daemon_helpers import assert_install_whole, installed_version, nvkmd_daemon  # noqa: F401
from helpers import need_kernels, wait_for

ROUNDS = 5


def _integrity(db: Path) -> str:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def test_kill9_during_builds_then_restart(root, nvkmd_daemon):
    k = need_kernels(1)[-1]
    root.add_tiny_source()
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
    job_id = None
    kills = 0
    for round_ in range(ROUNDS):
        d.wait_log(r"event='build started'", timeout=120)

        def this_build() -> Path | None:
            # latest.log moves to the new build's log when it opens.
            if latest.exists() and latest.resolve() not in seen:
                return latest.resolve()
            return None
        log = wait_for(this_build, 60, "the new build's log")
        seen.add(log)
        # A random moment: after the build wrote a random number of lines.
        # The tiny build writes about 42: a header (10), make (~20), strip,
        # depmod, "installed ..." (~38), then the result; 38 is the last
        # line before the job is recorded as done.
        lines = rng.randint(1, 38)
        wait_for(lambda: len(log.read_text().splitlines()) >= lines
                 or "# result:" in log.read_text(), 120, f"{lines} log lines")
        d.kill9()
        print(f"round {round_}: killed after {len(log.read_text().splitlines())} lines of {log.name}")

        assert _integrity(d.db) == "ok"
        assert_install_whole(root, k)
        jobs = d.jobs()
        assert len(jobs) == 1, jobs
        job_id = job_id or jobs[0]["id"]
        assert jobs[0]["id"] == job_id
        d.start()
        d.wait_ready()
        if jobs[0]["state"] == "succeeded":
            break              # it finished just before the kill: nothing left to resume
        assert jobs[0]["state"] == "running"
        kills += 1
    assert kills >= ROUNDS - 1, f"only {kills} kills hit a running build"
    done = d.wait_job(k, "succeeded", timeout=180)
    assert done["id"] == job_id
    assert [j["id"] for j in d.jobs()] == [job_id]        # resumed, never duplicated
    assert installed_version(root, k) == "9.9.1"
    assert_install_whole(root, k)
    assert "updates/nvkmd/nvidia.ko" in (root.modules / k / "modules.dep").read_text()
    assert list((root.modules / k / "updates").glob(".nvkmd-*")) == []
    assert _integrity(d.db) == "ok"
    assert d.stop() == 0
