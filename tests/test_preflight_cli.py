"""`nvkmctl preflight` against the real daemon on a private bus: its JSON
shape and its exit statuses (0 ready, 1 will break, 2 usage, 3 unreachable,
4 denied, 6 could not tell)."""

from __future__ import annotations

import json

from dbus_helpers import as_nobody
from helpers import need_kernels
from test_preflight import OLD, tiny_root
from test_preflight_daemon import READ_ONLY, nvkmctl

RESULT_KEYS = {"kernel", "verdict", "message", "driver_version", "package", "package_version",
               "manager", "kind", "cause", "hint", "first_error", "log", "hold", "held",
               "checked_at", "elapsed_s"}


def test_exit_statuses_and_json(root, bus, bus_factory, bus_daemon):
    need_kernels(2)
    tiny_root(root, variant=True)
    bus_daemon(root, bus, wrapper=READ_ONLY)
    a = bus.address

    # An unpacked headers directory: 6.1.0-47 has the interface the variant uses.
    p = nvkmctl(a, "preflight", f"/usr/src/linux-headers-{OLD}", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert set(out) == {"target", "results"} and out["target"] == f"/usr/src/linux-headers-{OLD}"
    (r,) = out["results"]
    assert set(r) == RESULT_KEYS
    assert r["verdict"] == "ready" and r["kernel"] == OLD and r["manager"] == "directory"
    assert r["message"] == f"ready: {OLD} builds with NVIDIA 9.9.1"

    # 6.1.0-56's tree changed it: will break, in text.
    p = nvkmctl(a, "preflight", "/usr/src/linux-headers-6.1.0-56-amd64")
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stdout.startswith("will break: the driver source does not support this kernel's API: "
                               "the arguments of pci_resize_resource() changed\n")
    assert "  first error: " in p.stdout and "  log: " in p.stdout

    # No candidates on a test root without apt: nothing to check, 0.
    p = nvkmctl(a, "preflight")
    assert (p.returncode, p.stdout) == (0, "no kernel to check: the next upgrade installs none\n")

    # A target that names nothing: usage, with the reason.
    p = nvkmctl(a, "preflight", "/nonexistent/linux-headers.deb")
    assert p.returncode == 2 and "no such file or directory" in p.stdout, p.stdout + p.stderr

    # Not root, no polkit: denied.
    p = as_nobody(["-m", "nvkmd.cli", "--bus", a, "preflight", "6.1.0-57-amd64"])
    assert p.returncode == 4, p.stdout + p.stderr

    # No daemon on the bus: unreachable.
    empty = bus_factory()
    p = nvkmctl(empty.address, "preflight")
    assert p.returncode == 3, p.stdout + p.stderr
