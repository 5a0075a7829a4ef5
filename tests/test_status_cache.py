"""GetStatus is answered from the reply kept for the current state version
(issue 16, P8): many calls with nothing changed compute the status once;
any event of the core, or a privileged method's answer, makes the next
call compute it anew, and what it shows is the new state.

In-process: the real Core on a test root with the tiny source and real
headers, the real bus adapter (ManagerService) on a private dbus-daemon,
and real GetStatus calls from a second connection.  Counting is the
adapter's own counter (StatusCache.computed); nothing is timed.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from dbus_fast import Message, MessageType

from helpers import need_kernels
from nvkmd import api
from nvkmd.bus.service import ManagerService
from nvkmd.bus.statuscache import StatusCache, front
from nvkmd.config import Config
from nvkmd.daemon.core import Core
from nvkmd.dbusconn import open_bus
from nvkmd.paths import Paths


def state_of(status, job_id: int) -> str:
    return next((j["state"].value for j in status["jobs"].value if j["id"].value == job_id), "")


def test_unchanged_state_is_computed_once_and_any_change_computes_anew(root, bus):
    k = need_kernels(1)[-1]
    root.add_tiny_source()
    root.add_kernel(k)

    async def main():
        paths = Paths.build(root.path)
        config = Config.load(paths.config_file)
        core = Core(Paths.build(root.path, config=config), config)
        await core.start()                 # scans; the builder is not started
        server = await open_bus(bus.address)
        client = await open_bus(bus.address)
        service = ManagerService(core, server)
        server.add_message_handler(service.handle)
        core.subscribe(service.on_event)
        await server.request_name(api.BUS_NAME)      # the busconfig lets callers reach only it

        async def get_status():
            reply = await client.call(Message(destination=api.BUS_NAME, path=api.OBJECT_PATH,
                                              interface=api.INTERFACE, member="GetStatus"))
            assert reply.message_type is MessageType.METHOD_RETURN, reply.body
            return reply.body[0]

        try:
            cache = service.status_cache
            first = await get_status()
            base = cache.computed
            bodies = await asyncio.gather(*(get_status() for _ in range(100)))
            assert cache.computed == base, "GetStatus recomputed the status with nothing changed"
            assert all(b == first for b in bodies)

            # A core event (the queued job cancelled: JobFinished): the next
            # call computes, and shows it.
            (queued,) = [j for j in core.jobs(0) if j.state == "queued"]
            core.cancel(queued.id)
            after = await get_status()
            assert cache.computed == base + 1
            assert state_of(after, queued.id) == "cancelled" != state_of(first, queued.id)
            await asyncio.gather(*(get_status() for _ in range(50)))
            assert cache.computed == base + 1

            # A privileged method over the bus (Build, as root): computed anew.
            reply = await client.call(Message(destination=api.BUS_NAME, path=api.OBJECT_PATH,
                                              interface=api.INTERFACE, member="Build",
                                              signature="sb", body=[k, True]))
            assert reply.message_type is MessageType.METHOD_RETURN, reply.body
            (new_id,) = reply.body[0]
            after = await get_status()
            assert cache.computed == base + 2
            assert state_of(after, new_id) == "queued"
        finally:
            service.close()
            client.disconnect()
            server.disconnect()
            await core.stop()

    asyncio.run(main())


def test_privileged_answers_and_age_invalidate():
    now = [0.0]
    computed = []
    cache = StatusCache(lambda: computed.append(1) or [len(computed)], max_age_s=1.0,
                        clock=lambda: now[0])
    assert cache.get() == [1] and cache.get() == [1]
    cache.answered("")                      # GetStatus, ListJobs...: nothing changed
    assert cache.get() == [1]
    cache.answered("io.github.nvkmd.build")
    assert cache.get() == [2]
    now[0] = 0.99
    assert cache.get() == [2]
    now[0] = 1.5                            # a field no event announces is at most this old
    assert cache.get() == [3]
    assert cache.computed == 3


def test_kept_body_is_made_safe_once_and_sent_without_another_walk():
    """dbus-fast 1.84 miscounts non-ASCII strings, so the writer escapes
    every body it sends (dbusconn); a kept body is escaped when kept, and
    the writer recognises it and sends it as it is."""
    from nvkmd import dbusconn
    cache = StatusCache(lambda: [{"error": "kernel \u00e9"}])
    body = cache.get()
    assert type(body) is list                       # dbus-fast's marshaller takes only lists
    expected = "kernel \\xe9" if dbusconn.MARSHALS_CHARACTERS else "kernel \u00e9"
    assert body == [{"error": expected}]
    msg = Message(path="/", interface="a.b", member="c", signature="a{ss}", body=body)
    assert dbusconn._marshallable(msg) is msg
    other = Message(path="/", interface="a.b", member="c", signature="s", body=["\u00e9"])
    assert (dbusconn._marshallable(other) is other) is not dbusconn.MARSHALS_CHARACTERS


def test_cached_reply_is_the_bytes_dbus_fast_would_send():
    """The kept body behind a header written per call (replywire) is,
    byte for byte, the reply dbus-fast itself marshals, for senders of
    every length the header's padding depends on."""
    from dbus_fast import Variant

    from nvkmd.bus.replywire import CachedReply, body_bytes
    from nvkmd.dbusconn import marshallable
    body = marshallable([{"kernels": Variant("aa{sv}", [{"release": Variant("s", "6.1.0-\u00e9")}]),
                          "n": Variant("x", 3)}])
    data = body_bytes("a{sv}", body)
    for sender in (":1.1", ":1.12", ":1.123", ":1.1234", ":1.12345", ":1.123456", ":12.34567"):
        for serial in (1, 4096, 2 ** 32 - 1):
            call = Message(destination=api.BUS_NAME, path=api.OBJECT_PATH, interface=api.INTERFACE,
                           member="GetStatus", serial=serial)
            call.sender = sender
            ours, theirs = CachedReply(call, b"a{sv}", data), Message.new_method_return(call, "a{sv}", body)
            ours.serial = theirs.serial = 77
            assert ours._marshall(False) == bytes(theirs._marshall(False)), (sender, serial)


