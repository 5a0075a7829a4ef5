"""The pure parts of the D-Bus adapter, the client and nvkmctl: throttling,
change detection, the wire format, error names, argument checks, rendering.
No bus and no daemon here; test_bus_*.py and test_cli.py run the real ones."""

from __future__ import annotations

import dataclasses

import pytest

from nvkmd import api
from nvkmd.cli import render
from nvkmd.bus import wire
from nvkmd.bus.introspect import object_xml, parent_xml
from nvkmd.bus.service import validate
from nvkmd.bus.throttle import PropertyState, Throttle
from nvkmd.clients.manager import check_args
from nvkmd.dbusconn import unwrap
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.model import DaemonStatus, JobInfo, KernelStatus, LastBuild, SourceInfo


def sample_status() -> DaemonStatus:
    return DaemonStatus(
        version="0.1.0", state="building",
        source=SourceInfo("/usr/src/nvidia-535.261.03", "535.261.03", "dkms"),
        kernels=[
            KernelStatus("6.1.0-56-amd64", running=False, headers=True, headers_package="",
                         state="failed", origin="none", module_version="",
                         last_build=LastBuild("failed", "/var/log/nvkmd/6.1.0-56-amd64/build-1.log",
                                              "kernel API change in the driver source",
                                              "use a newer driver", 1700000000.5)),
            KernelStatus("6.1.0-47-amd64", running=True, headers=True,
                         headers_package="linux-headers-6.1.0-47-amd64", state="building",
                         origin="nvkmd", module_version="535.261.03", phase="compile", percent=45),
            KernelStatus("6.1.0-9-amd64", running=False, headers=False, headers_package="",
                         state="waiting-for-headers", origin="none", module_version=""),
        ],
        jobs=[JobInfo(7, "6.1.0-47-amd64", "535.261.03", "running", phase="compile", percent=45,
                      queued_at=1.0, started_at=2.0),
              JobInfo(6, "6.1.0-56-amd64", "535.261.03", "failed", result="failed",
                      cause="kernel API change", log="/l")])


# -- throttling -----------------------------------------------------------------

def test_throttle_emits_at_most_once_per_interval_and_never_loses_the_newest():
    t = Throttle(0.25)
    emitted: list[tuple[float, int]] = []
    pending_deadline = None
    # A build reporting 100 times a second for 2 seconds.
    for step in range(200):
        now = step * 0.01
        if pending_deadline is not None and now >= pending_deadline:
            due, value = t.take("job", now)
            assert due
            emitted.append((now, value))
            pending_deadline = None
        if t.offer("job", step, now):
            emitted.append((now, step))
        else:
            pending_deadline = t.deadline("job")
    due, value = t.take("job", 10.0)
    if due:
        emitted.append((10.0, value))
    times = [e[0] for e in emitted]
    assert all(b - a >= 0.25 - 1e-9 for a, b in zip(times, times[1:]))
    assert len([x for x in times if x < 2.0]) <= 8 + 1
    assert emitted[-1][1] == 199                  # the newest value arrived


def test_throttle_keys_are_independent_and_forget_drops_the_held_value():
    t = Throttle(0.25)
    assert t.offer(1, "a", 0.0) and t.offer(2, "b", 0.0)
    assert not t.offer(1, "a2", 0.1)
    assert t.deadline(1) == pytest.approx(0.25) and t.deadline(2) is None
    t.forget(1)
    assert t.take(1, 1.0) == (False, None)
    assert t.offer(1, "a3", 0.11)                 # forgotten: a fresh start


def test_property_state_drops_no_op_updates():
    p = PropertyState({"State": "idle", "CurrentJob": 0, "Progress": ("", 0)}, 0.25,
                      frozenset({"Progress"}))
    assert p.update({"State": "idle", "CurrentJob": 0}, 0.0) == {}
    assert p.update({"State": "building", "CurrentJob": 3}, 0.0) == {"State": "building",
                                                                     "CurrentJob": 3}
    assert p.update({"State": "building"}, 0.01) == {}


def test_property_state_throttles_progress_and_flushes_the_newest():
    p = PropertyState({"State": "building", "Progress": ("", 0)}, 0.25, frozenset({"Progress"}))
    assert p.update({"Progress": ("compile", 10)}, 0.0) == {"Progress": ("compile", 10)}
    assert p.update({"Progress": ("compile", 11)}, 0.05) == {}
    assert p.update({"Progress": ("compile", 12)}, 0.10) == {}
    assert p.deadline() == pytest.approx(0.25)
    # an unthrottled change goes out at once, without the held progress
    assert p.update({"State": "stopping"}, 0.12) == {"State": "stopping"}
    assert p.flush(0.25) == {"Progress": ("compile", 12)}
    assert p.deadline() is None


