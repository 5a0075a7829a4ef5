"""The engine end to end on the tiny tree, against real Debian headers."""

from __future__ import annotations

import re
import subprocess
import sys

from helpers import REPO, need_kernels, run_nvkmd
from nvkmd.system.modinfo import elf_section, modinfo


def test_once_builds_and_installs_for_two_kernels(root):
    k1, k2 = need_kernels(2)[-2:]
    root.add_kernel(k1)
    root.add_kernel(k2)
    root.add_tiny_source()
    proc = run_nvkmd("--once", "--root", str(root.path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for k in (k1, k2):
        assert re.search(rf"^{re.escape(k)}: success \[log: .*build-\d{{8}}-\d{{6}}\.log\]$",
                         proc.stdout, re.M), proc.stdout
        d = root.nvkmd_dir(k)
        kos = sorted(p.name for p in d.glob("*.ko"))
        assert kos == ["nvidia-modeset.ko", "nvidia.ko"]
        info = modinfo(d / "nvidia.ko")
        assert info["version"] == "9.9.1"
        assert info["vermagic"].split()[0] == k
        # stripped of debug info
        assert elf_section((d / "nvidia.ko").read_bytes(), ".debug_info") is None
        dep = (root.modules / k / "modules.dep").read_text()
        assert "updates/nvkmd/nvidia-modeset.ko: updates/nvkmd/nvidia.ko" in dep
        logdir = root.path / "var/log/nvkmd" / k
        latest = logdir / "latest.log"
        assert latest.is_symlink() and latest.resolve().parent == logdir
        text = latest.read_text()
        assert f"# kernel: {k}" in text and "# result: success" in text
        assert "# toolchain: CC=gcc-12" in text and "  CC [M] " in text
        # where the time went, phase by phase, adding up to no more than the whole
        phases = re.search(r"^# phases: (.*)$", text, re.M).group(1)
        took = {n: float(t) for n, t in re.findall(r"([\w-]+) (\d+\.\d\d)s", phases)}
        assert list(took) == ["copy", "make", "cache", "install", "after-install"], phases
        whole = float(re.search(r"^# elapsed: (\d+\.\d)s$", text, re.M).group(1))
        assert took["make"] > 0 and sum(took.values()) <= whole + 0.1
    top = root.path / "var/log/nvkmd/latest.log"
    assert top.is_symlink() and top.resolve().exists()


def test_second_run_has_nothing_to_do(root):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    assert run_nvkmd("--once", "--root", str(root.path)).returncode == 0
    again = run_nvkmd("--once", "--root", str(root.path))
    assert again.returncode == 0
    assert "all kernels are ready" in again.stdout


def test_forced_rebuild_is_served_from_cache_without_a_compiler(root, tmp_path):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    assert run_nvkmd("--once", "--root", str(root.path)).returncode == 0
    first = (root.nvkmd_dir(k) / "nvkmd.json").read_text()
    trace = tmp_path / "execve.trace"
    # strace records every program the forced rebuild runs.
    proc = subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve", "-o", str(trace),
                           sys.executable, "-m", "nvkmd.daemon", "--once", "--force", "--root",
                           str(root.path), "--kernel", k], capture_output=True, text=True,
                          cwd=REPO, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{k}: success (from cache)" in proc.stdout
    programs = re.findall(r'execve\("([^"]+)"', trace.read_text())
    assert any(p.endswith("/depmod") for p in programs), programs    # the trace works
    compilers = [p for p in programs if re.search(r"/(make|gcc[-0-9]*|cc1|cc|ld|as)$", p)]
    assert compilers == [], compilers
    assert (root.nvkmd_dir(k) / "nvkmd.json").read_text() != first   # reinstalled


def test_logs_keep_the_last_n_per_kernel_and_latest_follows(root):
    k = need_kernels(1)[-1]
    root.add_kernel(k)
    root.add_tiny_source()
    root.configure(root.config_text + "[logs]\nkeep = 2\n")
    seen = []
    for _ in range(3):
        proc = run_nvkmd("--once", "--force", "--root", str(root.path), "--kernel", k)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        seen.append(re.search(r"\[log: (.*)\]", proc.stdout).group(1))
    logdir = root.path / "var/log/nvkmd" / k
    kept = sorted(str(p) for p in logdir.glob("build-*.log"))
    assert kept == sorted(seen[1:])
    assert str((logdir / "latest.log").resolve()) == seen[-1]
    assert str((root.path / "var/log/nvkmd/latest.log").resolve()) == seen[-1]
    text = (logdir / "latest.log").read_text()
    assert "# from cache: yes" in text and re.search(r"# elapsed: \d+\.\ds", text)
    assert re.search(r"^# phases: install \d+\.\d\ds, after-install \d+\.\d\ds$", text, re.M), text
