"""What the daemon accepts as a D-Bus Preflight target, before it looks at
anything: the fuzzed names of test_bus_fuzz once reached newfstatat() as
paths relative to the daemon's working directory."""

from __future__ import annotations

import pytest

from nvkmd.daemon.preflights import preflight_target
from nvkmd.errors import ErrorCode, NvkmdError


@pytest.mark.parametrize("target", ["", "/srv/linux-headers-6.1.0-57-amd64_6.1.192-1_amd64.deb",
                                    "linux-headers-6.1.0-57-amd64", "linux-image-amd64",
                                    "linux-headers-6.1.0-57-amd64=6.1.192-1", "6.1.0-57-amd64"])
def test_a_preflight_target_is_empty_absolute_or_a_package(target):
    assert preflight_target(target) == target


@pytest.mark.parametrize("target", ["EVIL/x", "./x.deb", "headers/", "a b", "Linux-Headers",
                                    "..", "-rf", "x" * 5000, "a\0b", 7, None])
def test_a_preflight_target_naming_no_package_and_no_absolute_path_is_refused(target):
    with pytest.raises(NvkmdError) as e:
        preflight_target(target)
    assert e.value.code is ErrorCode.INVALID_ARGUMENT