def test_property_state_drops_a_change_that_returns_to_the_announced_value():
    p = PropertyState({"Progress": ("link", 90)}, 0.25, frozenset({"Progress"}))
    assert p.update({"Progress": ("link", 91)}, 0.0) == {"Progress": ("link", 91)}
    assert p.update({"Progress": ("link", 92)}, 0.1) == {}
    assert p.update({"Progress": ("link", 91)}, 0.2) == {}
    assert p.deadline() is None and p.flush(1.0) == {}


# -- the wire format ---------------------------------------------------------------

def test_status_round_trips_through_the_wire_to_exactly_the_json_shape():
    import dataclasses
    from nvkmd.verdict import PreflightResult
    cand = {**PreflightResult("6.1.0-57-amd64", "will-break", "9.9.1", "linux-headers-6.1.0-57-amd64",
                              "6.1.192-3", "apt", cause="x() changed", elapsed_s=1.5).to_dict(),
            "state": "will-break"}
    s = dataclasses.replace(sample_status(), candidates=[cand])
    back = DaemonStatus.from_dict(unwrap(wire.status(s)))
    assert back.to_dict() == s.to_dict()
    d = back.to_dict()
    assert set(d) == {"daemon", "source", "kernels", "jobs", "driver", "candidates"}
    assert d["candidates"] == [cand]
    assert set(d["daemon"]) == {"version", "state"}
    assert d["kernels"][0]["last_build"]["cause"] == "kernel API change in the driver source"
    assert d["kernels"][1]["last_build"] is None


def test_record_types_follow_the_model_annotations():
    k = KernelStatus("6.1", True, True, "", "ready", "nvkmd", "1", percent=5)
    rec = wire.record(k)
    assert {n: v.signature for n, v in rec.items()} == {
        "release": "s", "running": "b", "headers": "b", "headers_package": "s", "state": "s",
        "origin": "s", "module_version": "s", "phase": "s", "percent": "x"}
    j = wire.record(JobInfo(1, "k", "v", "queued", queued_at=5))   # an int where a float is due
    assert j["queued_at"].signature == "d" and j["queued_at"].value == 5.0


def test_strings_dbus_cannot_carry_are_made_safe():
    assert wire.text("a\x00b") == "a\ufffdb"
    assert wire.text("caf\udce9") == "caf?"
    assert wire.text("✓ fine") == "✓ fine"


# -- errors -----------------------------------------------------------------------------

def test_every_error_code_maps_to_a_name_and_back():
    for code in ErrorCode:
        name = api.error_name(code)
        assert name == f"io.github.nvkmd.Manager1.Error.{code.value}"
        assert api.error_code(name) is code


@pytest.mark.parametrize("name,code", [
    ("org.freedesktop.DBus.Error.ServiceUnknown", ErrorCode.UNREACHABLE),
    ("org.freedesktop.DBus.Error.NameHasNoOwner", ErrorCode.UNREACHABLE),
    ("org.freedesktop.DBus.Error.Spawn.ChildExited", ErrorCode.UNREACHABLE),
    ("org.freedesktop.DBus.Error.AccessDenied", ErrorCode.ACCESS_DENIED),
    ("org.freedesktop.DBus.Error.LimitsExceeded", ErrorCode.BUSY),
    ("org.freedesktop.DBus.Error.InvalidArgs", ErrorCode.INVALID_ARGUMENT),
    ("io.github.nvkmd.Manager1.Error.NoSuchThing", ErrorCode.INTERNAL),
    ("com.example.Whatever", ErrorCode.INTERNAL),
])
def test_foreign_error_names(name, code):
    assert api.error_code(name) is code


# -- argument checks ------------------------------------------------------------------

BAD_KERNELS = ["..", "../../etc", "a/b", "/lib/modules/6.1.0-47-amd64", "a\x00b", "x" * 4096,
               "6.1.0-47-amd64/../..", ".hidden", "-rf", "a b", "6.1\n"]


