"""Run one command under a real, private systemd-journald, as systemd would.

Started by tests/journald_helpers.py inside ``unshare -m`` (a private mount
namespace): /run and /var/log/journal become empty tmpfs, so the journald
started here is the only one its clients see, and nothing reaches the
host's logs.  The command's stderr is a stream connected to journald's
``stdout`` socket with JOURNAL_STREAM set to it, exactly what
``StandardError=journal`` gives a service.

argv[1] is a JSON object: {"argv": [...], "env": {...}, "until": [journalctl
matches], "timeout": s, "queries": {name: [journalctl args]}}.  Prints one
JSON object: {"exit": status, "entries": [every entry of the command's
PID], "queries": {name: [entries]}}.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

# Run as a script from tests/, which is therefore on sys.path.
from harness.waiting import wait_for

JOURNALD = "/lib/systemd/systemd-journald"


def journal(*args: str) -> list[dict]:
    out = subprocess.run(["journalctl", "--no-pager", "-o", "json", *args],
                         capture_output=True, text=True, timeout=60).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait(cond, timeout: float, what: str):
    return wait_for(cond, timeout, f"{what} (journald_driver)", error=SystemExit)


def main() -> None:
    spec = json.loads(sys.argv[1])
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
    os.makedirs("/run/systemd/journal", exist_ok=True)
    os.makedirs("/run/log/journal", exist_ok=True)
    if os.path.isdir("/var/log/journal"):
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/var/log/journal"], check=True)
    journald = subprocess.Popen([JOURNALD], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(lambda: os.path.exists("/run/systemd/journal/stdout")
             and os.path.exists("/run/systemd/journal/socket"), 30, "journald's sockets")
        stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stream.connect("/run/systemd/journal/stdout")
        # identifier, unit, priority, level prefix, to syslog, to kmsg, to console
        stream.sendall(b"nvkmd\n\n6\n1\n0\n0\n0\n")
        stream.shutdown(socket.SHUT_RD)
        st = os.fstat(stream.fileno())
        env = dict(os.environ, **spec.get("env", {}), JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        proc = subprocess.Popen(spec["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stream.fileno(), env=env)
        stream.close()
        until = spec.get("until")
        timeout = spec.get("timeout", 120)
        if until:
            wait(lambda: proc.poll() is not None or journal(f"_PID={proc.pid}", *until),
                 timeout, f"a journal entry {until}")
        # Without "until" the command is expected to end by itself.
        if until and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=timeout)
        # Everything the command wrote is in before we look (stream lines
        # and native entries arrive on different sockets).
        subprocess.run(["journalctl", "--sync"], capture_output=True, check=True, timeout=60)
        result = {
            "exit": status,
            "entries": journal(f"_PID={proc.pid}"),
            "queries": {name: journal(f"_PID={proc.pid}", *args)
                        for name, args in spec.get("queries", {}).items()},
        }
        print(json.dumps(result))
    finally:
        journald.send_signal(signal.SIGTERM)
        try:
            journald.wait(timeout=10)
        except subprocess.TimeoutExpired:
            journald.kill()


if __name__ == "__main__":
    main()
