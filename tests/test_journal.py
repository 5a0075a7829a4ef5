"""nvkmd's log in the journal: priorities and NVKMD_* fields a systemd user
can filter on (`journalctl -u nvkmd NVKMD_KERNEL=K`, `-p warning`, `-p err`).

The journal is real: systemd-journald runs in a private mount namespace
(tests/journald_driver.py), nvkmd's stderr is a journal stream as under
``StandardError=journal``, and the assertions are on what journalctl
returns for the same filters a user types."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, need_kernels
from nvkmd import logsetup

DRIVER = REPO / "tests" / "journald_driver.py"


def under_journald(spec: dict, timeout: float = 300) -> dict:
    if not Path("/lib/systemd/systemd-journald").exists():
        pytest.fail("systemd-journald is missing (package systemd; scripts/setup installs it)")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, str(DRIVER),
                        json.dumps(spec)], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return json.loads(r.stdout.splitlines()[-1])


def nvkmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "nvkmd.daemon", *args]


def by_event(entries: list[dict], event: str) -> list[dict]:
    return [e for e in entries if e.get("NVKMD_EVENT") == event]


def test_python_systemd_is_there():
    """The native journal needs python3-systemd (Debian) / systemd-python
    (PyPI); without it the fields below would silently be missing."""
    from systemd import journal  # noqa: F401


def test_a_failed_build_is_a_warning_with_its_kernel_job_result_and_cause(root):
    k = need_kernels(1)[-1]
    src = root.add_tiny_source()
    (src / "kernel-open" / "nvidia" / "nv.c").write_text('#error "broken on purpose"\n')
    root.configure(root.config_text + "[daemon]\ndebounce_s = 0.2\n[build]\ncache_keep = 0\n")
    root.add_kernel(k)
    out = under_journald({
        "argv": nvkmd("--root", str(root.path), "--bus", "none"),
        "env": {"NVKMD_RUNNING_KERNEL": k},
        "until": ["NVKMD_EVENT=build finished"],
        "queries": {
            "warning": ["-p", "warning"],
            "kernel": [f"NVKMD_KERNEL={k}"],
            "other-kernel": ["NVKMD_KERNEL=0.0.0-none"],
            "err": ["-p", "err"],
        },
    })
    assert out["exit"] == 0, [e["MESSAGE"] for e in out["entries"]]   # SIGTERM: a clean stop
    [done] = by_event(out["entries"], "build finished")
    assert done["PRIORITY"] == "4"
    assert done["NVKMD_KERNEL"] == k and done["NVKMD_RESULT"] == "failed"
    assert done["NVKMD_JOB"].isdigit() and done["NVKMD_CAUSE"]
    assert done["NVKMD_LOG"].endswith(".log")
    assert done["SYSLOG_IDENTIFIER"] == "nvkmd" and done["_TRANSPORT"] == "journal"
    assert done["MESSAGE"].startswith("build finished ")
    # What a user's filters return.
    assert done["__CURSOR"] in {e["__CURSOR"] for e in out["queries"]["warning"]}
    assert by_event(out["queries"]["kernel"], "build started")
    assert all(e["NVKMD_KERNEL"] == k for e in out["queries"]["kernel"])
    assert out["queries"]["other-kernel"] == []
    assert not by_event(out["queries"]["warning"], "starting")      # info stays out of -p warning
    assert out["queries"]["err"] == []
    started = by_event(out["entries"], "starting")[0]
    assert started["PRIORITY"] == "6"
    # Nothing went to the stream: every event was a native entry.
    assert [e for e in out["entries"] if e["_TRANSPORT"] == "stdout"] == []


def test_a_bad_configuration_at_start_is_err(root):
    root.configure("[build]\njobs = -3\n")
    out = under_journald({
        "argv": nvkmd("--root", str(root.path), "--bus", "none"),
        "queries": {"err": ["-p", "err"]},
    })
    assert out["exit"] == 78
    [e] = out["queries"]["err"]
    assert e["PRIORITY"] == "3" and "build.jobs" in e["MESSAGE"]


def test_without_journald_events_stay_key_value_lines_on_stderr(root):
    root.configure("[build]\njobs = -3\n")
    r = subprocess.run(nvkmd("--root", str(root.path), "--bus", "none"), capture_output=True,
                       text=True, timeout=60, env={**os.environ, "JOURNAL_STREAM": "1:2"})
    # JOURNAL_STREAM that is not our stderr (inherited, stderr redirected): not the journal.
    assert r.returncode == 78
    assert r.stderr.startswith("nvkmd: ") and "build.jobs" in r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_field_mapping():
    fields = logsetup.journal_fields({"event": "build finished", "level": "warning",
                                      "kernel": "6.1.0-47-amd64", "job": 7, "result": "failed",
                                      "cause": "compile error", "elapsed_s": 1.5, "force": False,
                                      "odd-key.x": None})
    assert fields["PRIORITY"] == "4"
    assert fields["NVKMD_KERNEL"] == "6.1.0-47-amd64" and fields["NVKMD_JOB"] == "7"
    assert fields["NVKMD_RESULT"] == "failed" and fields["NVKMD_CAUSE"] == "compile error"
    assert fields["NVKMD_ELAPSED_S"] == "1.5" and fields["NVKMD_FORCE"] == "false"
    assert fields["NVKMD_ODD_KEY_X"] == ""
    assert fields["MESSAGE"] == ("build finished kernel=6.1.0-47-amd64 job=7 result=failed "
                                 "cause=compile error elapsed_s=1.5 force=false odd-key.x=")
    assert {logsetup.journal_fields({"event": "e", "level": lv})["PRIORITY"]
            for lv in ("error", "exception")} == {"3"}
    assert logsetup.journal_fields({"event": "e", "level": "critical"})["PRIORITY"] == "2"
    assert logsetup.journal_fields({"event": "e", "level": "debug"})["PRIORITY"] == "7"


def test_a_traceback_is_in_the_message_and_its_own_field():
    fields = logsetup.journal_fields({"event": "crashed: ValueError: x", "level": "error",
                                      "exception": "Traceback (most recent call last):\n  ..."})
    assert fields["PRIORITY"] == "3"
    assert fields["MESSAGE"] == "crashed: ValueError: x\nTraceback (most recent call last):\n  ..."
    assert fields["NVKMD_EXCEPTION"].startswith("Traceback")
    assert "NVKMD_LEVEL" not in fields and "NVKMD_EVENT" in fields


def test_journal_stream_must_be_this_very_stderr(tmp_path, monkeypatch):
    import socket
    a, b = socket.socketpair()
    with a, b, open(tmp_path / "f", "w") as other:
        st = os.fstat(a.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logsetup.under_journald(a.makefile("w"))
        assert not logsetup.under_journald(other)
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not logsetup.under_journald(a.makefile("w"))
