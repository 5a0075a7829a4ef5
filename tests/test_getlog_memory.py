"""GetLog costs bounded memory whatever the log and however many ask at
once (issue 16, P4): each answer is at most the log's last MAX_TAIL_BYTES,
and the daemon builds the next answer only once the previous one has left,
so concurrent calls do not pile up replies in it (40 GetLog(100000) on a
big log of ordinary lines took it to 400 MiB)."""

from __future__ import annotations

import asyncio

from dbus_helpers import run, serve_root

from nvkmd.build.log import MAX_TAIL_BYTES

LINE = "  CC [M]  /usr/src/nvidia/kernel-open/nvidia/nv-file-%07d.o: warning: unused variable\n"


def _hwm_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_forty_getlogs_of_a_big_log_of_ordinary_lines_cost_bounded_memory(tmp_path):
    with serve_root(tmp_path, kernels=1) as s:
        k = s.kernels[0]
        log = (s.root.path / "var/log/nvkmd" / k / "latest.log").resolve()
        n = (128 << 20) // len(LINE)
        with open(log, "w") as f:
            f.writelines(LINE % i for i in range(n))
        before = _hwm_kib(s.daemon.pid)

        async def many(c):
            return await asyncio.gather(*(c.get_log(0, k, 100000) for _ in range(40)))
        answers = run(s.address, many, timeout=120)
        grew = _hwm_kib(s.daemon.pid) - before
        for path, lines in answers:
            assert lines[-1] == (LINE % (n - 1)).rstrip("\n")
            # consecutive to the end, a whole first line, within the cap
            assert lines[0] == (LINE % (n - len(lines))).rstrip("\n")
            assert sum(len(line) + 1 for line in lines) <= MAX_TAIL_BYTES
        assert len(answers[0][1]) > 1000
        assert grew < 24 * 1024, f"the daemon's peak memory grew by {grew // 1024} MiB"
        # and it still answers the rest of the API
        assert run(s.address, lambda c: c.status()).kernels
