"""Config values and the config file itself (issue 12): finite numbers in
range only, a regular file read without blocking and up to a size, an
explicit --config that must exist; SIGHUP reloads through the same checks."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from helpers import need_kernels, run_nvkmd
from nvkmd.config import Config, ConfigError


@pytest.mark.parametrize("key,value,message", [
    ("daemon.debounce_s", "nan", "expected a finite number, got nan"),
    ("daemon.debounce_s", "inf", "expected a finite number, got inf"),
    ("build.timeout_s", "nan", "expected a finite number, got nan"),
    ("build.timeout_s", "-inf", "expected a finite number, got -inf"),
    ("daemon.lock_wait_max_s", "1e300", "expected a number > 0 and <= 604800"),
    ("build.jobs", "99999999999999999999", "expected an integer from 0 to 1024"),
    ("build.cache_keep", "100000", "expected an integer from 0 to 100"),
    ("logs.keep", "0", "expected an integer from 1 to 1000"),
    ("logs.max_mib", "0", "expected an integer from 1 to 65536"),
    # every look asks the package manager: not every millisecond
    ("preflight.interval_s", "0.001", "expected a number from 60 to 2592000, got 0.001"),
])
def test_numbers_must_be_finite_and_in_range(root, key, value, message):
    section, name = key.split(".")
    root.configure(f"[{section}]\n{name} = {value}\n")
    proc = run_nvkmd("--once", "--root", str(root.path), timeout=60)
    assert proc.returncode == 78, proc.stdout + proc.stderr
    assert f"{key}: {message}" in proc.stderr


def test_a_fifo_at_the_config_path_does_not_block(root):
    cfg = root.path / "etc/nvkmd/nvkmd.toml"
    os.mkfifo(cfg)
    started = time.monotonic()
    proc = run_nvkmd("--once", "--root", str(root.path), timeout=60)
    assert time.monotonic() - started < 30
    assert proc.returncode == 78 and "not a regular file" in proc.stderr


def test_dev_zero_behind_a_symlink_is_refused_without_reading_it(root):
    cfg = root.path / "etc/nvkmd/nvkmd.toml"
    cfg.symlink_to("/dev/zero")
    proc = run_nvkmd("--once", "--root", str(root.path), timeout=60)
    assert proc.returncode == 78 and "not a regular file" in proc.stderr
    assert "MemoryError" not in proc.stderr


def test_a_huge_config_is_refused(tmp_path):
    cfg = tmp_path / "nvkmd.toml"
    cfg.write_text("# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="larger than 1024 KiB"):
        Config.load(cfg)


def test_a_dangling_symlink_or_a_missing_explicit_config_is_an_error(root, tmp_path):
    cfg = root.path / "etc/nvkmd/nvkmd.toml"
    cfg.symlink_to(tmp_path / "gone.toml")
    proc = run_nvkmd("--once", "--root", str(root.path), timeout=60)
    assert proc.returncode == 78 and "which does not exist" in proc.stderr
    cfg.unlink()
    missing = tmp_path / "nonexistent.toml"
    proc = run_nvkmd("--once", "--root", str(root.path), "--config", str(missing), timeout=60)
    assert proc.returncode == 78 and f"config {missing}: no such file" in proc.stderr
    # The default place, missing, still means the defaults.
    assert Config.load(cfg) == Config()


def test_sighup_reload_refuses_nan_and_a_fifo_and_keeps_working(root, nvkmd_daemon):
    old, new = need_kernels(2)[-2:]
    root.add_kernel(old)
    root.add_tiny_source()
    good = root.config_text
    d = nvkmd_daemon(root)
    d.wait_ready()
    first = d.wait_job(old, "succeeded", timeout=180)
    root.configure(good + "[daemon]\ndebounce_s = nan\n")
    d.signal(signal.SIGHUP)
    d.wait_log(r"configuration reload refused.*debounce_s: expected a finite number, got nan")
    cfg = root.path / "etc/nvkmd/nvkmd.toml"
    cfg.unlink()
    os.mkfifo(cfg)
    # A writer that would hold a blocking reader for ever, were there one.
    opened = threading.Event()

    def writer():
        try:
            fd = os.open(cfg, os.O_WRONLY)
        except OSError:
            return
        opened.set()
        time.sleep(30)
        os.close(fd)
    threading.Thread(target=writer, daemon=True).start()
    d.signal(signal.SIGHUP)
    d.wait_log(r"configuration reload refused.*not a regular file", timeout=20)
    # The old configuration is kept and the loop is free: a new kernel is built.
    root.add_kernel(new)
    d.wait_job(new, "succeeded", timeout=180, after=first["id"])
    assert d.alive()
    os.close(os.open(cfg, os.O_RDONLY | os.O_NONBLOCK))     # frees a writer still waiting
