"""Fuzzed arguments get InvalidArgument, never crash the daemon, and never
reach the filesystem outside nvkmd's directories.

The daemon runs under strace, recording every path-taking system call with
full strings.  Malformed kernel names carry the marker EVIL and must never
appear in a path at all; well-formed names of kernels that do not exist
carry OKFUZZ and may only be looked up inside the modules and log
directories."""

from __future__ import annotations

import asyncio
import random
import re
import shutil

import pytest
from dbus_fast import Message, MessageType, Variant

from dbus_helpers import BusDaemon, PrivateBus, run
from helpers import TestRoot as Root
from helpers import need_kernels, wait_for
from nvkmd import api
from nvkmd.errors import ErrorCode, NvkmdError

INVALID = api.error_name(ErrorCode.INVALID_ARGUMENT)
OURS = {api.error_name(c) for c in ErrorCode} - {api.error_name(ErrorCode.INTERNAL)}

BAD_NAMES = ["../EVIL", "../../../../etc/EVIL", "EVIL/..", "a/EVIL", "/EVIL", "EVIL/../..",
             "EVIL" * 1024, ".EVIL", "-EVIL", "EVIL\n", "EVIL x", "EVIL\t", "EVIL*", "EVIL$(id)",
             "EVIL\u202e", "ÉVIL", "EVIL..", "EVIL;rm", "~EVIL"]
GOOD_UNKNOWN = ["OKFUZZ", "6.1.0-OKFUZZ-amd64", "OKFUZZ." * 18 + "x"]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    if not shutil.which("strace"):
        pytest.fail("strace is needed (scripts/setup installs it)")
    k = need_kernels(1)[-1]
    base = tmp_path_factory.mktemp("fuzz")
    root = Root(base / "root")
    root.add_tiny_source()
    root.add_kernel(k, headers=False)       # a kernel, but nothing to build
    trace = base / "strace.log"
    bus = PrivateBus()
    d = BusDaemon(root, base / "nvkmd.log", bus, env={"NVKMD_RUNNING_KERNEL": k},
                  wrapper=("strace", "-f", "-qq", "-s", "8192", "-e", "trace=%file", "-o", str(trace)))
    d.start()
    try:
        d.wait_on_bus(120)
        yield bus.address, d, root, trace
        assert d.alive()
        assert d.stop(60) == 0
    finally:
        try:
            if d.alive():
                d.kill9()
        finally:
            bus.stop()
            print(d.log_text()[-20000:])


async def send(c, member: str, signature: str, body: list, interface: str = api.INTERFACE) -> Message:
    return await c.conn.raw.call(Message(destination=api.BUS_NAME, path=api.OBJECT_PATH,
                                         interface=interface, member=member, signature=signature,
                                         body=body))


def error_of(reply: Message) -> str:
    return reply.error_name if reply.message_type is MessageType.ERROR else "ok"


def test_malformed_kernel_names_are_invalid_arguments(fuzzed):
    address, d, root, trace = fuzzed

    async def go(c):
        out = []
        for name in BAD_NAMES:
            out.append((name, "Build", error_of(await send(c, "Build", "sb", [name, False]))))
            out.append((name, "GetLog", error_of(await send(c, "GetLog", "tsu", [0, name, 10]))))
        return out
    for name, member, err in run(address, go):
        assert err == INVALID, (member, name, err)


def test_a_nul_is_refused_before_it_is_sent_and_by_the_bus(fuzzed):
    address, d, root, trace = fuzzed
    # The client refuses it as InvalidArgument without sending anything.
    with pytest.raises(NvkmdError) as e:
        run(address, lambda c: c.build("EVIL\x00x", False))
    assert e.value.code is ErrorCode.INVALID_ARGUMENT

    # A hand-made message with a NUL inside a string never reaches the
    # daemon: the bus drops the connection that sent it.
    async def smuggle(c):
        msg = Message(destination=api.BUS_NAME, path=api.OBJECT_PATH, interface=api.INTERFACE,
                      member="Build", signature="sb", body=["EVILXNUL", False], serial=4242)
        data = bytes(msg._marshall(False)).replace(b"EVILXNUL", b"EVIL\x00NUL")
        c.conn.raw._sock.sendall(data)
        try:
            await asyncio.wait_for(c.conn.raw.wait_for_disconnect(), 30)
        except (EOFError, OSError):      # how dbus-fast reports the bus hanging up
            pass
        return c.conn.raw.connected
    assert run(address, smuggle) is False
    assert run(address, lambda c: c.status()).version


WRONG_SIGNATURES = ["", "s", "b", "u", "t", "i", "x", "d", "ss", "sb", "tsu", "ub", "as", "a{sv}",
                    "v", "(su)", "tss", "bs", "us", "ts"]


def _value(code: str, rnd: random.Random):
    return {"s": "EVIL", "b": True, "u": 7, "t": 7, "i": -7, "x": -7, "d": 1.5, "as": ["EVIL"],
            "a{sv}": {"EVIL": Variant("s", "EVIL")}, "v": Variant("s", "EVIL"),
            "(su)": ["EVIL", 1]}[code]


