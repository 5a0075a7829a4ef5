"""nvkmd-agent end to end: the real daemon building the tiny tree on a
private system-like bus, the agent as a process, and the real dunst
notification server (under Xvfb) on a private session bus."""

from __future__ import annotations

import pwd
from pathlib import Path

from dbus_helpers import run
from helpers import need_kernels, wait_for

FAST = "[daemon]\ndebounce_s = 0.2\n"
# A call with too few arguments: the compiler's error names the function,
# and nvkmd diagnoses a kernel API change.
BREAK = "\n#include <linux/slab.h>\nvoid *nv_tiny_broken(void);\nvoid *nv_tiny_broken(void) { return kmalloc(16); }\n"

CAUSE = "the driver source does not support this kernel's API: the arguments of kmalloc() changed"
HINT = ("this kernel changed an interface the driver uses; use a driver release that supports it, "
        "or boot a kernel the driver supports")
FAILED_BODY = ("The driver source does not support this kernel's API: the arguments of kmalloc() "
               "changed.\nThis kernel changed an interface the driver uses; use a driver release "
               "that supports it, or boot a kernel the driver supports.")
BOOT_SUMMARY = "Rebooting now would start without the NVIDIA driver"


def boot_body(k: str) -> str:
    return (f"{k} boots next and has no working NVIDIA module: the build failed: {CAUSE}.\n"
            f"{HINT[0].upper()}{HINT[1:]}.")


def tiny(root, broken: bool = False) -> Path:
    tree = root.add_tiny_source()
    root.configure(root.config_text + FAST)
    if broken:
        nv = tree / "kernel-open" / "nvidia" / "nv.c"
        nv.write_text(nv.read_text() + BREAK)
    return tree


def repair(tree: Path) -> None:
    nv = tree / "kernel-open" / "nvidia" / "nv.c"
    nv.write_text(nv.read_text().replace(BREAK, ""))


def kernel_state(address: str, k: str) -> str:
    st = run(address, lambda c: c.status())
    return next(x.state for x in st.kernels if x.release == k)


def test_failure_then_success_through_the_real_daemon(root, bus, bus_daemon, desktop,
                                                       agent_factory):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    tree = tiny(root, broken=True)
    desktop.start_server()
    # The agent first: its match rules must work before the daemon appears.
    agent = agent_factory(bus.address)
    agent.wait_log(r"event='ready'.*daemon='absent'")
    daemon = bus_daemon(root, bus)
    mon = desktop.monitor

    failed = f"NVIDIA module build failed for {k}"
    building = f"Building NVIDIA modules for {k}"
    (fail,) = mon.wait_notify(failed)
    (boot,) = mon.wait_notify(BOOT_SUMMARY)
    assert fail["body"] == FAILED_BODY
    assert fail["hints"] == {"urgency": 2}
    assert fail["actions"] == ["default", "Show log", "show-log", "Show log"]
    assert boot["body"] == boot_body(k)
    assert boot["hints"] == {"urgency": 2, "resident": True} and boot["timeout"] == 0
    assert boot["replaces"] == 0 and boot["id"] != fail["id"]

    # The build's progress: one notification, updated in place, which the
    # failure then replaces.
    progress = [c for c in mon.notifies() if c["summary"] == building]
    assert progress, mon.calls()
    assert progress[0]["replaces"] == 0
    assert all(p["replaces"] == progress[0]["id"] == p["id"] for p in progress[1:])
    assert fail["replaces"] == progress[0]["id"] and fail["id"] == progress[0]["id"]
    for p in progress:
        assert p["hints"]["urgency"] == 0 and 0 <= p["hints"]["value"] <= 100
        assert p["body"].endswith(f": {p['hints']['value']}%")

    # Fixing the source: the daemon rebuilds, the agent says the kernel is
    # ready and takes the boot warning down.
    repair(tree)
    ready = f"NVIDIA modules ready for {k}"
    (ok,) = mon.wait_notify(ready)
    wait_for(lambda: any(c["call"] == "Close" and c["id"] == boot["id"] for c in mon.calls()),
             30, "the boot warning to be closed")
    # While the fix was building, the warning said so, in place.
    boot, rebuilding = mon.notifies(BOOT_SUMMARY)
    assert rebuilding["replaces"] == boot["id"] == rebuilding["id"]
    assert rebuilding["body"] == f"{k} boots next and has no working NVIDIA module: a build is under way."
    assert ok["body"] == "NVIDIA 9.9.1 is built and installed for this kernel."
    assert ok["hints"] == {"urgency": 0} and ok["actions"] == []
    second = [c for c in mon.notifies() if c["summary"] == building and c["id"] != fail["id"]]
    assert second and second[0]["replaces"] == 0
    assert all(p["replaces"] == second[0]["id"] for p in second[1:])
    assert ok["replaces"] == second[0]["id"] == ok["id"]

    # What the server displayed, in its own words.
    shown = desktop.dunst.history()
    assert [(n["id"], n["urgency"], n["summary"], n["body"]) for n in shown] == [
        (fail["id"], "critical", failed, FAILED_BODY),
        (boot["id"], "critical", BOOT_SUMMARY, rebuilding["body"]),
        (ok["id"], "low", ready, "NVIDIA 9.9.1 is built and installed for this kernel."),
    ]
    assert {n["app"] for n in shown} == {"nvkmd"}
    # Every call came from the one agent; nothing else was shown.
    calls = mon.calls()
    assert len({c["sender"] for c in calls}) == 1
    assert [c["summary"] for c in calls if c["call"] == "Notify"
            and c["summary"] != building] == [failed, BOOT_SUMMARY, BOOT_SUMMARY, ready]
    assert agent.stop() == 0
    assert daemon.stop() == 0