# Debian's system.conf lets root monitor the system bus (dbus-monitor).
ROOT_MAY_MONITOR = """<busconfig><policy user="root">
  <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
</policy></busconfig>
"""


def test_get_status_sends_the_kept_bytes_and_asks_the_bus_nothing(root, tmp_path, bus_factory):
    """Per call: no marshalling (the kept bytes, the same object each time),
    no message of the daemon's own but the reply (no credentials lookup, no
    polkit): counted by a real dbus-monitor on the bus."""
    import subprocess
    import threading

    from harness.waiting import until
    k = need_kernels(1)[-1]
    root.add_tiny_source()
    root.add_kernel(k)
    (tmp_path / "monitor.conf").write_text(ROOT_MAY_MONITOR)
    bus = bus_factory(includes=(tmp_path / "monitor.conf",))
    n = 100                  # under the bus's 128 pending replies per connection

    async def main():
        paths = Paths.build(root.path)
        config = Config.load(paths.config_file)
        core = Core(Paths.build(root.path, config=config), config)
        await core.start()
        server = await open_bus(bus.address)
        client = await open_bus(bus.address)
        service = ManagerService(core, server)
        server.add_message_handler(front(service))   # as bus.serve does
        await server.request_name(api.BUS_NAME)
        call = lambda: client.call(Message(destination=api.BUS_NAME, path=api.OBJECT_PATH,
                                           interface=api.INTERFACE, member="GetStatus"))
        monitor = subprocess.Popen(["dbus-monitor", "--address", bus.address],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(monitor.stdout), daemon=True)
        reader.start()
        seen = lambda text: lambda: any(text in ln for ln in lines)
        try:
            first = await call()
            cache = service.status_cache
            kept, marshalled = cache.wire(), cache.marshalled
            # Attached once it has lost its own name to BecomeMonitor.
            await until(seen("member=NameLost"), 30, "dbus-monitor to attach: " + "".join(lines))
            start = len(lines)
            replies = await asyncio.gather(*(call() for _ in range(n)))
            # A marker from the daemon's connection ends what the monitor must show.
            await server.send(Message.new_signal("/t", "t.T", "End"))
            await until(seen("member=End"), 30, "the monitor to show the marker")
            bad = [r for r in replies if r.message_type is not MessageType.METHOD_RETURN
                   or r.body != first.body]
            assert not bad, (bad[0].message_type, bad[0].body)
            assert cache.wire() is kept and cache.marshalled == marshalled
            me = f" sender={server.unique_name} "
            sent = [ln for ln in lines[start:] if ln.startswith(("method", "signal", "error"))
                    and me in ln]
            kinds = Counter(ln.split(" time=")[0] for ln in sent)
            assert kinds == Counter({"method return": n, "signal": 1}), kinds
        finally:
            monitor.terminate()
            monitor.wait(timeout=10)
            service.close()
            client.disconnect()
            server.disconnect()
            await core.stop()

    asyncio.run(main())
