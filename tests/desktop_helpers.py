"""A real desktop session for nvkmd-agent's tests: a private session bus,
Xvfb, the dunst notification server on both, ``busctl monitor`` recording
every call to it, and the agent itself as a process.

dunst's history (``dunstctl history`` after ``dunstctl close-all``) says
what the server displayed; dunst 1.9 leaves urgency out of it, so the test
config makes each urgency section format the message as
``<urgency>|<summary>|<body>``: the urgency as dunst itself understood it.
The monitor adds what the history cannot show: replaces_id, hints, timeouts
and CloseNotification calls, each with the id the server answered.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from harness.bus import PrivateBus
from harness.processes import LoggedProcess, Started, stop
from harness.waiting import wait_for

DUNSTRC = """[global]
    monitor = 0
    follow = none
    notification_limit = 0
    indicate_hidden = yes
    stack_duplicates = false
    sort = no
    markup = full
    history_length = 1000
    sticky_history = yes
    idle_threshold = 0
    show_age_threshold = -1
    ignore_dbusclose = false
    enable_recursive_icon_lookup = false
    browser = /bin/false
    dmenu = /bin/false
[urgency_low]
    format = "low|%s|%b"
    timeout = 0
[urgency_normal]
    format = "normal|%s|%b"
    timeout = 0
[urgency_critical]
    format = "critical|%s|%b"
    timeout = 0
"""


def _need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed (scripts/setup installs them)")


def SessionBus() -> PrivateBus:
    _need("dbus-daemon")
    return PrivateBus(kind="session")


class Xvfb:
    def __init__(self):
        _need("Xvfb")
        r, w = os.pipe()
        self.proc = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-nolisten", "tcp",
                                      "-screen", "0", "1024x768x24"], pass_fds=(w,),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(w)
        # Xvfb writes the display number once it accepts connections.
        with os.fdopen(r) as f:
            number = f.readline().strip()
        if not number:
            raise AssertionError(f"Xvfb did not start: {self.proc.stderr.read().decode()}")
        self.display = f":{number}"

    def stop(self) -> None:
        stop(self.proc)


class Dunst(LoggedProcess):
    """The real notification server."""

    name = "dunst"
    strict = False

    def __init__(self, session: PrivateBus, xvfb: Xvfb, tmp: Path):
        _need("dunst", "dunstctl", "dbus-send")
        super().__init__(tmp / "dunst.log", {"DBUS_SESSION_BUS_ADDRESS": session.address,
                                              "DISPLAY": xvfb.display})
        self.rc = tmp / "dunstrc"
        self.rc.write_text(DUNSTRC)
        self.log = self.log_path

    def command(self) -> list[str]:
        return ["dunst", "-config", str(self.rc)]

    def start(self) -> "Dunst":
        super().start()

        def up():
            if gone := self.exited():
                raise AssertionError(f"{gone}: {self.log_text(True)}")
            return self.ctl("is-paused", check=False).returncode == 0
        wait_for(up, 30, "dunst to own org.freedesktop.Notifications")
        return self

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["dunstctl", *args], env=self.environment(), capture_output=True,
                              text=True, timeout=30, check=check)

    def displayed(self) -> int:
        return int(self.ctl("count", "displayed").stdout)

    def history(self) -> list[dict[str, Any]]:
        """Close everything, then what dunst showed, oldest first:
        {id, urgency, summary, body, timeout, progress}."""
        self.ctl("close-all")
        data = json.loads(self.ctl("history").stdout)["data"][0]
        out = []
        for n in data:
            urgency, summary, body = n["message"]["data"].split("|", 2)
            assert summary == n["summary"]["data"]
            out.append({"id": n["id"]["data"], "urgency": urgency, "summary": summary,
                        "body": n["body"]["data"], "timeout": n["timeout"]["data"],
                        "progress": n["progress"]["data"], "app": n["appname"]["data"]})
        return sorted(out, key=lambda n: n["id"])


class Monitor:
    """``busctl monitor`` on the session bus: every Notify call with the id
    the server answered, and every CloseNotification."""

    def __init__(self, session: PrivateBus):
        _need("busctl")
        self.proc = subprocess.Popen(["busctl", f"--address={session.address}", "monitor",
                                      "--json=short"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        # busctl says so once the bus has made it a monitor.
        line = self.proc.stderr.readline()
        if "Monitoring" not in line:
            raise AssertionError(f"busctl monitor did not start: {line}{self.proc.stderr.read()}")
        self._lock = threading.Lock()
        self._messages: list[dict] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self._messages.append(msg)

    def calls(self, app: str = "nvkmd") -> list[dict[str, Any]]:
        """Our Notify and CloseNotification calls, in order; a Notify has
        its reply's id once the server answered."""
        with self._lock:
            msgs = list(self._messages)
        replies = {(m.get("destination"), m.get("reply_cookie")): m for m in msgs
                   if m["type"] == "method_return"}
        out = []
        for m in msgs:
            if m["type"] != "method_call" or m.get("interface") != "org.freedesktop.Notifications":
                continue
            data = m["payload"]["data"]
            reply = replies.get((m.get("sender"), m.get("cookie")))
            if m["member"] == "Notify" and data[0] == app:
                out.append({"call": "Notify", "replaces": data[1], "icon": data[2],
                            "summary": data[3], "body": data[4], "actions": data[5],
                            "hints": {k: v["data"] for k, v in data[6].items()},
                            "timeout": data[7], "sender": m["sender"],
                            "id": reply["payload"]["data"][0] if reply else None})
            elif m["member"] == "CloseNotification":
                out.append({"call": "Close", "id": data[0], "sender": m["sender"]})
        return out

    def notifies(self, summary: str | None = None) -> list[dict[str, Any]]:
        return [c for c in self.calls() if c["call"] == "Notify"
                and (summary is None or c["summary"] == summary) and c["id"] is not None]

    def wait_notify(self, summary: str, count: int = 1, timeout: float = 120) -> list[dict]:
        return wait_for(lambda: (lambda ns: ns if len(ns) >= count else None)(self.notifies(summary)),
                        timeout, f"{count} notification(s) {summary!r}")

    def stop(self) -> None:
        stop(self.proc)


