"""Every method, property and signal of io.github.nvkmd.Manager1, against the
real daemon on a private dbus-daemon configured with the project's busconfig.

One daemon serves the module's tests: a test root with the tiny source and
two kernels with real headers (the first one is the running kernel)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType

from dbus_helpers import owner, raw_call, run, serve_root
from helpers import TestRoot as Root
from helpers import wait_for
from nvkmd import api
from nvkmd.errors import ErrorCode
from nvkmd.model import DaemonStatus
from nvkmd.build.progress import PHASES

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serve_root(tmp_path_factory.mktemp("served"), kernels=2) as s:
        yield s


async def collect(c, action, done, timeout: float = 120) -> list[tuple[float, Message]]:
    """Every signal from the daemon (and PropertiesChanged) while ``action(c)``
    runs and until ``done(signals)`` holds.  Subscribed before acting."""
    got: list[tuple[float, Message]] = []
    changed = asyncio.Event()

    def handler(msg: Message):
        if msg.message_type is MessageType.SIGNAL and msg.path == api.OBJECT_PATH:
            got.append((time.monotonic(), msg))
            changed.set()
    c.conn.raw.add_message_handler(handler)
    await c._add_match(f"type='signal',sender='{api.BUS_NAME}',path='{api.OBJECT_PATH}'")
    result = await action(c)
    deadline = time.monotonic() + timeout
    while not done(got, result):
        changed.clear()
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; signals so far: {[(m.member, m.body) for _, m in got]}")
        try:
            await asyncio.wait_for(changed.wait(), left)
        except asyncio.TimeoutError:
            pass
    return got, result


def finished_for(ids):
    def done(got, result):
        wanted = set(result if ids is None else ids)
        seen = {m.body[0] for _, m in got if m.member == "JobFinished"}
        return wanted <= seen
    return done


# -- methods ----------------------------------------------------------------------

def test_get_status_has_the_json_shape_and_agrees_with_list_kernels_and_jobs(served):
    (raw,) = served.call("GetStatus")
    from nvkmd.dbusconn import unwrap
    d = unwrap(raw)
    assert set(d) == {"daemon", "source", "kernels", "jobs", "driver", "next_boot", "candidates"}
    assert set(d["daemon"]) == {"version", "state"} and d["daemon"]["version"] == "0.1.0"
    assert {"path", "version", "kind"} <= set(d["source"])
    assert d["source"]["version"] == "9.9.1" and d["source"]["kind"] == "git"
    k1, k2 = served.kernels
    by_release = {k["release"]: k for k in d["kernels"]}
    assert set(by_release) == {k1, k2}
    assert by_release[k1]["running"] is True and by_release[k2]["running"] is False
    for k in d["kernels"]:
        assert {"release", "running", "headers", "state", "origin", "module_version"} <= set(k)
        assert k["headers"] is True and k["state"] == "ready" and k["origin"] == "nvkmd"
        assert k["module_version"] == "9.9.1"
        assert k["last_build"]["result"] == "success" and Path(k["last_build"]["log"]).is_file()
    for j in d["jobs"]:
        assert {"id", "kernel", "state", "phase", "percent"} <= set(j)
    # the client's typed view is the same data
    s = served.status()
    assert s.to_dict()["kernels"] == [DaemonStatus.from_dict(d).to_dict()["kernels"][i]
                                      for i in range(len(d["kernels"]))]
    kernels = run(served.address, lambda c: c.kernels())
    assert [k.release for k in kernels] == [k["release"] for k in d["kernels"]]
    jobs = run(served.address, lambda c: c.jobs(10))
    assert {j.kernel for j in jobs if j.state == "succeeded"} == {k1, k2}


def test_build_emits_queued_progress_finished_and_property_changes(served):
    k1 = served.kernels[0]
    initial = run(served.address, lambda c: c.properties())
    assert initial["State"] == "idle" and initial["CurrentJob"] == 0
    def done(got, ids):
        # JobFinished, and the properties back to no job (they may come after it)
        return finished_for(None)(got, ids) and any(
            m.member == "PropertiesChanged" and "CurrentJob" in m.body[1]
            and m.body[1]["CurrentJob"].value == 0 for _, m in got)
    got, ids = run(served.address, lambda c: collect(c, lambda c: c.build(k1, True), done),
                   timeout=180)
    assert len(ids) == 1
    job = ids[0]
    members = [m.member for _, m in got]
    queued = [m.body for _, m in got if m.member == "JobQueued"]
    assert queued == [[job, k1, "9.9.1"]]
    progress = [(t, m.body) for t, m in got if m.member == "JobProgress"]
    assert progress, members
    for _, (jid, kernel, phase, percent) in progress:
        assert jid == job and kernel == k1 and phase in PHASES and 0 <= percent <= 100
    percents = [b[3] for _, b in progress]
    assert percents == sorted(percents)
    # At most 4 a second: any 4 consecutive signals span at least 3 quarter
    # seconds (minus scheduling slack at the receiving end).
    times = [t for t, _ in progress]
    for a, b in zip(times, times[4:]):
        assert b - a >= 0.75 - 0.2, progress
    (fin,) = [m.body for _, m in got if m.member == "JobFinished"]
    assert fin[:3] == [job, k1, "success"] and fin[3] == ""
    log = Path(fin[5])
    assert log.is_file() and log.is_relative_to(served.root.path / "var" / "log" / "nvkmd")
    assert members.index("JobQueued") < members.index("JobProgress") < members.index("JobFinished")
    # PropertiesChanged: the job's id while it runs, back to 0; no value twice in a row.
    changes = [m.body for _, m in got if m.member == "PropertiesChanged"]
    assert changes and all(c[0] == api.INTERFACE and c[2] == [] for c in changes)
    last = dict(initial)
    seen: dict[str, list] = {}
    for c in changes:
        for name, v in c[1].items():
            value = v.value
            assert value != last[name], f"no-op PropertiesChanged for {name}: {value!r}"
            last[name] = value
            seen.setdefault(name, []).append(value)
    assert job in seen["CurrentJob"] and seen["CurrentJob"][-1] == 0
    assert "building" in seen["State"]
    assert any(p[0] in PHASES and p[1] > 0 for p in seen["Progress"])
    final = run(served.address, lambda c: c.properties())
    assert final["State"] == "idle" and final["CurrentJob"] == 0 and final["Progress"] == ["", 0]
    assert final["SourceVersion"] == "9.9.1" and final["Version"] == "0.1.0"


def test_build_of_current_modules_queues_nothing(served):
    served.wait_ready()
    assert served.call("Build", "", False) == [[]]


def test_cancel_stops_a_running_job(served):
    k2 = served.kernels[1]
    served.wait_ready()
    # Hold k2's build lock as a concurrent `nvkmd --once` would: the job
    # starts and waits for it, so it is running when we cancel it.
    locks = served.root.path / "var" / "lib" / "nvkmd" / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / f"{k2}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        (ids,) = served.call("Build", k2, True)
        (job,) = ids
        wait_for(lambda: any(j.id == job and j.state == "running"
                             for j in run(served.address, lambda c: c.jobs(0))),
                 60, "the job to run")
        assert run(served.address, lambda c: c.properties())["CurrentJob"] == job

        async def cancel(c):
            await c.cancel(job)
            return [job]
        got, _ = run(served.address, lambda c: collect(c, cancel, finished_for([job])))
        (fin,) = [m.body for _, m in got if m.member == "JobFinished"]
        assert fin[:3] == [job, k2, "cancelled"]
    finally:
        os.close(fd)
    (js,) = [run(served.address, lambda c: c.jobs(5))]
    assert [j.state for j in js if j.id == job] == ["cancelled"]
    # a finished job cannot be cancelled again; an unknown one does not exist
    assert served.error("Cancel", job).code is ErrorCode.INVALID_ARGUMENT
    assert served.error("Cancel", 987654321).code is ErrorCode.NO_SUCH_JOB
    served.call("Build", k2, False)
    served.wait_ready()


def test_get_log_by_job_by_kernel_and_latest(served):
    served.wait_ready()
    k1, k2 = served.kernels
    jobs = run(served.address, lambda c: c.jobs(50))
    last_k1 = [j for j in jobs if j.kernel == k1 and j.state == "succeeded"][-1]
    path, tail = served.call("GetLog", last_k1.id, "", 5)
    assert path == last_k1.log
    assert tail == Path(path).read_text().splitlines()[-5:]
    assert tail[-2].startswith("# result: success")
    kpath, ktail = served.call("GetLog", 0, k2, 3)
    assert Path(kpath).parent.name == k2 and len(ktail) == 3
    lpath, _ = served.call("GetLog", 0, "", 1)
    assert Path(lpath).is_file() and Path(lpath).parent.parent == Path(kpath).parent.parent
    only_path, nothing = served.call("GetLog", last_k1.id, "", 0)
    assert only_path == path and nothing == []
    everything = served.call("GetLog", last_k1.id, "", api.MAX_LOG_LINES)[1]
    assert everything == Path(path).read_text().splitlines()
    assert served.error("GetLog", 987654321, "", 5).code is ErrorCode.NO_SUCH_JOB
    assert served.error("GetLog", 0, "9.9.9-not-installed", 5).code is ErrorCode.NO_SUCH_KERNEL


def test_cleanup_dry_run_then_execute(served):
    served.wait_ready()
    gone = served.root.modules / "5.10.0-0-gone" / "updates" / "nvkmd"
    gone.mkdir(parents=True)
    (gone / "nvidia.ko").write_bytes(b"old module")
    # what the product cache recorded for it (build/cache.py), in the state dir
    digests = served.root.path / "var/lib/nvkmd/product-digests/5.10.0-0-gone"
    digests.mkdir(parents=True)
    (digests / "0123abcd.json").write_text('{"files": {}}\n')
    wait_for(lambda: str(gone) in served.call("Cleanup", 2, False)[0], 30,
             "the leftover to be a cleanup candidate")
    (would,) = served.call("Cleanup", 2, False)
    assert gone.exists(), "a dry run removed something"
    assert all(not p.startswith(str(served.root.modules / k)) for k in served.kernels for p in would
               if "/lib/modules/" in p)
    assert str(digests) in would and digests.exists()
    (did,) = served.call("Cleanup", 2, True)
    assert str(gone) in did and not gone.exists()
    assert str(digests) in did and not digests.exists()
    assert str(gone) not in served.call("Cleanup", 2, False)[0]
    assert served.error("Cleanup", api.MAX_KEEP + 1, False).code is ErrorCode.INVALID_ARGUMENT


def test_rescan_makes_the_daemon_look_again(served):
    before = served.daemon.log_text().count("event='full rescan'")
    assert served.call("Rescan") == []
    wait_for(lambda: served.daemon.log_text().count("event='full rescan'") > before, 30,
             "a full rescan in the daemon log")


def test_errors_of_the_standard_interfaces(served):
    a = served.address
    r = raw_call(a, "Get", "ss", [api.INTERFACE, "NoSuchProperty"],
                 interface="org.freedesktop.DBus.Properties")
    assert r.error_name == "org.freedesktop.DBus.Error.UnknownProperty"
    r = raw_call(a, "Set", "ssv", [api.INTERFACE, "State", __import__("dbus_fast").Variant("s", "x")],
                 interface="org.freedesktop.DBus.Properties")
    assert r.error_name == "org.freedesktop.DBus.Error.PropertyReadOnly"
    r = raw_call(a, "Get", "ss", [api.INTERFACE, "State"], interface="org.freedesktop.DBus.Properties")
    assert r.message_type is MessageType.METHOD_RETURN and r.body[0].value in ("idle", "building")
    r = raw_call(a, "NoSuchMethod", "", [])
    assert r.error_name == "org.freedesktop.DBus.Error.UnknownMethod"
    r = raw_call(a, "GetStatus", "", [], path="/io/github/nvkmd/nope")
    assert r.error_name == "org.freedesktop.DBus.Error.UnknownObject"
    r = raw_call(a, "Ping", "", [], interface="org.freedesktop.DBus.Peer")
    assert r.message_type is MessageType.METHOD_RETURN
    r = raw_call(a, "Introspect", "", [], interface="org.freedesktop.DBus.Introspectable", path="/")
    assert '<node name="io"/>' in r.body[0]
    # a call without an interface name is dispatched by member
    r = raw_call(a, "GetStatus", "", [], interface=None)
    assert r.message_type is MessageType.METHOD_RETURN, r.body


def test_no_reply_expected_calls_are_served_silently(served):
    from dbus_fast import MessageFlag

    async def go(c):
        c.conn.raw.send(Message(destination=api.BUS_NAME, path=api.OBJECT_PATH,
                                interface=api.INTERFACE, member="GetStatus",
                                flags=MessageFlag.NO_REPLY_EXPECTED))
        return await c.status()
    assert run(served.address, go).version == "0.1.0"


# -- the bus connection ------------------------------------------------------------------

def test_only_root_may_own_the_name(served):
    from dbus_helpers import as_nobody
    script = ("import asyncio, sys\n"
              "from dbus_fast.aio import MessageBus\n"
              "async def main():\n"
              "    b = await MessageBus(bus_address=sys.argv[1]).connect()\n"
              "    try:\n"
              "        print(await b.request_name('io.github.nvkmd'))\n"
              "    except Exception as e:\n"
              "        print('refused', getattr(e, 'type', e))\n"
              "asyncio.run(main())\n")
    r = as_nobody(["-c", script, served.address])
    assert r.stdout.strip() == "refused org.freedesktop.DBus.Error.AccessDenied", r
    assert owner(served.address) and served.daemon.alive()


def test_a_second_daemon_on_the_same_bus_exits_nonzero(served, tmp_path, bus_daemon):
    d = bus_daemon(Root(tmp_path / "other"), served.bus, env={"NVKMD_RUNNING_KERNEL": "0.0.0-x"},
                   wait=False)
    wait_for(lambda: not d.alive(), 60, "the second daemon to exit")
    assert d.proc.returncode != 0
    assert "already owned" in d.log_text(), d.log_text()
    assert served.daemon.alive() and served.status().version == "0.1.0"


def test_losing_the_bus_makes_the_daemon_exit_nonzero(tmp_path, bus, bus_daemon):
    d = bus_daemon(Root(tmp_path / "root"), bus, env={"NVKMD_RUNNING_KERNEL": "0.0.0-x"})
    bus.proc.terminate()
    bus.proc.wait(10)
    wait_for(lambda: not d.alive(), 30, "the daemon to exit after losing the bus")
    assert d.proc.returncode not in (0, None), d.log_text()
    # What it tells the admin (in the journal) is the bus, not a traceback.
    assert "lost the connection" in d.log_text()


def test_sigterm_stops_the_daemon_cleanly_and_releases_the_name(tmp_path, bus, bus_daemon):
    d = bus_daemon(Root(tmp_path / "root"), bus, env={"NVKMD_RUNNING_KERNEL": "0.0.0-x"})
    assert d.stop() == 0
    assert owner(bus.address) == ""


def test_a_new_driver_version_changes_source_version_and_queues_rebuilds(served):
    """Last in this module: it leaves the daemon rebuilding every kernel."""
    from helpers import set_tiny_version
    served.wait_ready()
    tree = served.root.path / "usr" / "src" / "nvidia-tiny"

    async def upgrade(c):
        set_tiny_version(tree, "9.9.2")
        return None

    def done(got, _):
        return any(m.member == "PropertiesChanged" and "SourceVersion" in m.body[1]
                   for _, m in got) and \
            {m.body[1] for _, m in got if m.member == "JobQueued"} >= set(served.kernels)
    got, _ = run(served.address, lambda c: collect(c, upgrade, done), timeout=180)
    versions = [m.body[1]["SourceVersion"].value for _, m in got
                if m.member == "PropertiesChanged" and "SourceVersion" in m.body[1]]
    assert versions == ["9.9.2"]
    assert {tuple(m.body[1:]) for _, m in got if m.member == "JobQueued"} == \
        {(k, "9.9.2") for k in served.kernels}
    assert run(served.address, lambda c: c.properties())["SourceVersion"] == "9.9.2"
