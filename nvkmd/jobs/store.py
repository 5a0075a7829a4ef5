"""The persistent build queue and its history (sqlite3, WAL).

One row per job.  At most one *active* (queued or running) job exists per
(kernel, source version): a unique partial index says so, so a second
request for the same pair returns the existing job.  A job that was
running when the daemon died is queued again at the next start (a kill -9
leaves ``running`` behind); after ``MAX_ATTEMPTS`` interrupted starts it is
marked failed instead, so a build that crashes the daemon cannot crash it
for ever.

Every call is a short local transaction, made from the event loop's thread
only.  ``synchronous=NORMAL`` under WAL survives a killed process; only a
power loss can lose the last commits, and a lost commit is a job the next
rescan queues again.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterable

import structlog

from nvkmd.detect.plan import ActiveJob, PastJob
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.limits import MAX_FINISHED_JOBS
from nvkmd.model import ACTIVE_JOB_STATES, JOB_STATES, RESUMED, JobInfo
from nvkmd.system.kernels import release_key

log = structlog.get_logger()

SCHEMA_VERSION = 1
MAX_ATTEMPTS = 8
# As many finished jobs as a client may ask ListJobs for.
KEEP_HISTORY = MAX_FINISHED_JOBS



def _sql_set(states: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{state}'" for state in states) + ")"


# model's job states as SQL, e.g. "('queued', 'running')" for the active ones.
_ACTIVE = _sql_set(ACTIVE_JOB_STATES)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kernel TEXT NOT NULL,
    source_version TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN {_sql_set(JOB_STATES)}),
    force INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    queued_at REAL NOT NULL,
    started_at REAL NOT NULL DEFAULT 0,
    finished_at REAL NOT NULL DEFAULT 0,
    result TEXT NOT NULL DEFAULT '',
    cause TEXT NOT NULL DEFAULT '',
    hint TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT '',
    log TEXT NOT NULL DEFAULT '',
    build_key TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_active ON jobs (kernel, source_version)
    WHERE state IN {_ACTIVE};
CREATE INDEX IF NOT EXISTS jobs_by_pair ON jobs (kernel, source_version, id);
"""

FINISHED_STATE = {"success": "succeeded", "failed": "failed", "cancelled": "cancelled"}


def rank(kernel: str, running_kernel: str, boot_kernel: str | None) -> int:
    """2 for the running kernel, 1 for the one that boots next, 0 otherwise."""
    if kernel == running_kernel:
        return 2
    if boot_kernel and kernel == boot_kernel:
        return 1
    return 0


def next_job(queued: Iterable[JobInfo], running_kernel: str, boot_kernel: str | None) -> JobInfo | None:
    """Pure: which queued job to build next.  The running kernel first (it
    is the one in use now), then the one that boots next, then the newest
    release; among equals, the oldest request."""
    best = None
    best_key = None
    for job in queued:
        if job.state != "queued":
            continue
        key = (rank(job.kernel, running_kernel, boot_kernel), release_key(job.kernel), -job.id)
        if best_key is None or key > best_key:
            best, best_key = job, key
    return best


def ordered(queued: Iterable[JobInfo], running_kernel: str, boot_kernel: str | None) -> list[JobInfo]:
    """Pure: every queued job in build order."""
    rest = [j for j in queued if j.state == "queued"]
    out = []
    while rest:
        j = next_job(rest, running_kernel, boot_kernel)
        assert j is not None
        out.append(j)
        rest.remove(j)
    return out


def _info(row: sqlite3.Row) -> JobInfo:
    return JobInfo(id=row["id"], kernel=row["kernel"], source_version=row["source_version"],
                   state=row["state"], force=bool(row["force"]), queued_at=row["queued_at"],
                   started_at=row["started_at"], finished_at=row["finished_at"],
                   result=row["result"], cause=row["cause"], hint=row["hint"], log=row["log"],
                   reason=row["reason"])


