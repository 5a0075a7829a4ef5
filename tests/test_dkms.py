"""The DKMS backend with Debian's real dkms, the tiny tree registered on the
real system (dkms has no --root) and the real header kernels."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest

from helpers import need_kernels
from nvkmd.system import dkms
from nvkmd.inspect import origin
from nvkmd.system import source as sources
from nvkmd.config import Config
from nvkmd.install.engine import Engine
from nvkmd.paths import Paths
from nvkmd.admin.sourceops import init
from realdkms import FAKE_KERNELS, SYSTEM_MODULES, RealDkms, make_repo


@pytest.fixture
def real_dkms():
    r = RealDkms()
    yield r
    r.restore()


def setup_source(tmp_path: Path, backend: str = "auto", register: bool = True):
    clone = make_repo(tmp_path / "open-gpu-kernel-modules", ("9.9.1",))
    config = Config(source_path=str(clone), build_backend=backend,
                    state_dir=str(tmp_path / "state"), logs_dir=str(tmp_path / "logs"))
    paths = Paths.build("/", tmp_path / "nvkmd.toml", config)
    result = init(paths, config, clone, register=register)
    return clone, config, paths, result


def build(paths, config, release, force=False):
    seen = []
    src = sources.discover(paths, config)
    outcome = asyncio.run(Engine(paths, config).build(release, src, force=force,
                                                       on_progress=seen.append))
    return outcome, seen


def dkms_status(release: str) -> str:
    return subprocess.run(["dkms", "status", "-m", "nvidia", "-k", release],
                          capture_output=True, text=True).stdout


def test_parse_status_both_formats():
    text = ("nvidia/9.9.1, 6.1.0-47-amd64, x86_64: installed\n"
            "nvidia-current-open/535.261.03, 6.1.0-56-amd64, x86_64: built (WARNING! Diff)\n"
            "nvidia/9.9.2: added\n"
            "nvidia, 9.9.0, 6.1.0-47-amd64, x86_64: installed-weak\n"
            "Error! garbage\n")
    got = dkms.parse_status(text)
    assert [(e.name, e.version, e.kernel, e.state) for e in got] == [
        ("nvidia", "9.9.1", "6.1.0-47-amd64", "installed"),
        ("nvidia-current-open", "535.261.03", "6.1.0-56-amd64", "built"),
        ("nvidia", "9.9.2", "", "added"),
        ("nvidia", "9.9.0", "6.1.0-47-amd64", "installed-weak")]
    assert got[1].note == "(WARNING! Diff)"


def test_build_and_install_through_dkms(real_dkms, tmp_path):
    k = need_kernels(1)[0]
    clone, config, paths, result = setup_source(tmp_path)
    assert result.registered == "nvidia/9.9.1"
    assert "nvidia/9.9.1: added" in subprocess.run(["dkms", "status"], capture_output=True,
                                                   text=True).stdout
    choice = dkms.choose("auto", paths, sources.discover(paths, config))
    assert choice.backend == "dkms" and choice.registration.spec == "nvidia/9.9.1"

    outcome, seen = build(paths, config, k)
    assert outcome.result == "success", outcome
    assert re.search(rf"nvidia/9\.9\.1, {re.escape(k)}, x86_64: installed", dkms_status(k))
    installed = sorted(p.name for p in (SYSTEM_MODULES / k / "updates" / "dkms").iterdir())
    assert installed == ["nvidia-modeset.ko", "nvidia.ko"]
    assert origin.of(paths, k) == "dkms"
    text = outcome.log.read_text()
    assert "# backend: dkms (nvidia/9.9.1)" in text
    assert f"$ dkms build -m nvidia -v 9.9.1 -k {k} --verbose" in text
    # make's output reaches nvkmd's log from DKMS's make.log, and drives progress
    assert "  CC [M] " in text and " CONFTEST: " in text
    assert any(p.phase == "compile" and 0 < p.percent < 100 for p in seen), seen
    assert seen[-1].phase == "done" and seen[-1].percent == 100

    again, _ = build(paths, config, k)
    assert again.result == "up-to-date"
    # the daemon's scan agrees: DKMS's module is this kernel's current module
    from nvkmd.detect.scan import scan
    ks = scan(paths, config).kernels[k]
    assert (ks.current, ks.origin, ks.module_version) == (True, "dkms", "9.9.1")


def test_kbuild_refuses_a_kernel_dkms_owns_and_dkms_takes_over_from_nvkmd(real_dkms, tmp_path):
    k47, k56 = need_kernels(2)[:2]
    clone, config, paths, _ = setup_source(tmp_path)
    kbuild = Config(**{**config.__dict__, "build_backend": "kbuild"})
    # nvkmd builds k56 itself ...
    ours, _ = build(paths, kbuild, k56)
    assert ours.result == "success", ours
    assert origin.of(paths, k56) == "nvkmd"
    # ... DKMS builds k47, and then nvkmd's Kbuild backend must not add a second module.
    assert build(paths, config, k47)[0].result == "success"
    refused, _ = build(paths, kbuild, k47, force=True)
    assert refused.result == "failed"
    assert refused.diagnosis.kind == "conflict"
    assert "nvidia/9.9.1" in refused.diagnosis.first_error
    assert not (SYSTEM_MODULES / k47 / "updates" / "nvkmd").exists()
    # With the DKMS backend, k56 moves from nvkmd's modules to DKMS's: never both.
    took, _ = build(paths, config, k56)
    assert took.result == "success", took
    assert not (SYSTEM_MODULES / k56 / "updates" / "nvkmd").exists()
    assert origin.of(paths, k56) == "dkms"
    assert "moved nvkmd's own modules aside" in took.log.read_text()
    dep = (SYSTEM_MODULES / k56 / "modules.dep").read_text()
    assert "updates/dkms/nvidia.ko" in dep and "updates/nvkmd" not in dep


def test_exit_statuses_map_to_causes(real_dkms, tmp_path):
    k = need_kernels(1)[0]
    clone, config, paths, _ = setup_source(tmp_path)
    conf = clone / "kernel-open" / "dkms.conf"

    # 77: BUILD_EXCLUSIVE_KERNEL does not match
    original = conf.read_text()
    conf.write_text(original + 'BUILD_EXCLUSIVE_KERNEL="^7\\."\n')
    excluded, _ = build(paths, config, k)
    assert excluded.result == "failed"
    assert "nvkmd: dkms build exited 77" in excluded.log.read_text()
    assert excluded.diagnosis.kind == "unsupported"
    assert "BUILD_EXCLUSIVE" in excluded.diagnosis.cause
    conf.write_text(original)

    # headers missing: dkms 3.0 says so and exits 1 (3.1 exits 21)
    fake = SYSTEM_MODULES / FAKE_KERNELS[0]
    fake.mkdir()
    nohdr, _ = build(paths, config, FAKE_KERNELS[0])
    assert nohdr.result == "failed"
    assert re.search(r"nvkmd: dkms build exited (1|21):", nohdr.log.read_text())
    assert nohdr.diagnosis.kind == "headers-missing"

    # 10: the make inside DKMS failed; the compiler's error is the first error
    (clone / "kernel-open" / "nvidia" / "nv.c").write_text("#error nvkmd-test-failure\n")
    broken, _ = build(paths, config, k)
    assert broken.result == "failed"
    assert "nvkmd: dkms build exited 10" in broken.log.read_text()
    assert broken.diagnosis.kind == "build-failed"
    assert "nvkmd-test-failure" in broken.diagnosis.first_error


def test_backend_dkms_without_registration_is_a_clear_failure(real_dkms, tmp_path):
    k = need_kernels(1)[0]
    clone, config, paths, result = setup_source(tmp_path, backend="dkms", register=False)
    assert result.registered == ""
    outcome, _ = build(paths, config, k)
    assert outcome.result == "failed"
    assert outcome.diagnosis.kind == "dkms-unusable"
    assert "not registered with DKMS" in outcome.diagnosis.first_error


def test_origins_nvkmd_dkms_and_none(real_dkms, tmp_path):
    k47, k56 = need_kernels(2)[:2]
    clone, config, paths, _ = setup_source(tmp_path)
    kbuild = Config(**{**config.__dict__, "build_backend": "kbuild"})
    assert build(paths, config, k47)[0].result == "success"
    assert build(paths, kbuild, k56)[0].result == "success"
    (SYSTEM_MODULES / FAKE_KERNELS[1]).mkdir()
    assert origin.of(paths, k47) == "dkms"
    assert origin.of(paths, k56) == "nvkmd"
    assert origin.of(paths, FAKE_KERNELS[1]) == "none"
    kind, files, owner = origin.details(paths, k47)
    assert owner == "nvidia/9.9.1" and {f.name for f in files} == {"nvidia.ko", "nvidia-modeset.ko"}


def test_source_update_moves_dkms_to_the_new_version(real_dkms, tmp_path):
    from nvkmd.admin.sourceops import update
    k = need_kernels(1)[0]
    clone = make_repo(tmp_path / "open-gpu-kernel-modules", ("9.9.1", "9.9.2"), checkout="9.9.1")
    config = Config(source_path=str(clone), state_dir=str(tmp_path / "state"),
                    logs_dir=str(tmp_path / "logs"))
    paths = Paths.build("/", tmp_path / "nvkmd.toml", config)
    assert init(paths, config, clone, register=True).registered == "nvidia/9.9.1"
    assert build(paths, config, k)[0].result == "success"
    results = []

    def queue(kernel, force):
        results.append(build(paths, config, k, force)[0])
        return [1]
    up = update(paths, config, queue=queue)
    assert up.changed and up.init.registered == "nvidia/9.9.2"
    assert [o.result for o in results] == ["success"], results
    assert re.search(rf"nvidia/9\.9\.2, {re.escape(k)}, x86_64: installed", dkms_status(k))
    # 9.9.1 was retired to a frozen copy and no kernel uses it any more: unregistered
    assert "9.9.1" not in subprocess.run(["dkms", "status"], capture_output=True, text=True).stdout
    assert "unregistered nvidia/9.9.1" in results[0].log.read_text()
    assert not Path("/usr/src/nvidia-9.9.1").exists()
    from nvkmd.inspect.versions import module_version
    assert module_version(paths, k) == "9.9.2"


def test_cleanup_removes_dkms_modules_of_removed_kernels_with_dkms_remove(real_dkms, tmp_path,
                                                                          monkeypatch):
    from nvkmd.install import cleanup
    k47, k56 = need_kernels(2)[:2]
    clone, config, paths, _ = setup_source(tmp_path)
    kbuild = Config(**{**config.__dict__, "build_backend": "kbuild"})
    assert build(paths, config, k47)[0].result == "success"
    assert build(paths, kbuild, k56)[0].result == "success"
    # Both have headers, so both count as installed: --keep 1 keeps the newer
    # one's (nvkmd's) modules and removes DKMS's from the older through dkms remove.
    monkeypatch.setenv("NVKMD_RUNNING_KERNEL", "0.0.0-not-installed")
    assert cleanup.cleanup(paths).to_remove == []
    dry = cleanup.cleanup(paths, keep=1)
    assert [(i.release, i.what) for i in dry.to_remove] == [(k47, "dkms nvidia/9.9.1")]
    assert f"  ✓ {k56} (newest 1): nvkmd" in dry.lines()
    assert dry.paths(paths) == [str(SYSTEM_MODULES / k47 / "updates/dkms/nvidia-modeset.ko"),
                                str(SYSTEM_MODULES / k47 / "updates/dkms/nvidia.ko")]
    assert "installed" in dkms_status(k47)
    done = cleanup.cleanup(paths, keep=1, execute=True)
    assert [i.done for i in done.to_remove] == ["removed"]
    assert "installed" not in dkms_status(k47)
    assert not (SYSTEM_MODULES / k47 / "updates" / "dkms").exists()
    assert (SYSTEM_MODULES / k47 / "build").is_symlink()          # headers untouched
    assert (SYSTEM_MODULES / k56 / "updates" / "nvkmd" / "nvidia.ko").is_file()


def test_cancelling_a_dkms_build_kills_dkms_and_make(real_dkms, tmp_path):
    k = need_kernels(1)[0]
    clone, config, paths, _ = setup_source(tmp_path)
    conftest = clone / "kernel-open" / "conftest.sh"
    # conftest runs inside the build: make it wait until it is killed
    conftest.write_text(conftest.read_text().replace("\n", "\nsleep 300\n", 1))
    src = sources.discover(paths, config)

    def dkms_processes() -> list[str]:
        out = subprocess.run(["pgrep", "-af", r"dkms build -m nvidia -v 9\.9\.1|"
                              r"/var/lib/dkms/nvidia/9\.9\.1/build/conftest\.sh"],
                             capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if "pgrep" not in line]

    async def go():
        seen = []
        task = asyncio.create_task(Engine(paths, config).build(k, src, on_progress=seen.append))
        deadline = asyncio.get_running_loop().time() + 60
        while not any("conftest.sh" in p for p in dkms_processes()):
            assert asyncio.get_running_loop().time() < deadline, "the DKMS build never started"
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(go())
    assert dkms_processes() == []
    log = max((tmp_path / "logs" / k).glob("build-*.log"))
    text = log.read_text()
    assert "nvkmd: build cancelled; every process of the build was killed" in text
    assert "# result: cancelled" in text