def test_agent_keeps_working_across_a_daemon_restart(root, bus, bus_daemon, desktop, agent_factory):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    tiny(root)
    desktop.start_server()
    daemon = bus_daemon(root, bus)
    agent = agent_factory(bus.address)
    ready = f"NVIDIA modules ready for {k}"
    desktop.monitor.wait_notify(ready)
    agent.wait_ready()

    assert daemon.stop() == 0
    agent.wait_log(r"event='nvkmd stopped; waiting for it to return'")
    daemon.start()
    daemon.wait_on_bus()
    agent.wait_log(r"event='nvkmd is running'", count=2)
    # A rebuild asked of the new daemon instance reaches the agent too.
    run(bus.address, lambda c: c.build(k, force=True))
    first, again = desktop.monitor.wait_notify(ready, count=2)
    assert again["id"] != first["id"] and again["hints"] == {"urgency": 0}
    assert agent.alive()
    assert agent.stop() == 0


def test_failure_while_no_agent_ran_is_shown_once(root, bus, bus_daemon, desktop, agent_factory):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    tiny(root, broken=True)
    desktop.start_server()
    bus_daemon(root, bus)
    wait_for(lambda: kernel_state(bus.address, k) == "failed", 120, f"{k}'s build to fail")

    failed = f"NVIDIA module build failed for {k}"
    agent = agent_factory(bus.address)
    (fail,) = desktop.monitor.wait_notify(failed)
    assert fail["body"] == FAILED_BODY and fail["hints"] == {"urgency": 2}
    desktop.monitor.wait_notify(BOOT_SUMMARY)
    agent.wait_ready()
    assert desktop.state_file.is_file()
    # A clean stop takes the boot warning down (nobody would close it).
    (boot,) = desktop.monitor.notifies(BOOT_SUMMARY)
    assert agent.stop() == 0
    assert any(c["call"] == "Close" and c["id"] == boot["id"] for c in desktop.monitor.calls())

    agent.start()
    agent.wait_ready()
    desktop.monitor.wait_notify(BOOT_SUMMARY, count=2)
    assert len(desktop.monitor.notifies(failed)) == 1
    shown = desktop.dunst.history()
    assert [(n["urgency"], n["summary"]) for n in shown] == [
        ("critical", failed), ("critical", BOOT_SUMMARY), ("critical", BOOT_SUMMARY)]
    assert agent.stop() == 0


