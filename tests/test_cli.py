"""nvkmctl against the real daemon on a private bus: every command, --json,
the exit statuses, the progress bar on a terminal, and one clear line (exit
3, no traceback) when the daemon is not there."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbus_helpers import run, serve_root
from helpers import REPO, wait_for
from nvkmd import api
from nvkmd.build.progress import PHASES


def nvkmctl(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
            code: int | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run([sys.executable, "-m", "nvkmd.cli", *args], capture_output=True, text=True,
                       env=e, timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    if code is not None:
        assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    return r


def one_line(text: str) -> str:
    assert text.endswith("\n") and text.count("\n") == 1, repr(text)
    return text.strip()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serve_root(tmp_path_factory.mktemp("cli"), kernels=2) as s:
        yield s


# -- the daemon is not there ------------------------------------------------------

COMMANDS = [["status"], ["kernels"], ["jobs"], ["build"], ["build", "--wait"], ["cancel", "1"],
            ["logs"], ["logs", "--follow"], ["cleanup"], ["cleanup", "--execute"], ["rescan"]]


def test_daemon_stopped_every_command_prints_one_line_and_exits_3(bus):
    for cmd in COMMANDS:
        r = nvkmctl("--bus", bus.address, *cmd, code=3)
        line = one_line(r.stderr)
        assert line == f"nvkmctl: nvkmd is not running (nothing owns io.github.nvkmd on the bus at " \
                       f"{bus.address})", (cmd, line)
        assert r.stdout == ""
    r = nvkmctl("--bus", bus.address, "status", "--json", code=3)
    assert json.loads(r.stdout) == {"error": {"code": "Unreachable", "message": one_line(r.stderr)
                                              .removeprefix("nvkmctl: ")}}


def test_daemon_stopped_after_running_exits_3(tmp_path):
    with serve_root(tmp_path, kernels=1, ready=False) as s:
        nvkmctl("--bus", s.address, "status", code=0)
        assert s.daemon.stop() == 0
        r = nvkmctl("--bus", s.address, "status", code=3)
        assert "nvkmd is not running" in one_line(r.stderr)
        s.daemon.start()          # the fixture expects it running at the end
        s.daemon.wait_on_bus()


def test_no_bus_at_all_exits_3(tmp_path):
    address = f"unix:path={tmp_path}/no-such-socket"
    r = nvkmctl("--bus", address, "status", code=3)
    assert one_line(r.stderr).startswith(f"nvkmctl: cannot connect to the bus at {address}: ")


def test_activation_that_systemd_does_not_do_exits_3(bus_factory):
    # The activation file says Exec=/bin/false: without systemd, the bus
    # tries to start the daemon that way, and the client says so.
    bus = bus_factory(activation=True)
    r = nvkmctl("--bus", bus.address, "status", code=3)
    assert "could not start it" in one_line(r.stderr)


# -- usage ------------------------------------------------------------------------------

def test_usage_errors_exit_2_and_help_documents_the_exit_statuses():
    for args in ([], ["frobnicate"], ["cancel"], ["cancel", "abc"], ["logs", "-t", "x"],
                 ["--bus", "nonsense", "status"], ["status", "--bogus"]):
        r = nvkmctl(*args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
    r = nvkmctl("--help", code=0)
    for line in ("0  success", "1  the operation failed", "2  usage error",
                 "3  the daemon is unreachable", "4  access denied"):
        assert line in r.stdout
    for cmd in ("status", "kernels", "jobs", "build", "cancel", "logs", "cleanup", "rescan"):
        sub = nvkmctl(cmd, "--help", code=0).stdout
        assert "--json" in sub and "exit status:" in sub, cmd


def test_readme_documents_the_exit_statuses():
    text = (REPO / "README.md").read_text()
    for code, word in ((0, "success"), (1, "failed"), (2, "usage"), (3, "unreachable"), (4, "denied")):
        assert re.search(rf"^\| {code} \|.*{word}", text, re.M | re.I), (code, word)


# -- the commands --------------------------------------------------------------------------

def test_status_human_view(served):
    served.wait_ready()
    k1, k2 = served.kernels
    out = nvkmctl("--bus", served.address, "status", code=0).stdout
    lines = out.splitlines()
    # The next boot first (no boot loader in this root: a guess), then the box.
    assert lines[0] == f"Next boot: {k1} (a guess: newest first) — ready"
    title = lines.index("NVIDIA Kernel Module Status (nvkmd)")
    assert set(lines[title + 1]) == {"═"}
    assert "Daemon:         idle (nvkmd 0.1.0)" in lines
    assert "Driver:         9.9.1" in lines and "Source Type:    git" in lines
    assert f"Source:         {served.root.path}/usr/src/nvidia-tiny" in lines
    assert "Installed Kernels (2):" in lines
    assert f"  ✓ {k1} [nvidia: nvkmd 9.9.1, headers: ✓] (running)" in lines
    assert f"  ✓ {k2} [nvidia: nvkmd 9.9.1, headers: ✓]" in lines
    assert "Jobs (0):" in lines
    # a terminal that cannot show ✓ gets ASCII, not an error
    r = nvkmctl("--bus", served.address, "status", env={"PYTHONIOENCODING": "ascii"}, code=0)
    assert f"  + {k1} [nvidia: nvkmd 9.9.1, headers: +] (running)" in r.stdout.splitlines()


def test_status_json_is_exactly_the_model_shape(served):
    served.wait_ready()
    d = json.loads(nvkmctl("--bus", served.address, "status", "--json", code=0).stdout)
    assert d == served.status().to_dict()
    assert set(d) == set(served.status().to_dict()) >= {"daemon", "source", "kernels", "jobs"}
    assert set(d["daemon"]) == {"version", "state"}
    assert {"path", "version", "kind"} <= set(d["source"])
    for k in d["kernels"]:
        assert {"release", "running", "headers", "state", "origin", "module_version",
                "last_build"} <= set(k)
        assert set(k["last_build"]) >= {"result", "log", "cause", "hint", "finished_at"}
    for j in d["jobs"]:
        assert {"id", "kernel", "state", "phase", "percent"} <= set(j)


def test_kernels_and_jobs(served):
    served.wait_ready()
    k1, k2 = served.kernels
    out = nvkmctl("--bus", served.address, "kernels", code=0).stdout
    assert f"  ✓ {k1} [nvidia: nvkmd 9.9.1, headers: ✓] (running)\n" in out
    ks = json.loads(nvkmctl("--bus", served.address, "kernels", "--json", code=0).stdout)
    assert [k["release"] for k in ks] == [k.release for k in served.status().kernels]
    js = json.loads(nvkmctl("--bus", served.address, "jobs", "--json", code=0).stdout)
    assert {j["kernel"] for j in js if j["state"] == "succeeded"} >= {k1, k2}
    out = nvkmctl("--bus", served.address, "jobs", "-n", "1", code=0).stdout
    assert len(out.splitlines()) == 1 and " succeeded [log: " in out


def test_build_without_wait_queues_and_with_nothing_to_do_says_so(served):
    served.wait_ready()
    r = nvkmctl("--bus", served.address, "build", code=0)
    assert r.stdout == "nothing to build: every module is current\n"
    assert json.loads(nvkmctl("--bus", served.address, "build", "--json", code=0).stdout) == \
        {"job_ids": []}
    # Refused while parsing (a usage error, as argparse reports them), daemon or not.
    r = nvkmctl("--bus", served.address, "build", "--kernel", "../etc", code=2)
    assert r.stderr.splitlines()[-1] == \
        "nvkmctl build: error: argument -k/--kernel: not a kernel release: '../etc'"
    r = nvkmctl("--bus", served.address, "build", "--kernel", "9.9.9-none", code=1)
    assert one_line(r.stderr) == "nvkmctl: no kernel 9.9.9-none is installed"


def test_build_wait_prints_the_result_and_exits_0(served):
    served.wait_ready()
    k2 = served.kernels[1]
    r = nvkmctl("--bus", served.address, "build", "--kernel", k2, "--force", "--wait", code=0)
    lines = r.stdout.splitlines()
    assert lines[0] == f"{k2}: success" and lines[1].startswith("    log:  ")
    assert Path(lines[1].split("log:  ")[1]).is_file()
    assert "\x1b[K" not in r.stdout                    # no progress bar into a pipe
    res = json.loads(nvkmctl("--bus", served.address, "build", "--kernel", k2, "--force", "--wait",
                             "--json", code=0).stdout)
    assert [(x["kernel"], x["result"]) for x in res] == [(k2, "success")]


def test_build_wait_on_a_terminal_shows_a_progress_bar(served):
    served.wait_ready()
    k1 = served.kernels[0]
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "nvkmd.cli", "--bus", served.address, "build",
                             "--kernel", k1, "--force", "--wait"], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, cwd=REPO, env=dict(os.environ, LANG="C.UTF-8"))
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:          # the terminal closed: the process ended
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(30) == 0
    text = out.decode(errors="replace")
    assert "Traceback" not in text
    bars = re.findall(r"\r\x1b\[K" + re.escape(k1) + r" [█░]{30} (\w+) +(\d+)%", text)
    assert bars, text
    assert all(phase in PHASES for phase, _ in bars)
    percents = [int(p) for _, p in bars]
    assert percents == sorted(percents) and max(percents) > 0
    assert f"{k1}: success" in text


def test_build_wait_of_a_failing_build_exits_1_with_cause_hint_and_log(tmp_path):
    def break_source(root):
        c = root.path / "usr" / "src" / "nvidia-tiny" / "kernel-open" / "nvidia" / "nv.c"
        c.write_text(c.read_text() + "\nthis is not C;\n")
    with serve_root(tmp_path, kernels=1, prepare=break_source, ready=False) as s:
        k = s.kernels[0]
        wait_for(lambda: s.status().kernels[0].state == "failed", 120, "the first build to fail")
        r = nvkmctl("--bus", s.address, "build", "--kernel", k, "--force", "--wait", code=1)
        lines = r.stdout.splitlines()
        assert lines[0].startswith(f"{k}: failed: "), lines
        assert lines[1].startswith("    hint: ") and lines[2].startswith("    log:  ")
        out = nvkmctl("--bus", s.address, "status", code=0).stdout
        assert f"  ✗ {k} [nvidia: MISSING, headers: ✓] (running) build failed: " in out
        assert "      hint: " in out and "      log:  " in out


def test_cancel(served):
    r = nvkmctl("--bus", served.address, "cancel", "987654", code=1)
    assert one_line(r.stderr) == "nvkmctl: no job 987654"
    r = nvkmctl("--bus", served.address, "cancel", "0", code=2)
    assert "argument id: job_id: 0 is never a job" in r.stderr.splitlines()[-1]


def test_cancel_a_queued_job(served):
    import fcntl
    served.wait_ready()
    k1, k2 = served.kernels
    locks = served.root.path / "var" / "lib" / "nvkmd" / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / f"{k1}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)       # k1's job runs and waits; k2's stays queued
    try:
        ids = json.loads(nvkmctl("--bus", served.address, "build", "--force", "--json",
                                 code=0).stdout)["job_ids"]
        assert len(ids) == 2
        jobs = {j.id: j for j in run(served.address, lambda c: c.jobs(0))}
        queued = [i for i in ids if jobs[i].state == "queued"]
        assert queued, jobs
        r = nvkmctl("--bus", served.address, "cancel", str(queued[0]), code=0)
        assert r.stdout == f"cancelled job {queued[0]}\n"
        for i in ids:
            if i != queued[0]:
                nvkmctl("--bus", served.address, "cancel", str(i), code=0)
    finally:
        os.close(fd)
    # a running job ends as cancelled once its build task has stopped
    wait_for(lambda: all(j.state == "cancelled" for j in run(served.address, lambda c: c.jobs(10))
                         if j.id in ids), 60, "both jobs to be cancelled")
    nvkmctl("--bus", served.address, "build", code=0)
    served.wait_ready()


def test_logs(served):
    served.wait_ready()
    k1 = served.kernels[0]
    r = nvkmctl("--bus", served.address, "logs", "-k", k1, "-t", "3", code=0)
    path = Path(re.match(r"==> (.*) <==\n", r.stderr).group(1))
    assert path.parent.name == k1
    assert r.stdout.splitlines() == path.read_text().splitlines()[-3:]
    d = json.loads(nvkmctl("--bus", served.address, "logs", "-k", k1, "-t", "2", "--json",
                           code=0).stdout)
    assert d == {"path": str(path), "lines": path.read_text().splitlines()[-2:]}
    job = [j for j in run(served.address, lambda c: c.jobs(50)) if j.log][-1]
    r = nvkmctl("--bus", served.address, "logs", "-j", str(job.id), "-t", "1", code=0)
    assert r.stderr == f"==> {job.log} <==\n"
    # following a finished log prints it and ends
    r = nvkmctl("--bus", served.address, "logs", "-k", k1, "--follow", "-t", "5", code=0)
    assert r.stdout.splitlines() == path.read_text().splitlines()[-5:]
    nvkmctl("--bus", served.address, "logs", "-t", "-1", code=2)
    nvkmctl("--bus", served.address, "logs", "-k", "../x", code=2)


def test_logs_follow_a_running_build_until_it_ends(served):
    served.wait_ready()
    k2 = served.kernels[1]
    (ids,) = served.call("Build", k2, True)
    job = ids[0]

    def running_with_log():
        for j in run(served.address, lambda c: c.jobs(0)):
            if j.id == job and j.state == "running" and j.phase not in ("", "prepare"):
                return j
        return None
    wait_for(running_with_log, 120, "the build to be under way")
    r = nvkmctl("--bus", served.address, "logs", "-j", str(job), "--follow", "-t", "1000", code=0)
    out = r.stdout.splitlines()
    assert out[0] == f"# nvkmd build log for {k2}"
    assert "# result: success" in out
    done = [j for j in run(served.address, lambda c: c.jobs(5)) if j.id == job][0]
    assert done.state == "succeeded" and Path(done.log).read_text().startswith("\n".join(out[:3]))


def test_cleanup_and_rescan(served):
    served.wait_ready()
    gone = served.root.modules / "5.10.0-0-gone" / "updates" / "nvkmd"
    gone.mkdir(parents=True)
    (gone / "nvidia.ko").write_bytes(b"old module")

    def listed():
        r = nvkmctl("--bus", served.address, "cleanup", "--keep", "1", code=0)
        return r if str(gone) in r.stdout else None
    r = wait_for(listed, 30, "the leftover module to be listed")
    lines = r.stdout.splitlines()
    assert lines[0] == "NVIDIA Module Cleanup (dry run)"
    assert "Keeping: the 1 most recent kernels, plus the running one" in lines
    assert f"  ✗ {gone}" in lines and "Dry run - no changes made." in lines
    assert gone.exists()
    d = json.loads(nvkmctl("--bus", served.address, "cleanup", "--keep", "1", "--execute", "--json",
                           code=0).stdout)
    assert d["executed"] is True and str(gone) in d["paths"] and not gone.exists()
    nvkmctl("--bus", served.address, "cleanup", "--keep", "-1", code=2)
    assert nvkmctl("--bus", served.address, "rescan", code=0).stdout == "rescan done\n"
    assert json.loads(nvkmctl("--bus", served.address, "rescan", "--json", code=0).stdout) == \
        {"rescanned": True}


def test_bus_names_are_the_documented_ones():
    assert (api.BUS_NAME, api.OBJECT_PATH, api.INTERFACE) == (
        "io.github.nvkmd", "/io/github/nvkmd", "io.github.nvkmd.Manager1")


@pytest.mark.parametrize("what", ["daemon", "bus"])
def test_build_wait_exits_3_when_the_daemon_or_the_bus_goes_away(tmp_path, what):
    import fcntl
    from dbus_helpers import BusDaemon, PrivateBus
    from helpers import TestRoot, need_kernels
    k = need_kernels(1)[-1]
    root = TestRoot(tmp_path / "root")
    root.add_tiny_source()
    root.configure(root.config_text + "[daemon]\ndebounce_s = 0.2\n")
    root.add_kernel(k)
    locks = root.path / "var" / "lib" / "nvkmd" / "locks"
    locks.mkdir(parents=True)
    fd = os.open(locks / f"{k}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)        # the build starts and waits: it never ends by itself
    bus = PrivateBus()
    d = BusDaemon(root, tmp_path / "nvkmd.log", bus, env={"NVKMD_RUNNING_KERNEL": k})
    proc = None
    try:
        d.start()
        d.wait_on_bus()
        proc = subprocess.Popen([sys.executable, "-m", "nvkmd.cli", "--bus", bus.address, "build",
                                 "--kernel", k, "--force", "--wait"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=REPO, stdin=subprocess.DEVNULL)
        def while_waiting(cond):
            # nvkmctl must still be waiting on the build: once it has exited
            # (a crash), waiting out the deadline only hides its output.
            def check():
                if proc.poll() is not None:
                    out, err = proc.communicate()
                    pytest.fail(f"nvkmctl exited {proc.returncode} before the daemon or bus "
                                f"went away:\nstdout: {out}\nstderr: {err}")
                return cond()
            return check
        wait_for(while_waiting(lambda: "method='Build'" in d.log_text()), 60, "nvkmctl's Build call")
        wait_for(while_waiting(lambda: any(j.state == "running"
                                           for j in run(bus.address, lambda c: c.jobs(0)))),
                 60, "the job to run")
        if what == "daemon":
            assert d.stop() == 0
        else:
            bus.proc.kill()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 3, (out, err)
        assert "Traceback" not in err
        line = one_line(err)
        assert line in ("nvkmctl: nvkmd stopped before the build finished",), line
    finally:
        os.close(fd)
        if proc and proc.poll() is None:
            proc.kill()
        if d.alive():
            d.kill9()
        bus.stop()