@pytest.mark.parametrize("kernel", BAD_KERNELS)
def test_validate_refuses_kernel_names_that_are_not_releases(kernel):
    for method, args in (("Build", [kernel, False]), ("GetLog", [0, kernel, 10])):
        with pytest.raises(NvkmdError) as e:
            validate(method, args)
        assert e.value.code is ErrorCode.INVALID_ARGUMENT


def test_validate_bounds():
    assert validate("Build", ["", True]) and validate("GetLog", [0, "", api.MAX_LOG_LINES])
    for method, args in (("GetLog", [0, "", api.MAX_LOG_LINES + 1]), ("GetLog", [1, "", 2**32 - 1]),
                         ("ListJobs", [api.MAX_FINISHED_JOBS + 1]), ("Cancel", [0])):
        with pytest.raises(NvkmdError) as e:
            validate(method, args)
        assert e.value.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize("sig,arg", [("s", "a\x00b"), ("s", 5), ("u", -1), ("u", 2**32),
                                     ("t", -5), ("t", 2**64), ("b", 1), ("u", True), ("u", "3")])
def test_client_refuses_what_dbus_cannot_carry(sig, arg):
    with pytest.raises(NvkmdError) as e:
        check_args("X", sig, (arg,))
    assert e.value.code is ErrorCode.INVALID_ARGUMENT


# -- introspection ------------------------------------------------------------------------

def test_parent_paths_lead_to_the_object():
    assert '<node name="io"/>' in parent_xml("/")
    assert '<node name="github"/>' in parent_xml("/io")
    assert '<node name="nvkmd"/>' in parent_xml("/io/github")
    assert parent_xml("/io/github/nvkmd") is None and parent_xml("/org") is None
    assert 'interface name="io.github.nvkmd.Manager1"' in object_xml()


# -- rendering ---------------------------------------------------------------------------

def test_status_box_shows_daemon_source_kernels_and_jobs():
    text = render.status_text(sample_status(), render.UNICODE)
    lines = text.splitlines()
    assert lines[0] == "NVIDIA Kernel Module Status (nvkmd)" and set(lines[1]) == {"═"}
    assert "Daemon:         building (nvkmd 0.1.0)" in lines
    assert "Driver:         535.261.03" in lines
    assert "Source:         /usr/src/nvidia-535.261.03" in lines
    assert "Source Type:    dkms" in lines
    assert "Installed Kernels (3):" in lines
    assert ("  ↻ 6.1.0-47-amd64 [nvidia: nvkmd 535.261.03, headers: ✓] (running) "
            "building: compile 45%") in lines
    assert ("  ✗ 6.1.0-56-amd64 [nvidia: MISSING, headers: ✓] build failed: "
            "kernel API change in the driver source") in lines
    assert "      hint: use a newer driver" in lines
    assert "      log:  /var/log/nvkmd/6.1.0-56-amd64/build-1.log" in lines
    assert ("  ✗ 6.1.0-9-amd64 [nvidia: MISSING, headers: ✗] waiting for headers") in lines
    assert "Jobs (1):" in lines and "  #7 6.1.0-47-amd64 running: compile 45%" in lines


def test_status_box_falls_back_to_ascii():
    assert render.glyphs_for("ascii") is render.ASCII
    assert render.glyphs_for("utf-8") is render.UNICODE
    text = render.status_text(sample_status(), render.glyphs_for("latin-1"))
    text.encode("ascii")
    assert "[nvidia: nvkmd 535.261.03, headers: +] (running)" in text


def test_progress_bar_and_cleanup_text():
    bar = render.progress_bar("6.1.0-47-amd64", "compile", 45, render.ASCII, width=20)
    assert bar == "6.1.0-47-amd64 #########----------- compile   45%"
    dry = render.cleanup_text(["/lib/modules/6.0/updates/nvkmd"], 2, False, render.ASCII)
    assert "NVIDIA Module Cleanup (dry run)" in dry and "To remove (1):" in dry
    assert "Dry run - no changes made." in dry
    done = render.cleanup_text(["/x"], 1, True, render.ASCII)
    assert "Removed (1):" in done and "Dry run" not in done
    assert "Nothing to remove." in render.cleanup_text([], 2, False)


def test_model_from_dict_tolerates_unknown_and_missing_keys():
    k = KernelStatus.from_dict({"release": "6.1", "state": "ready", "future_key": 1})
    assert k.release == "6.1" and k.running is False and k.last_build is None
    assert dataclasses.asdict(JobInfo.from_dict({"id": 3}))["kernel"] == ""