def test_show_log_opens_the_build_log(root, bus, bus_daemon, desktop, agent_factory, tmp_path):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    tiny(root, broken=True)
    opened = tmp_path / "opened"
    opened.mkdir()
    # The viewer: cp, which "opens" the log by copying it where the test looks.
    desktop.agent_config.write_text(f'[notifications]\nlog_viewer = ["cp", "-t", "{opened}"]\n'
                                    "progress = false\n")
    desktop.start_server()
    bus_daemon(root, bus)
    agent = agent_factory(bus.address)
    failed = f"NVIDIA module build failed for {k}"
    desktop.monitor.wait_notify(failed)
    desktop.monitor.wait_notify(BOOT_SUMMARY)
    log = Path(run(bus.address, lambda c: c.status()).kernels[0].last_build.log)
    assert log.is_file()
    # A click on the first notification on screen (the failure): dunst
    # invokes its default action, "Show log".
    wait_for(lambda: desktop.dunst.displayed() == 2, 30, "dunst to display both")
    desktop.dunst.ctl("action", "0")
    copy = opened / log.name
    wait_for(copy.is_file, 30, "the log viewer to run")
    assert copy.read_bytes() == log.read_bytes()
    assert agent.stop() == 0


def test_without_a_server_it_warns_once_and_shows_later(root, bus, bus_daemon, desktop,
                                                         agent_factory):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    tiny(root, broken=True)
    agent = agent_factory(bus.address)
    agent.wait_ready()
    bus_daemon(root, bus)
    wait_for(lambda: kernel_state(bus.address, k) == "failed", 120, f"{k}'s build to fail")
    agent.wait_log(r"event='the next boot would start without the NVIDIA driver'")
    text = agent.text()
    assert text.count("no notification server on the session bus") == 1, text
    assert agent.alive()

    desktop.start_server()
    failed = f"NVIDIA module build failed for {k}"
    (fail,) = desktop.monitor.wait_notify(failed)
    (boot,) = desktop.monitor.wait_notify(BOOT_SUMMARY)
    assert fail["body"] == FAILED_BODY and boot["body"] == boot_body(k)
    assert [(n["urgency"], n["summary"]) for n in desktop.dunst.history()] == [
        ("critical", failed), ("critical", BOOT_SUMMARY)]
    assert agent.text().count("no notification server on the session bus") == 1
    assert agent.stop() == 0


def test_success_and_progress_can_be_turned_off(root, bus, bus_daemon, desktop, agent_factory):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    tiny(root)
    desktop.agent_config.write_text("[notifications]\nsuccess = false\nprogress = false\n")
    desktop.start_server()
    agent = agent_factory(bus.address)
    agent.wait_ready()
    bus_daemon(root, bus)
    agent.wait_log(rf"event='build finished' kernel='{k}' result='success'")
    assert desktop.monitor.notifies() == []
    assert "bad configuration" not in agent.text()
    assert agent.stop() == 0


def test_a_bad_config_is_one_warning_and_the_defaults(root, bus, bus_daemon, desktop,
                                                      agent_factory):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    tiny(root)
    desktop.agent_config.write_text("[notifications]\nsuccess = \"sometimes\"\n")
    desktop.start_server()
    agent = agent_factory(bus.address)
    agent.wait_ready()
    warnings = [line for line in agent.text().splitlines() if "level='warning'" in line]
    assert len(warnings) == 1, warnings
    assert "notifications.success: expected true or false" in warnings[0]
    assert str(desktop.agent_config) in warnings[0]
    bus_daemon(root, bus)
    # The defaults: success notifications on.
    desktop.monitor.wait_notify(f"NVIDIA modules ready for {k}")
    assert agent.stop() == 0


def test_the_agent_needs_no_privileges(root, bus, bus_daemon, desktop, agent_factory):
    """As the user nobody, on the system-like bus with the project's
    busconfig: it reads the status, gets the signals and notifies."""
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    tiny(root, broken=True)
    desktop.start_server()
    agent = agent_factory(bus.address, as_nobody=True)
    agent.wait_log(r"event='ready'.*daemon='absent'")
    bus_daemon(root, bus)
    failed = f"NVIDIA module build failed for {k}"
    (fail,) = desktop.monitor.wait_notify(failed)
    assert fail["body"] == FAILED_BODY
    desktop.monitor.wait_notify(BOOT_SUMMARY)
    state = agent.home / ".local" / "state" / "nvkmd" / "agent-state.json"
    assert state.is_file() and state.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert agent.stop() == 0
