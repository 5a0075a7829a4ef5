"""nvkmd-agent's decisions and files, without a bus: agentrules (pure) and
agentconfig (the user's config and state files)."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from nvkmd.agent.config import AgentConfig, AgentConfigError, SeenFailures, config_file, \
    load_config, parse_config, state_file
from nvkmd.agent.rules import BOOT_SLOT, CRITICAL, LOW, ProgressGate, boot_at_risk, boot_notice, \
    escape_markup, failure_key, failure_notice, next_boot, progress_notice, success_notice, \
    unseen_failures
from nvkmd.model import DaemonStatus, JobInfo, KernelStatus, LastBuild, SourceInfo

NEW, OLD = "6.1.0-56-amd64", "6.1.0-47-amd64"


def kernel(release: str, state: str, last: LastBuild | None = None, **kw) -> KernelStatus:
    return KernelStatus(release=release, running=False, headers=True, headers_package="",
                        state=state, origin="nvkmd" if state == "ready" else "none",
                        module_version="", last_build=last, **kw)


def failed(log: str = "/var/log/nvkmd/k/build-1.log", at: float = 100.0) -> LastBuild:
    return LastBuild("failed", log, "kernel API change", "use another driver", at)


def status(*kernels: KernelStatus, jobs: list[JobInfo] | None = None, error: str = "") -> DaemonStatus:
    return DaemonStatus("0.1.0", "idle", SourceInfo("/usr/src/x", "9.9.1", "git", error),
                        list(kernels), jobs or [])


# -- texts --------------------------------------------------------------------------

def test_failure_notice_names_the_kernel_and_holds_cause_and_hint():
    n = failure_notice(NEW, "the arguments of kmalloc() changed", "use a newer driver",
                       "/l/build.log", 7)
    assert n.summary == f"NVIDIA module build failed for {NEW}"
    assert n.body == "The arguments of kmalloc() changed.\nUse a newer driver."
    assert n.urgency == CRITICAL and n.log == "/l/build.log" and n.slot == f"build:{NEW}"
    assert n.seen_key == "/l/build.log"
    assert failure_notice(NEW, "", "", "", 7).body == "The build failed."
    assert failure_notice(NEW, "", "", "", 7).seen_key == f"{NEW}#job7"


def test_success_and_progress_notices():
    s = success_notice(OLD, "535.261.03")
    assert (s.summary, s.urgency) == (f"NVIDIA modules ready for {OLD}", LOW)
    assert s.body == "NVIDIA 535.261.03 is built and installed for this kernel."
    p = progress_notice(OLD, "compile", 140)
    assert (p.percent, p.body, p.urgency, p.slot) == (100, "Compiling: 100%", LOW, s.slot)
    assert p.progress and not s.progress


def test_markup_is_escaped():
    assert escape_markup("<linux/pci.h> & 'x'") == "&lt;linux/pci.h&gt; &amp; 'x'"


# -- the next boot -----------------------------------------------------------------

def test_next_boot_is_the_daemons_boot_entry_else_the_newest():
    assert next_boot([kernel(NEW, "ready"), kernel(OLD, "failed")]).release == NEW
    assert next_boot([]) is None

    # A record with the boot loader's choice (the model has no such key yet;
    # the daemon knows it, see core.Snapshot.boot_kernel).
    @dataclasses.dataclass(frozen=True)
    class WithBootNext(KernelStatus):
        boot_next: bool = False
    marked = WithBootNext(**{**kernel(OLD, "failed").__dict__, "boot_next": True})
    assert next_boot([kernel(NEW, "ready"), marked]).release == OLD


@pytest.mark.parametrize("state, at_risk", [
    ("ready", False), ("failed", True), ("unsupported", True), ("missing", True),
    ("waiting-for-headers", True), ("queued", False), ("building", False)])
def test_boot_at_risk_by_state(state, at_risk):
    st = status(kernel(NEW, state, failed() if state in ("failed", "unsupported") else None),
                kernel(OLD, "ready"))
    assert (boot_at_risk(st) is not None) == at_risk
    # Only the next boot matters: an older failing kernel is no risk.
    assert boot_at_risk(status(kernel(NEW, "ready"), kernel(OLD, state))) is None


def test_a_raised_warning_stays_through_the_rebuild_until_ready():
    assert boot_at_risk(status(kernel(NEW, "building")), warned_for=NEW).release == NEW
    assert boot_at_risk(status(kernel(NEW, "queued")), warned_for=NEW).release == NEW
    assert boot_at_risk(status(kernel(NEW, "ready")), warned_for=NEW) is None


def test_missing_right_after_a_success_is_no_risk_unless_the_source_is_broken():
    ok = LastBuild("success", "/l", "", "", 1.0)
    assert boot_at_risk(status(kernel(NEW, "missing", ok)), warned_for=NEW) is None
    assert boot_at_risk(status(kernel(NEW, "missing", ok), error="no source")) is not None


def test_boot_notice_says_why_and_stays():
    n = boot_notice(kernel(NEW, "failed", failed("/l/b.log")))
    assert n.slot == BOOT_SLOT and n.resident and n.timeout_ms == 0 and n.urgency == CRITICAL
    assert n.summary == "Rebooting now would start without the NVIDIA driver"
    assert n.body == (f"{NEW} boots next and has no working NVIDIA module: the build failed: "
                      "kernel API change.\nUse another driver.")
    assert n.log == "/l/b.log"
    h = boot_notice(dataclasses.replace(kernel(NEW, "waiting-for-headers"),
                                        headers_package=f"linux-headers-{NEW}"))
    assert h.body.endswith(f"its kernel headers are not installed.\nInstall linux-headers-{NEW}.")
    assert not h.log
    m = boot_notice(kernel(NEW, "missing"))
    assert m.body.endswith(f"no module has been built for it.\nRun: nvkmctl build {NEW}.")


# -- failures the user has not seen ------------------------------------------------

def test_unseen_failures_are_the_ones_still_failing_and_not_yet_shown():
    st = status(kernel(NEW, "failed", failed("/l/new.log")),
                kernel(OLD, "ready", failed("/l/old.log")),      # fixed since: not shown
                kernel("6.0.0-1-amd64", "unsupported", failed("/l/u.log")))
    assert [n.kernel for n in unseen_failures(st, set())] == [NEW, "6.0.0-1-amd64"]
    assert [n.kernel for n in unseen_failures(st, {"/l/new.log"})] == ["6.0.0-1-amd64"]


def test_a_failure_without_log_is_keyed_by_its_job():
    st = status(kernel(NEW, "failed", failed(log="", at=5.0)),
                jobs=[JobInfo(id=41, kernel=NEW, source_version="1", state="failed",
                              result="failed", finished_at=5.0)])
    (n,) = unseen_failures(st, set())
    assert n.seen_key == failure_key(NEW, "", 41) == f"{NEW}#job41"
    assert unseen_failures(st, {n.seen_key}) == []


# -- progress rate limit -----------------------------------------------------------

def test_progress_gate_limits_per_kernel_and_drops_repeats():
    g = ProgressGate(1.0)
    assert g.allow(NEW, "prepare", 0, 10.0)
    assert not g.allow(NEW, "conftest", 5, 10.5)          # too soon
    assert g.allow(OLD, "prepare", 0, 10.5)               # another kernel
    assert g.allow(NEW, "conftest", 7, 11.0)
    assert not g.allow(NEW, "conftest", 7, 20.0)          # nothing changed
    g.forget(NEW)
    assert g.allow(NEW, "conftest", 7, 20.1)


# -- the config file ----------------------------------------------------------------

def test_config_defaults_and_values():
    assert parse_config("") == AgentConfig()
    c = parse_config('[notifications]\nsuccess = false\nprogress = false\n'
                     'log_viewer = ["less", "+G"]\n')
    assert c == AgentConfig(success=False, progress=False, log_viewer=("less", "+G"))


@pytest.mark.parametrize("text, problem", [
    ("[notifications]\nsuccess = 1\n", "notifications.success: expected true or false, got 1"),
    ("[notifications]\nloud = true\n", "notifications.loud: unknown key"),
    ("[colours]\nred = true\n", "colours.red: unknown key"),
    ("success = true\n", "success: unknown key"),
    ("[notifications]\nlog_viewer = []\n", "notifications.log_viewer: expected a non-empty list"),
    ("[notifications\n", "not valid TOML"),
])
def test_bad_config_names_the_problem(text, problem):
    with pytest.raises(AgentConfigError) as e:
        parse_config(text)
    assert problem in str(e.value)
    assert "\n" not in str(e.value)


def test_load_config_warns_once_and_uses_defaults(tmp_path):
    path = tmp_path / "agent.toml"
    assert load_config(path) == (AgentConfig(), None)           # no file, no warning
    path.write_text("[notifications]\nprogress = 'no'\n")
    config, warning = load_config(path)
    assert config == AgentConfig()
    assert warning.startswith(f"{path}: notifications.progress: expected true or false")
    assert warning.endswith("using the defaults")
    path.write_bytes(b"\xff\xfe")
    assert load_config(path)[0] == AgentConfig() and "cannot read it" in load_config(path)[1]


def test_xdg_locations():
    env = {"HOME": "/home/u"}
    assert str(config_file(env)) == "/home/u/.config/nvkmd/agent.toml"
    assert str(state_file(env)) == "/home/u/.local/state/nvkmd/agent-state.json"
    env = {"HOME": "/home/u", "XDG_CONFIG_HOME": "/c", "XDG_STATE_HOME": "/s"}
    assert (str(config_file(env)), str(state_file(env))) == ("/c/nvkmd/agent.toml",
                                                             "/s/nvkmd/agent-state.json")
    # A relative value is invalid by the spec and ignored.
    assert str(state_file({"HOME": "/h", "XDG_STATE_HOME": "rel"})) == \
        "/h/.local/state/nvkmd/agent-state.json"


# -- the state file -----------------------------------------------------------------

def test_seen_failures_survive_a_restart_and_are_written_atomically(tmp_path):
    path = tmp_path / "state" / "nvkmd" / "agent-state.json"
    seen = SeenFailures(path)
    assert seen.load() is None and seen.keys == []
    seen.add("/l/a.log")
    seen.add("/l/a.log")
    seen.add("/l/b.log")
    assert json.loads(path.read_text()) == {"version": 1, "shown_failures": ["/l/a.log", "/l/b.log"]}
    assert sorted(os.listdir(path.parent)) == ["agent-state.json"]     # no temporary left
    again = SeenFailures(path)
    assert again.load() is None and "/l/a.log" in again and "/l/c.log" not in again


def test_seen_failures_are_bounded(tmp_path):
    seen = SeenFailures(tmp_path / "s.json")
    for i in range(300):
        seen.keys.append(f"k{i}")
    seen.add("last")
    assert len(seen.keys) == 256 and seen.keys[-1] == "last" and "k0" not in seen


@pytest.mark.parametrize("content", ["{not json", '{"shown_failures": "x"}', "[1, 2]"])
def test_a_bad_state_file_is_a_warning_and_an_empty_memory(tmp_path, content):
    path = tmp_path / "s.json"
    path.write_text(content)
    seen = SeenFailures(path)
    warning = seen.load()
    assert warning.startswith(str(path)) and "failures may be shown again" in warning
    assert seen.keys == []
    seen.add("x")                                # and it is repaired on the next write
    assert json.loads(path.read_text())["shown_failures"] == ["x"]


def test_the_documented_example_is_the_defaults():
    from helpers import REPO
    assert parse_config((REPO / "etc" / "nvkmd-agent.toml").read_text()) == AgentConfig()
