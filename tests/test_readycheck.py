"""``nvkmctl wait-ready``: the boot-time check.

The healthy case is proven to contact nothing: it runs under strace with
no reachable bus at all, and the trace shows no socket and no program
but nvkmctl itself.  The slow cases run the real daemon on a private
dbus-daemon configured with the project's busconfig (test_readywait.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO, need_kernels, run_nvkmd
from nvkmd.cli.waiter import EXTEND_MARGIN_S, extend_usec, judge, settle
from nvkmd.errors import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE
from nvkmd.model import JobFinished, JobInfo, KernelStatus, LastBuild

NVKMCTL = Path(sys.executable).parent / "nvkmctl"


def wait_ready(root: Path, *args: str, env: dict[str, str] | None = None, strace: Path | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.pop("NOTIFY_SOCKET", None)
    e.update(env or {})
    cmd = [str(NVKMCTL), "--root", str(root), *args]
    if strace:
        cmd = ["strace", "-f", "-qq", "-e", "trace=execve,socket,connect", "-o", str(strace), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=timeout, cwd=REPO,
                          stdin=subprocess.DEVNULL)


def no_bus(tmp_path: Path) -> dict[str, str]:
    gone = f"unix:path={tmp_path}/no-such-bus"
    return {"DBUS_SYSTEM_BUS_ADDRESS": gone, "DBUS_SESSION_BUS_ADDRESS": gone}


def test_healthy_exits_0_reading_files_only(root, tmp_path, monkeypatch):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    assert run_nvkmd("--once", "--root", str(root.path)).returncode == 0
    trace = tmp_path / "trace"
    proc = wait_ready(root.path, "--bus", f"unix:path={tmp_path}/no-such-bus", "wait-ready",
                      "--timeout", "5", env={**no_bus(tmp_path), "NVKMD_RUNNING_KERNEL": k},
                      strace=trace)
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    assert proc.stdout == f"nvkmd-ready: {k} has NVIDIA modules 9.9.1 (git source)\n"
    calls = trace.read_text()
    assert "socket(" not in calls and "connect(" not in calls, calls
    assert [line for line in calls.splitlines() if "execve(" in line] == \
        [line for line in calls.splitlines() if f'execve("{NVKMCTL}"' in line], calls


def test_kernel_option_and_the_trace_would_show_contact(root, tmp_path):
    """--kernel picks the kernel; a kernel without its module goes to the
    daemon, and the same trace then shows the attempt (so the check above
    can fail)."""
    k1, k2 = need_kernels(2)[-2:]
    root.add_kernel(k1)
    root.add_kernel(k2)
    root.add_tiny_source()
    assert run_nvkmd("--once", "--root", str(root.path), "--kernel", k1).returncode == 0
    ok = wait_ready(root.path, "wait-ready", "--kernel", k1, env=no_bus(tmp_path))
    assert ok.returncode == EXIT_OK, ok.stdout + ok.stderr
    trace = tmp_path / "trace"
    proc = wait_ready(root.path, "--bus", f"unix:path={tmp_path}/no-such-bus", "wait-ready",
                      "--kernel", k2, "--timeout", "2", env=no_bus(tmp_path), strace=trace)
    assert proc.returncode == EXIT_UNREACHABLE, proc.stdout + proc.stderr
    assert "no such file" in trace.read_text().lower() and "connect(" in trace.read_text()


def test_bad_kernel_name_is_one_line_usage_error(root, tmp_path):
    proc = wait_ready(root.path, "wait-ready", "--kernel", "../../etc", env=no_bus(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "not a kernel release" in proc.stderr
    proc = wait_ready(root.path, "wait-ready", "--timeout", "0", env=no_bus(tmp_path))
    assert proc.returncode == 2 and "--timeout" in proc.stderr


# -- the decisions ---------------------------------------------------------------

def ks(state: str, **kw) -> KernelStatus:
    return KernelStatus(release="6.1.0-9-amd64", running=True, headers=state != "waiting-for-headers",
                        headers_package=kw.pop("headers_package", ""), state=state, origin="none",
                        module_version="", **kw)


def job(id: int, state: str, kernel: str = "6.1.0-9-amd64", **kw) -> JobInfo:
    return JobInfo(id=id, kernel=kernel, source_version="1.0", state=state, **kw)


def test_judge():
    k = "6.1.0-9-amd64"
    assert judge(k, "idle", ks("ready"), []).action == "ready"
    assert judge(k, "starting", None, []).action == "wait"
    assert judge(k, "idle", None, []).action == "fail"
    assert judge(k, "idle", ks("missing"), []).action == "build"
    assert judge(k, "idle", ks("failed"), [job(3, "failed")]).action == "build"
    # another kernel's job does not count; the oldest of ours is awaited
    step = judge(k, "building", ks("queued"), [job(5, "running", "other"), job(8, "queued"),
                                               job(7, "queued")])
    assert (step.action, step.job_id) == ("wait", 7)
    step = judge(k, "idle", ks("waiting-for-headers", headers_package="linux-headers-6.1.0-9-amd64"), [])
    assert step.action == "fail" and "install linux-headers-6.1.0-9-amd64" in step.message
    lb = LastBuild("failed", "/l", "the driver does not support this kernel", "", 1.0)
    step = judge(k, "idle", ks("unsupported", last_build=lb), [])
    assert step.action == "fail" and "does not support" in step.message
    # the awaited job finished while no signal arrived
    step = judge(k, "idle", ks("failed"), [job(4, "failed", result="failed")], awaited=4)
    assert (step.action, step.job_id) == ("finished", 4)


def test_settle_and_extend():
    k = "6.1.0-9-amd64"
    assert settle(k, JobFinished(1, k, "success", "", "", "/l"))[0] == EXIT_OK
    code, line = settle(k, JobFinished(1, k, "failed", "kernel API change: foo", "hint", "/var/log/x.log"))
    assert code == EXIT_FAILED and "kernel API change: foo" in line and "/var/log/x.log" in line
    assert "\n" not in line
    code, line = settle(k, JobFinished(1, k, "failed", "the build failed", "", "/l"), "x.c:1: error: y")
    assert line == f"{k}: NVIDIA module build failed: the build failed: x.c:1: error: y (log: /l)"
    assert extend_usec(100.0, 40.0) == int((60 + EXTEND_MARGIN_S) * 1e6)
    assert extend_usec(100.0, 140.0) == int(EXTEND_MARGIN_S * 1e6)


def test_healthy_dkms_module_is_read_from_dkms_tree_without_running_dkms(tmp_path):
    """Modules DKMS built (the DKMS backend) count as healthy too, judged from
    DKMS's tree: `dkms status` is a shell script slower than this whole check."""
    from realdkms import RealDkms
    from test_dkms import build, setup_source
    k = need_kernels(1)[0]
    real = RealDkms()
    try:
        clone, config, paths, _ = setup_source(tmp_path)
        outcome, _ = build(paths, config, k)
        assert outcome.result == "success", outcome
        trace = tmp_path / "trace"
        probe = ("import sys; from nvkmd.config import Config; from nvkmd.paths import Paths; "
                 "from nvkmd.cli.waitready import check_files; "
                 f"c = Config(source_path={str(clone)!r}, state_dir={config.state_dir!r}); "
                 f"r = check_files(Paths.build('/', None, c), c, {k!r}); print(r.ready, r.detail)")
        proc = subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve,socket,connect", "-o",
                               str(trace), sys.executable, "-c", probe],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
        assert proc.stdout.startswith("True "), proc.stdout + proc.stderr
        calls = trace.read_text()
        assert "socket(" not in calls and calls.count("execve(") == 1, calls
    finally:
        real.restore()


def test_json(root, tmp_path):
    import json
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    assert run_nvkmd("--once", "--root", str(root.path)).returncode == 0
    proc = wait_ready(root.path, "wait-ready", "--json", env={**no_bus(tmp_path), "NVKMD_RUNNING_KERNEL": k})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"kernel": k, "ready": True, "exit_status": 0,
                                       "messages": [f"{k} has NVIDIA modules 9.9.1 (git source)"]}
