"""What keeps the daemon small (issue 16, P4): it never loads ssl, OpenSSL's
libcrypto or GLib (9 MiB of a 40 MiB idle daemon, for nothing it uses),
and it reads a kernel module's headers and .modinfo, never the whole file
(nvidia.ko is tens of megabytes, read on every rescan).  The structure is
tested, not the megabytes: those are bench/run's P4."""

from __future__ import annotations

import lzma
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from helpers import REPO

# Shared objects whose presence in the daemon's maps means ssl, hashlib's
# OpenSSL backend or gi got loaded after all.
UNWANTED_LIBS = ("libssl.so", "libcrypto.so", "libgirepository", "libglib-2.0", "libgobject-2.0")
# Loaded by the work that needs them, not by the daemon at rest: tarfile
# (a source tarball is unpacked in a child, a headers package is checked
# only by a preflight).
LOADED_FOR_WORK = ("tarfile",)
SERVICE_MODULES = ("nvkmd.daemon.service", "nvkmd.daemon.core", "nvkmd.bus", "nvkmd.watch.watcher",
                   "nvkmd.inspect.secureboot", "nvkmd.build.cache", "nvkmd.system.source")


def _maps(pid: int) -> set[str]:
    return {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if "/" in line}


def test_the_serving_daemon_maps_no_openssl_or_glib(root, bus, bus_daemon):
    """The real daemon on a bus, after a real build of the tiny tree: the
    build's product digests (a child's job) and the bus did not bring them in."""
    k = root.add_kernel("6.1.0-47-amd64")
    root.add_tiny_source()
    d = bus_daemon(root, bus, env={"NVKMD_RUNNING_KERNEL": k.name})
    d.wait_kernel(k.name, "ready", timeout=300)
    assert list(root.path.glob("var/lib/nvkmd/product-digests/*/*.json")), \
        "no product digests were recorded: the build did not go through the cache"
    libs = sorted(p for p in _maps(d.proc.pid) if any(u in Path(p).name for u in UNWANTED_LIBS))
    assert not libs, f"the daemon mapped {libs}"


def test_the_service_modules_load_without_ssl_openssl_gi_or_tarfile():
    """Everything the daemon loads, behind the same refusal as its main():
    they import, SHA-256 still works (Python's builtin), none of the
    refused modules came in some other way, nor tarfile."""
    probe = (f"import sys\nLOADED_FOR_WORK = {LOADED_FOR_WORK!r}\n"
             "from nvkmd.daemon.footprint import NOT_IN_THE_DAEMON, refuse_unused_modules\n"
             "refuse_unused_modules()\n"
             f"for m in {SERVICE_MODULES!r}: __import__(m)\n"
             "import asyncio, hashlib\n"
             "assert hashlib.sha256(b'abc').hexdigest().startswith('ba7816bf'), 'sha256'\n"
             "print(' '.join(m for m in (*NOT_IN_THE_DAEMON, *LOADED_FOR_WORK) "
             "if sys.modules.get(m) is not None))\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"loaded anyway: {r.stdout.strip()}"
    assert "not found" not in r.stderr, r.stderr        # hashlib's "code for hash ... not found"


# -- modinfo reads a module's headers, not the module ----------------------------------

MODULE_C = """
static const char modinfo[] __attribute__((section(".modinfo"), used)) =
    "version=535.0.1\\0license=Dual MIT/GPL\\0vermagic=6.1.0-47-amd64 SMP mod_unload\\0";
int nvkmd_footprint_probe(void) { return 0; }
"""
SIGNATURE_TAIL = b"~Module signature appended~\n"


@pytest.fixture(scope="module")
def big_module(tmp_path_factory) -> Path:
    """A real ELF object (gcc) with a .modinfo section, 64 MiB of payload
    after it and a module signature's trailer: shaped like a signed
    nvidia.ko, as big as one."""
    d = tmp_path_factory.mktemp("module")
    (d / "m.c").write_text(MODULE_C)
    r = subprocess.run(["gcc", "-c", "-o", str(d / "m.o"), str(d / "m.c")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    ko = d / "nvidia.ko"
    with open(ko, "wb") as out:
        out.write((d / "m.o").read_bytes())
        out.truncate(out.tell() + (64 << 20))
        out.seek(0, 2)
        out.write(SIGNATURE_TAIL)
    return ko


def _traced_peak(fn):
    tracemalloc.start()
    try:
        value = fn()
        return value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_modinfo_of_a_big_module_reads_only_its_headers(big_module):
    from nvkmd.system.modinfo import modinfo
    info, peak = _traced_peak(lambda: modinfo(big_module))
    assert info["version"] == "535.0.1" and info["vermagic"].startswith("6.1.0-47-amd64 ")
    assert info.get("sig") == "yes"
    assert peak < 1 << 20, f"modinfo held {peak >> 20} MiB of a {big_module.stat().st_size >> 20} MiB module"


def test_modinfo_of_a_big_compressed_module_streams(big_module, tmp_path):
    from nvkmd.system.modinfo import modinfo
    xz = tmp_path / "nvidia.ko.xz"
    with open(big_module, "rb") as src, lzma.open(xz, "wb", preset=0) as dst:
        while block := src.read(1 << 20):
            dst.write(block)
    info, peak = _traced_peak(lambda: modinfo(xz))
    assert info["version"] == "535.0.1" and info.get("sig") == "yes"
    assert peak < 8 << 20, f"modinfo held {peak >> 20} MiB decompressing a 64 MiB module"
