"""The core's CoreAPI in-process, on a real test root with the real engine:
argument checks with the right error codes, events, states, requests."""

from __future__ import annotations

import asyncio
import fcntl
import os

import pytest

from harness.waiting import until
from helpers import need_kernels
from nvkmd.config import Config
from nvkmd.daemon.core import Core
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.model import JobFinished, JobProgress, JobQueued, StateChanged
from nvkmd.paths import Paths


def make_core(root) -> Core:
    paths = Paths.build(root.path)
    config = Config.load(paths.config_file)
    return Core(Paths.build(root.path, config=config), config)


def code(fn, *args) -> ErrorCode:
    with pytest.raises(NvkmdError) as e:
        fn(*args)
    assert e.value.message and "\n" not in e.value.message
    return e.value.code


def test_arguments_are_checked(root):
    k = need_kernels(1)[-1]
    root.add_tiny_source()
    root.add_kernel(k)
    root.add_kernel("9.9.9-noheaders", headers=False)

    async def main():
        core = make_core(root)
        await core.start()             # scans; the builder is not started
        try:
            bad = ErrorCode.INVALID_ARGUMENT
            for kernel in ("../etc", "a/b", "x\0y", "k" * 4096, 5, None, [k]):
                assert code(core.build, kernel, False) is bad
                assert code(core.get_log, 0, kernel, 10) is bad
            assert code(core.build, k, "yes") is bad
            assert code(core.build, k, 1) is bad
            assert code(core.build, "9.9.9-gone", False) is ErrorCode.NO_SUCH_KERNEL
            assert code(core.build, "9.9.9-noheaders", False) is ErrorCode.HEADERS_MISSING
            for job_id in (True, "1", 1.0, 0, -1, 2**64):
                assert code(core.cancel, job_id) is bad
            assert code(core.cancel, 4242) is ErrorCode.NO_SUCH_JOB
            assert code(core.get_log, 4242, "", 10) is ErrorCode.NO_SUCH_JOB
            assert code(core.get_log, 0, "", 10**9) is bad
            assert code(core.get_log, 0, "", -1) is bad
            assert code(core.get_log, 0, "9.9.9-gone", 10) is ErrorCode.NO_SUCH_KERNEL
            assert code(core.jobs, -1) is bad
            assert code(core.jobs, "20") is bad
            assert code(core.cleanup, -1, False) is bad
            assert code(core.cleanup, 1, "no") is bad
            assert code(core.subscribe, 5) is bad
            # The daemon is still fine and the first scan queued the kernel.
            [job] = core.jobs(0)
            assert (job.kernel, job.state) == (k, "queued")
            states = {s.release: s.state for s in core.kernels()}
            assert states == {k: "queued", "9.9.9-noheaders": "waiting-for-headers"}
            assert core.get_log(0, "", 10) == ("", [])
        finally:
            await core.stop()
    asyncio.run(main())


def test_build_events_states_requests_and_cancel(root):
    k = need_kernels(1)[-1]
    tree = root.add_tiny_source()
    nv = tree / "kernel-open" / "nvidia" / "nv.c"
    good = nv.read_text()
    nv.write_text(good + "\n#error broken on purpose\n")
    root.add_kernel(k)

    async def main():
        core = make_core(root)
        events = []
        core.subscribe(events.append)
        await core.start()
        core.run()
        try:
            failed = await until(lambda: [j for j in core.jobs(5) if j.state == "failed"], what="failure")
            [ks] = core.kernels()
            assert ks.state == "failed" and ks.last_build.result == "failed"
            assert ks.last_build.log and ks.last_build.cause
            path, lines = core.get_log(failed[0].id, "", 5)
            assert path == failed[0].log and len(lines) == 5 and lines[-2].startswith("# result: failed")
            assert core.get_log(0, k, 5) == (path, lines)
            # Not retried by itself...
            core.rescan()
            await until(lambda: core.intake.settled.is_set() and not core.intake.debouncer.pending, what="rescan")
            assert len(core.jobs(10)) == 1
            # ...but on request it is.
            [again] = core.build(k, False)
            assert again != failed[0].id
            assert core.build(k, False) == [again]        # de-duplicated while active
            await until(lambda: [j for j in core.jobs(5) if j.id == again and j.state == "failed"],
                        what="the requested retry")
            # Mending the source changes the inputs: retried by itself, and fixed.
            nv.write_text(good)
            core.rescan()
            done = await until(lambda: [j for j in core.jobs(5) if j.id > again and
                                        j.state == "succeeded"], what="success")
            ids = [done[0].id]
            await until(lambda: core.kernels()[0].state == "ready", what="ready")
            assert core.build(k, False) == []           # current: nothing to do
            # Forced, then cancelled while running.  It would be served from
            # the product cache at once: the test holds the kernel's build lock
            # (as `nvkmd --once` would), so it stays running until cancelled.
            fd = os.open(root.path / "var/lib/nvkmd/locks" / f"{k}.lock", os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                [forced] = core.build(k, True)
                await until(lambda: any(j.id == forced and j.state == "running"
                                        for j in core.jobs(0)), what="running")
                core.cancel(forced)
            finally:
                os.close(fd)
            gone = await until(lambda: [j for j in core.jobs(5) if j.id == forced and
                                        j.state == "cancelled"], what="cancelled")
            assert gone[0].cause == "cancelled on request"
            assert code(core.cancel, forced) is ErrorCode.INVALID_ARGUMENT   # already finished
        finally:
            await core.stop()
        kinds = [type(e) for e in events]
        assert JobQueued in kinds and JobFinished in kinds and StateChanged in kinds
        progress = [e for e in events if isinstance(e, JobProgress) and e.job_id == ids[0]]
        assert progress and [p.percent for p in progress] == sorted(p.percent for p in progress)
        assert progress[-1].phase == "done" and progress[-1].percent == 100
        results = [(e.job_id, e.result) for e in events if isinstance(e, JobFinished)]
        assert results == [(failed[0].id, "failed"), (again, "failed"), (ids[0], "success"),
                           (forced, "cancelled")]
        assert any(isinstance(e, StateChanged) and e.state == "building" and e.current_job == ids[0]
                   for e in events)
    asyncio.run(main())