class JobStore:
    def __init__(self, path: Path, clock=time.time):
        self.path = path
        self.clock = clock
        # Set when a damaged database was moved aside: the queue starts
        # empty and the first (full) rescan rebuilds it from the system.
        self.moved_aside: Path | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = self._open()
        except _Damaged as e:
            self.moved_aside = self._move_aside(e.reason)
            try:
                self.db = self._open()
            except _Damaged as again:
                raise NvkmdError(ErrorCode.INTERNAL, f"job database {path}: {again.reason}") from None

    def _open(self) -> sqlite3.Connection:
        path = self.path
        if os.path.lexists(path) and not path.is_file():
            raise _Damaged("not a regular file")
        db = None
        try:
            db = sqlite3.connect(str(path), isolation_level=None, timeout=10)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise _Damaged(f"damaged ({check})")
            db.executescript(_SCHEMA)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise NvkmdError(ErrorCode.INTERNAL, f"{path}: written by a newer nvkmd "
                                 f"(schema {version} > {SCHEMA_VERSION})")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return db
        except sqlite3.DatabaseError as e:
            if db is not None:
                db.close()
            if isinstance(e, sqlite3.OperationalError) and _transient(e):
                raise _full_or_internal(path, e) from None
            raise _Damaged(str(e)) from None
        except BaseException:
            if db is not None:
                db.close()
            raise

    def _move_aside(self, reason: str) -> Path:
        """``nvkmd.sqlite3.corrupt-<time>`` (with its -wal and -shm files)."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.clock()))
        dest = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while os.path.lexists(dest):
            n += 1
            dest = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            os.rename(self.path, dest)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if os.path.lexists(side):
                    os.rename(side, dest.with_name(dest.name + suffix))
        except OSError as e:
            raise NvkmdError(ErrorCode.INTERNAL, f"job database {self.path} is unusable ({reason}) "
                             f"and cannot be moved aside: {e.strerror}") from None
        log.error("job database unusable; moved aside, starting with an empty queue and a "
                  "full rescan", database=str(self.path), reason=reason, moved_to=str(dest))
        return dest

    def _tx(self):
        return _Transaction(self.db)

    def close(self) -> None:
        self.db.close()

    # -- startup ---------------------------------------------------------------
    def recover(self) -> tuple[list[int], list[int]]:
        """Queue again the jobs a crash left running; returns (requeued,
        given up).  Requeued jobs are forced: the previous attempt may have
        been killed between the module swap and depmod, and a forced build
        redoes the install (from the product cache when it can)."""
        now = self.clock()
        with self._tx():
            rows = self.db.execute("SELECT id, attempts FROM jobs WHERE state='running'").fetchall()
            requeued, failed = [], []
            for row in rows:
                if row["attempts"] >= MAX_ATTEMPTS:
                    self.db.execute(
                        "UPDATE jobs SET state='failed', result='failed', finished_at=?, "
                        "cause=?, hint=?, kind='interrupted' WHERE id=?",
                        (now, f"interrupted {row['attempts']} times",
                         "the daemon died during every attempt; see its journal", row["id"]))
                    failed.append(row["id"])
                else:
                    self.db.execute("UPDATE jobs SET state='queued', force=1, started_at=0, "
                                    "reason=? WHERE id=?", (RESUMED, row["id"]))
                    requeued.append(row["id"])
            self.db.execute(f"DELETE FROM jobs WHERE state NOT IN {_ACTIVE} AND id <= "
                            f"(SELECT id FROM jobs WHERE state NOT IN {_ACTIVE} "
                            "ORDER BY id DESC LIMIT 1 OFFSET ?)", (KEEP_HISTORY,))
        return requeued, failed

    # -- queue -------------------------------------------------------------------
    def enqueue(self, kernel: str, source_version: str, *, force: bool = False,
                reason: str = "") -> tuple[JobInfo, bool]:
        """The active job for the pair, created if there is none; (job, created).
        A forced request upgrades a queued unforced job."""
        with self._tx():
            row = self._active_row(kernel, source_version)
            if row is not None:
                if force and not row["force"] and row["state"] == "queued":
                    self.db.execute("UPDATE jobs SET force=1 WHERE id=?", (row["id"],))
                    row = self._row(row["id"])
                return _info(row), False
            cur = self.db.execute(
                "INSERT INTO jobs (kernel, source_version, state, force, reason, queued_at) "
                "VALUES (?, ?, 'queued', ?, ?, ?)",
                (kernel, source_version, int(force), reason, self.clock()))
            return _info(self._row(cur.lastrowid)), True

    def _row(self, job_id: int) -> sqlite3.Row:
        row = self.db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise NvkmdError(ErrorCode.NO_SUCH_JOB, f"no job {job_id}")
        return row

    def _active_row(self, kernel: str, source_version: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM jobs WHERE kernel=? AND source_version=? AND "
                               f"state IN {_ACTIVE}", (kernel, source_version)).fetchone()

    def get(self, job_id: int) -> JobInfo:
        return _info(self._row(job_id))

    def reason(self, job_id: int) -> str:
        return self._row(job_id)["reason"]

    def active(self) -> list[JobInfo]:
        return [_info(r) for r in self.db.execute(
            f"SELECT * FROM jobs WHERE state IN {_ACTIVE} ORDER BY id")]

    def active_pairs(self) -> list[ActiveJob]:
        return [ActiveJob(j.id, j.kernel, j.source_version, j.state == "running") for j in self.active()]

    def start(self, job_id: int) -> JobInfo:
        with self._tx():
            cur = self.db.execute("UPDATE jobs SET state='running', started_at=?, attempts=attempts+1 "
                                  "WHERE id=? AND state='queued'", (self.clock(), job_id))
            if cur.rowcount != 1:
                raise NvkmdError(ErrorCode.INVALID_ARGUMENT, f"job {job_id} is not queued")
            return _info(self._row(job_id))

    def requeue(self, job_id: int) -> None:
        """Back to the queue (the daemon is stopping in the middle of it)."""
        with self._tx():
            self.db.execute("UPDATE jobs SET state='queued', force=1, started_at=0, reason=? "
                            "WHERE id=? AND state='running'", (RESUMED, job_id))

    def finish(self, job_id: int, result: str, *, cause: str = "", hint: str = "", kind: str = "",
               log: str = "", build_key: str = "") -> JobInfo:
        """Record how a job ended.  ``build_key`` non-empty holds back an
        automatic retry of the same inputs (see detect.plan)."""
        state = FINISHED_STATE[result]
        with self._tx():
            self.db.execute(
                "UPDATE jobs SET state=?, result=?, finished_at=?, cause=?, hint=?, kind=?, log=?, "
                f"build_key=? WHERE id=? AND state IN {_ACTIVE}",
                (state, result, self.clock(), cause, hint, kind, log, build_key, job_id))
            return _info(self._row(job_id))

    # -- history -----------------------------------------------------------------
    def past(self) -> dict[tuple[str, str], PastJob]:
        """The newest finished job per (kernel, source version)."""
        out: dict[tuple[str, str], PastJob] = {}
        for row in self.db.execute(
                "SELECT kernel, source_version, result, build_key FROM jobs "
                f"WHERE state NOT IN {_ACTIVE} ORDER BY id"):
            out[(row["kernel"], row["source_version"])] = PastJob(row["result"], row["build_key"])
        return out

    def last_finished(self) -> dict[str, tuple[JobInfo, str, str]]:
        """kernel -> (its newest finished job that ran, diagnosis kind, build key)."""
        out: dict[str, tuple[JobInfo, str, str]] = {}
        for row in self.db.execute(f"SELECT * FROM jobs WHERE state NOT IN {_ACTIVE} "
                                   "AND started_at > 0 ORDER BY id"):
            out[row["kernel"]] = (_info(row), row["kind"], row["build_key"])
        return out

    def finished(self, limit: int) -> list[JobInfo]:
        rows = self.db.execute(f"SELECT * FROM jobs WHERE state NOT IN {_ACTIVE} "
                               "ORDER BY id DESC LIMIT ?", (max(0, limit),)).fetchall()
        return [_info(r) for r in reversed(rows)]

    def all(self) -> list[JobInfo]:
        return [_info(r) for r in self.db.execute("SELECT * FROM jobs ORDER BY id")]


class _Damaged(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _transient(e: sqlite3.OperationalError) -> bool:
    """Errors that say nothing about the file's content: never a reason to
    move a database aside (another process holds it, the disk is full)."""
    text = str(e).lower()
    return any(w in text for w in ("locked", "busy", "full", "disk i/o", "readonly", "read-only"))


def _full_or_internal(path: Path, e: sqlite3.Error) -> NvkmdError:
    text = str(e).lower()
    if "full" in text:
        return NvkmdError(ErrorCode.DISK_FULL, f"job database {path}: no space left on device "
                          f"(the state directory {path.parent} is full)")
    return NvkmdError(ErrorCode.INTERNAL, f"job database {path}: {e}")


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception; nests."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.outer = False

    def __enter__(self) -> None:
        self.outer = not self.db.in_transaction
        if self.outer:
            try:
                self.db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise _full_or_internal(Path(self.path()), e) from None

    def path(self) -> str:
        row = self.db.execute("PRAGMA database_list").fetchone()
        return row[2] if row else "nvkmd.sqlite3"

    def __exit__(self, exc_type, exc, _tb) -> bool:
        if not self.outer:
            return False
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
            except sqlite3.OperationalError as e:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
                raise _full_or_internal(Path(self.path()), e) from None
            return False
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError):
            # "database or disk is full" is a cause a person can act on.
            raise _full_or_internal(Path(self.path()), exc) from None
        return False
