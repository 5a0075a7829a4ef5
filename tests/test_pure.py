"""Pure logic: diagnosis, progress, config checks, release ordering."""

from __future__ import annotations

import pytest

from nvkmd.config import Config, ConfigError
from nvkmd.build.diagnose import MARK_TIMEOUT, diagnose
from nvkmd.system.kernels import check_release, release_key, toolchain_for
from nvkmd.errors import NvkmdError
from nvkmd.build.progress import Counts, Progress, ProgressTracker, parse_counts

API_LINES = [
    ("nv-pci.c:223:9: error: too few arguments to function ‘pci_resize_resource’",
     "pci_resize_resource"),
    ("nv.c:1:2: error: too many arguments to function 'vm_flags_set'", "vm_flags_set"),
    ("nv-mm.c:5:3: error: implicit declaration of function ‘follow_pfn’", "follow_pfn"),
    ("drm.c:9:4: error: ‘struct drm_driver’ has no member named ‘dumb_destroy’", "drm_driver"),
    ("uvm.c:7:1: error: passing argument 2 of ‘mmu_notifier_register’ from incompatible "
     "pointer type [-Werror=incompatible-pointer-types]", "mmu_notifier_register"),
]


@pytest.mark.parametrize("line,function", API_LINES)
def test_kernel_api_change_names_the_function(line, function):
    d = diagnose(f"  CC [M]  x.o\n{line}\nmake[2]: *** [x.o] Error 1\n")
    assert d.kind == "kernel-api"
    assert function in d.cause
    assert d.first_error == line


@pytest.mark.parametrize("text,kind", [
    (f"{MARK_TIMEOUT} 3s (build.timeout_s)", "timeout"),
    ("cc1: fatal error: x.o: No space left on device", "disk-full"),
    ("gcc-12: fatal error: Killed signal terminated program cc1", "killed"),
    ("nvkmd: headers missing: /lib/modules/K/build does not lead", "headers-missing"),
    ("/bin/sh: 1: gcc-13: not found", "compiler-missing"),
    ("make[1]: clang: No such file or directory", "llvm-missing"),
    ("FATAL: modpost: GPL-incompatible module nvidia.ko uses GPL-only symbol 'x'", "gpl-only"),
    ('ERROR: modpost: "drm_foo" [nvidia-drm.ko] undefined!', "modpost-undefined"),
    ("*** Failed PREEMPT_RT sanity check. Bailing out! ***", "unsupported"),
    ("nvkmd: signing failed: sign-file exited 2", "signing-failed"),
    ("nvkmd: depmod failed: depmod exited 1", "depmod-failed"),
    ("x.c:1:1: error: expected ';' before '}' token", "unknown"),
])
def test_causes(text, kind):
    d = diagnose(f"header\n{text}\ntrailer\n")
    assert d.kind == kind, d
    assert d.cause and d.hint
    assert text.split(":")[0] in d.first_error or kind == "unknown"


def test_disk_full_wins_over_the_errors_it_causes():
    d = diagnose("x.c:1: error: implicit declaration of function 'foo'\n"
                 "as: x.o: No space left on device\n")
    assert d.kind == "disk-full"


def test_progress_counts_each_kind_against_count_lines():
    assert parse_counts("conftests:273 objects:187 modules:5") == Counts(273, 187, 5)
    t = ProgressTracker(Counts(2, 2, 1))
    seen = [t.feed(line) for line in (" CONFTEST: a", " CONFTEST: b", " CONFTEST: c",
                                      "  CC [M]  x.o", "noise", "  CC [M]  y.o", "  LD [M]  m.ko")]
    assert seen[0] == Progress("conftest", 20)
    assert seen[1] == Progress("conftest", 40)
    assert seen[2] is None                      # over its count: no change
    assert seen[3] == Progress("compile", 60)
    assert seen[4] is None
    assert seen[6] == Progress("link", 99)      # never 100 before the end


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match=r"^build\.jobs: expected an integer from 0 to 1024, got -1$"):
        Config.from_mapping({"build": {"jobs": -1}})
    with pytest.raises(ConfigError, match=r"^build\.colour: unknown key$"):
        Config.from_mapping({"build": {"colour": "red"}})
    with pytest.raises(ConfigError, match=r"^build\.backend: expected one of"):
        Config.from_mapping({"build": {"backend": "ninja"}})
    with pytest.raises(ConfigError, match="signing.key, signing.cert"):
        Config.from_mapping({"signing": {"key": "/k.pem"}})
    assert Config.from_mapping({"build": {"jobs": 3}}).build_jobs == 3


def test_release_order_and_validation():
    rs = ["6.1.0-9-amd64", "6.1.0-56-amd64", "6.10.0-1-amd64", "6.1.0-47-amd64"]
    assert sorted(rs, key=release_key, reverse=True) == [
        "6.10.0-1-amd64", "6.1.0-56-amd64", "6.1.0-47-amd64", "6.1.0-9-amd64"]
    for bad in ("../etc", "a/b", "x\0y", "", "k" * 4096, 7, None, ".."):
        with pytest.raises(NvkmdError):
            check_release(bad)


def test_toolchain_from_kernel_config():
    gcc = toolchain_for({"CONFIG_CC_VERSION_TEXT": "gcc-12 (Debian 12.2.0-14) 12.2.0",
                         "CONFIG_CC_IS_GCC": "y"})
    assert gcc.make_vars == (("CC", "gcc-12"),)
    clang = toolchain_for({"CONFIG_CC_IS_CLANG": "y", "CONFIG_LD_IS_LLD": "y",
                           "CONFIG_CC_VERSION_TEXT": "clang version 17"})
    assert dict(clang.make_vars) == {"CC": "clang", "LD": "ld.lld", "LLVM": "1"}