class Desktop:
    """Session bus + Xvfb + monitor; dunst started by ``start_server``."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.session = SessionBus()
        self.xvfb = Xvfb()
        self.monitor = Monitor(self.session)
        self.dunst = Dunst(self.session, self.xvfb, tmp)
        self.home = tmp / "home"
        (self.home / ".config" / "nvkmd").mkdir(parents=True)

    def start_server(self) -> Dunst:
        return self.dunst.start()

    @property
    def agent_config(self) -> Path:
        return self.home / ".config" / "nvkmd" / "agent.toml"

    @property
    def state_file(self) -> Path:
        return self.home / ".local" / "state" / "nvkmd" / "agent-state.json"

    def stop(self) -> None:
        for part in (self.dunst, self.monitor, self.xvfb, self.session):
            part.stop()


class AgentProcess(LoggedProcess):
    """``python -m nvkmd.agent --bus <system-like bus> -v`` as a user of
    ``desktop``: its session bus, its $HOME (XDG_* unset, so the defaults
    under $HOME are what is tested)."""

    name = "nvkmd-agent"

    def __init__(self, desktop: Desktop, bus_address: str, log_path: Path, as_nobody: bool = False):
        super().__init__(log_path)
        self.desktop = desktop
        self.bus_address = bus_address
        self.as_nobody = as_nobody
        self.home = desktop.home
        if as_nobody:
            self.home = Path(tempfile.mkdtemp(prefix="nvkmd-home-"))
            shutil.chown(self.home, "nobody", "nogroup")

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
        env.update(DBUS_SESSION_BUS_ADDRESS=self.desktop.session.address,
                   HOME=str(self.home), PYTHONUNBUFFERED="1")
        env.pop("DISPLAY", None)
        return env

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "nvkmd.agent", "--bus", self.bus_address, "-v"]
        if not self.as_nobody:
            return cmd
        from dbus_helpers import NOBODY, nobody_python
        py, base = nobody_python()
        user_env = {**base, "DBUS_SESSION_BUS_ADDRESS": self.desktop.session.address,
                    "HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        return [*NOBODY, "env", "-i", *(f"{k}={v}" for k, v in user_env.items()), *py, *cmd[1:]]

    def text(self, this_run: bool = True) -> str:
        return self.log_text(this_run)


@pytest.fixture
def desktop(tmp_path):
    d = Desktop(tmp_path)
    yield d
    d.stop()
    if d.dunst.log.exists():
        print("===== dunst log")
        print(d.dunst.log.read_text())


@pytest.fixture
def agent_factory(tmp_path, desktop):
    """``agent_factory(bus_address)`` -> a started AgentProcess; its log is
    printed at teardown (pytest shows it for a failed test)."""
    made = Started()

    def make(bus_address: str, start: bool = True, as_nobody: bool = False) -> AgentProcess:
        a = made.add(AgentProcess(desktop, bus_address, tmp_path / f"agent-{len(made)}.log",
                                  as_nobody))
        return a.start() if start else a
    yield make
    made.close()
    for a in made.all:
        if a.as_nobody:
            shutil.rmtree(a.home, ignore_errors=True)