def _split(sig: str) -> list[str]:
    from dbus_fast import SignatureTree
    return [t.signature for t in SignatureTree(sig).types]


def test_wrong_types_are_invalid_arguments(fuzzed):
    address, d, root, trace = fuzzed
    rnd = random.Random(4)

    async def go(c):
        out = []
        for m in api.METHODS.values():
            for sig in WRONG_SIGNATURES:
                if sig == m.in_signature:
                    continue
                body = [_value(t, rnd) for t in _split(sig)]
                out.append((m.name, sig, error_of(await send(c, m.name, sig, body))))
        return out
    results = run(address, go)
    assert len(results) > 100
    for member, sig, err in results:
        assert err == INVALID, (member, sig, err)


def test_out_of_range_numbers_are_invalid_arguments(fuzzed):
    address, d, root, trace = fuzzed
    cases = [("GetLog", "tsu", [0, "", 2**32 - 1]), ("GetLog", "tsu", [0, "", api.MAX_LOG_LINES + 1]),
             ("GetLog", "tsu", [2**64 - 1, "", 10]), ("ListJobs", "u", [2**32 - 1]),
             ("ListJobs", "u", [api.MAX_FINISHED_JOBS + 1]), ("Cleanup", "ub", [2**32 - 1, False]),
             ("Cleanup", "ub", [api.MAX_KEEP + 1, True]), ("Cancel", "t", [0]),
             ("Cancel", "t", [2**64 - 1])]

    async def go(c):
        return [(m, body, error_of(await send(c, m, sig, body))) for m, sig, body in cases]
    for member, body, err in run(address, go):
        assert err == INVALID, (member, body, err)


def test_well_formed_unknown_kernels_are_no_such_kernel(fuzzed):
    address, d, root, trace = fuzzed

    async def go(c):
        out = []
        for name in GOOD_UNKNOWN:
            out.append(error_of(await send(c, "Build", "sb", [name, True])))
            out.append(error_of(await send(c, "GetLog", "tsu", [0, name, 5])))
        return out
    assert set(run(address, go)) == {api.error_name(ErrorCode.NO_SUCH_KERNEL)}


def test_random_calls_never_crash_the_daemon(fuzzed):
    address, d, root, trace = fuzzed
    rnd = random.Random(20240611)
    alphabet = "EVIL./-_+~aZ09 \\\n\t\u00e9\u202e*$%" + "\U0001f600"

    def rand_string() -> str:
        # Malformed (EVIL, with a "/") or plausible (OKFUZZ, maybe malformed
        # too): only the plausible ones may reach the filesystem, inside
        # nvkmd's directories.
        n = rnd.choice([0, 1, 2, 5, 40, 129, 300, 4096])
        tail = "".join(rnd.choice(alphabet) for _ in range(n))
        return rnd.choice(["EVIL/", "OKFUZZ"]) + tail

    def rand_value(code: str):
        if code == "s":
            return rand_string()
        if code == "b":
            return rnd.random() < 0.5
        if code in ("u", "t"):
            top = 2**32 - 1 if code == "u" else 2**64 - 1
            return rnd.choice([0, 1, 2, 50, 999, 1000, 1001, 10**5, 10**5 + 1, 10**9, top])
        return _value(code, rnd)

    async def go(c):
        out = []
        members = list(api.METHODS.values())
        for _ in range(400):
            m = rnd.choice(members)
            sig = m.in_signature if rnd.random() < 0.7 else rnd.choice(WRONG_SIGNATURES)
            body = [rand_value(t) for t in _split(sig)]
            if m.name == "Build" and sig == "sb":
                body[0] = body[0] if rnd.random() < 0.9 else ""   # mostly names, sometimes "all"
            reply = await send(c, m.name, sig, body)
            out.append((m.name, sig, error_of(reply)))
        return out
    results = run(address, go, timeout=300)
    for member, sig, err in results:
        assert err == "ok" or err in OURS, (member, sig, err)
    assert sum(err == INVALID for _, _, err in results) > 100
    assert d.alive() and run(address, lambda c: c.status()).version


def test_no_fuzzed_name_reached_a_path_outside_nvkmds_directories(fuzzed):
    """Last in this module: it reads the trace of all the calls above."""
    address, d, root, trace = fuzzed
    assert run(address, lambda c: c.status()).version        # the daemon still answers
    text = trace.read_text(errors="replace")
    assert "openat(" in text, "strace recorded nothing"
    evil = [line for line in text.splitlines() if "EVIL" in line]
    assert evil == [], evil[:5]
    allowed = (str(root.modules), str(root.path / "var" / "log" / "nvkmd"))
    for line in text.splitlines():
        if "OKFUZZ" in line:
            paths = re.findall(r'"([^"]*OKFUZZ[^"]*)"', line)
            assert paths and all(p.startswith(allowed) for p in paths), line
