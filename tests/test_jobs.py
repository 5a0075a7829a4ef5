"""The persistent queue: ordering (pure), de-duplication, crash recovery and
history, on a real sqlite database."""

from __future__ import annotations

import sqlite3

import pytest

from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.jobs.store import MAX_ATTEMPTS, JobStore, next_job, ordered
from nvkmd.model import JobInfo


def q(job_id: int, kernel: str, state: str = "queued") -> JobInfo:
    return JobInfo(job_id, kernel, "535.1", state)


def test_order_running_kernel_then_boot_kernel_then_newest():
    jobs = [q(1, "6.1.0-9-amd64"), q(2, "6.1.0-10-amd64"), q(3, "6.1.0-47-amd64"),
            q(4, "6.5.0-1-amd64"), q(5, "5.10.0-30-amd64")]
    got = [j.kernel for j in ordered(jobs, "6.1.0-9-amd64", "5.10.0-30-amd64")]
    assert got == ["6.1.0-9-amd64", "5.10.0-30-amd64", "6.5.0-1-amd64", "6.1.0-47-amd64",
                   "6.1.0-10-amd64"]
    # Unknown boot kernel, running kernel not queued: newest first (numerically: -10 > -9).
    got = [j.kernel for j in ordered(jobs, "4.0.0", None)]
    assert got == ["6.5.0-1-amd64", "6.1.0-47-amd64", "6.1.0-10-amd64", "6.1.0-9-amd64",
                   "5.10.0-30-amd64"]


def test_next_job_skips_running_and_finished():
    jobs = [q(1, "6.5.0-1", "running"), q(2, "6.1.0-1", "failed"), q(3, "6.0.0-1")]
    assert next_job(jobs, "6.5.0-1", None).id == 3
    assert next_job([], "x", None) is None


@pytest.fixture
def store(tmp_path):
    now = [100.0]
    s = JobStore(tmp_path / "state" / "nvkmd.sqlite3", clock=lambda: now[0])
    s.now = now
    yield s
    s.close()


def test_one_active_job_per_kernel_and_source_version(store):
    a, created = store.enqueue("6.1.0-1", "535.1", reason="kernel added")
    assert created and a.state == "queued" and a.queued_at == 100.0
    b, created = store.enqueue("6.1.0-1", "535.1")
    assert not created and b.id == a.id
    c, created = store.enqueue("6.1.0-1", "535.2")
    assert created and c.id != a.id
    # A forced request upgrades the queued job rather than adding one.
    d, created = store.enqueue("6.1.0-1", "535.1", force=True)
    assert not created and d.id == a.id and d.force
    # The database itself refuses a second active row for the pair.
    with pytest.raises(sqlite3.IntegrityError):
        store.db.execute("INSERT INTO jobs (kernel, source_version, state, queued_at) "
                         "VALUES ('6.1.0-1', '535.1', 'queued', 0)")
    # Once finished, the pair may be queued again.
    store.start(a.id)
    store.finish(a.id, "failed", cause="boom", hint="fix it", kind="kernel-api", log="/l", build_key="k")
    e, created = store.enqueue("6.1.0-1", "535.1")
    assert created and e.id != a.id


def test_lifecycle_and_history(store):
    j, _ = store.enqueue("6.1.0-1", "535.1")
    store.now[0] = 110.0
    running = store.start(j.id)
    assert running.state == "running" and running.started_at == 110.0
    with pytest.raises(NvkmdError) as e:
        store.start(j.id)
    assert e.value.code is ErrorCode.INVALID_ARGUMENT
    store.now[0] = 130.0
    done = store.finish(j.id, "success", log="/var/log/nvkmd/x.log", build_key="k")
    assert (done.state, done.result, done.finished_at, done.log) == \
        ("succeeded", "success", 130.0, "/var/log/nvkmd/x.log")
    assert store.past()[("6.1.0-1", "535.1")].build_key == "k"
    assert store.last_finished()["6.1.0-1"][0].id == j.id
    assert store.active() == []
    assert [x.id for x in store.finished(5)] == [j.id]
    with pytest.raises(NvkmdError) as e:
        store.get(999)
    assert e.value.code is ErrorCode.NO_SUCH_JOB


def test_interrupted_jobs_are_queued_again_forced_then_given_up(tmp_path):
    path = tmp_path / "nvkmd.sqlite3"
    s = JobStore(path)
    j, _ = s.enqueue("6.1.0-1", "535.1")
    s.start(j.id)
    s.close()                          # as if the daemon died mid-build
    for attempt in range(1, MAX_ATTEMPTS):
        s = JobStore(path)
        requeued, failed = s.recover()
        assert (requeued, failed) == ([j.id], [])
        again = s.get(j.id)
        assert again.state == "queued" and again.force and again.started_at == 0
        s.start(j.id)
        s.close()
    s = JobStore(path)
    requeued, failed = s.recover()
    assert (requeued, failed) == ([], [j.id])
    given_up = s.get(j.id)
    assert given_up.state == "failed" and "interrupted" in given_up.cause
    s.close()


def test_requeue_after_shutdown(store):
    j, _ = store.enqueue("6.1.0-1", "535.1")
    store.start(j.id)
    store.requeue(j.id)
    back = store.get(j.id)
    assert back.state == "queued" and back.force and back.started_at == 0


def test_wal_mode_and_integrity(store):
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
