"""Answers that tell the truth and cost bounded memory (issue 12): Rescan is
done only once it is, an error when it could not run, never "rescan done"
for a rescan that failed; GetLog reads only the end of a log."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from dbus_helpers import FAST_CONFIG, run, serve_root
from helpers import REPO


def nvkmctl(address: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nvkmd.cli", "--bus", address, *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_a_rescan_that_cannot_run_is_an_error_and_one_that_ran_is_done(tmp_path):
    # pacman's lock is its db.lck existing: held by a transaction that never ends.
    config = FAST_CONFIG.replace("[daemon]\n", "[daemon]\nlock_wait_max_s = 1\n")
    with serve_root(tmp_path, kernels=1, config=config) as s:
        lock = s.root.path / "var/lib/pacman/db.lck"
        lock.parent.mkdir(parents=True)
        lock.write_text("")
        r = nvkmctl(s.address, "rescan")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "rescan done" not in r.stdout
        assert "rescan not done" in r.stderr and "pacman" in r.stderr
        lock.unlink()
        r = nvkmctl(s.address, "rescan")
        assert r.returncode == 0 and r.stdout == "rescan done\n", r.stdout + r.stderr


def _hwm_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_getlog_on_a_huge_log_reads_only_its_end(tmp_path):
    """40 concurrent GetLog(100000) calls on a 200 MB log: bounded memory."""
    with serve_root(tmp_path, kernels=1) as s:
        k = s.kernels[0]
        log = (s.root.path / "var/log/nvkmd" / k / "latest.log").resolve()
        with open(log, "r+b") as f:          # 200 MB without a newline, then two lines
            f.truncate(200 << 20)
            f.seek(0, 2)
            f.write(b"\nthe last but one\nthe last\n")
        before = _hwm_kib(s.daemon.pid)

        async def many(c):
            return await asyncio.gather(*(c.get_log(0, k, 100000) for _ in range(40)))
        answers = run(s.address, many, timeout=120)
        assert all(lines[-2:] == ["the last but one", "the last"] for _, lines in answers), \
            [a[1][-3:] for a in answers[:2]]
        assert all(len("".join(lines)) < 16 << 20 for _, lines in answers)
        grew = _hwm_kib(s.daemon.pid) - before
        assert grew < 100 * 1024, f"the daemon's peak memory grew by {grew // 1024} MiB"
