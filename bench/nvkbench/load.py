"""D-Bus load generator, run as its own process (P8):

  python load.py ADDRESS rate CLIENTS SECONDS [nvkmd|bus]
      CLIENTS connections, each calling in a loop for SECONDS: nvkmd's
      GetStatus through nvkmd.clients.manager, or the bus's own GetId (the anchor).
  python load.py ADDRESS burst CALLS
      one connection, CALLS GetStatus calls in flight at once.
  python load.py ADDRESS latency SECONDS
      one connection, one GetStatus call at a time for SECONDS: each call's
      latency (P8 runs it beside a flood from another process, so one
      client's flood is seen not to starve another client).
  python load.py ADDRESS decode
      the CPU cost of dbus-fast reading one GetStatus reply and one GetId
      reply (unmarshalling their bytes, in microseconds): what every client,
      this one included, pays per call before the server is even asked.

Prints one JSON object: calls, errors (by name), elapsed seconds.  Talks to
the private bus at ADDRESS only; every loop is bounded in time or count.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nvkmd.clients import manager as client  # noqa: E402
from nvkmd.errors import NvkmdError  # noqa: E402


async def rate(address: str, n: int, seconds: float, target: str) -> dict:
    conns = [await client.connect(address) for _ in range(n)]
    calls = 0
    errors: collections.Counter = collections.Counter()
    start = asyncio.Event()

    async def one(c) -> None:
        nonlocal calls
        await start.wait()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                if target == "bus":
                    await c._bus_call("GetId")
                else:
                    await c.call("GetStatus")
                calls += 1
            except NvkmdError as e:
                errors[e.code.value] += 1
    tasks = [asyncio.create_task(one(c)) for c in conns]
    t0, cpu0 = time.monotonic(), time.process_time()
    start.set()
    await asyncio.gather(*tasks)
    elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    for c in conns:
        c.close()
    return {"calls": calls, "errors": dict(errors), "elapsed": elapsed, "clients": n, "cpu_s": cpu}


async def burst(address: str, n: int) -> dict:
    c = await client.connect(address)
    errors: collections.Counter = collections.Counter()

    async def one() -> bool:
        try:
            await c.call("GetStatus", timeout=300)
            return True
        except NvkmdError as e:
            errors[f"{e.code.value}: {str(e)[:80]}"] += 1
            return False
    t0 = time.monotonic()
    ok = sum(await asyncio.gather(*(one() for _ in range(n))))
    elapsed = time.monotonic() - t0
    c.close()
    return {"calls": ok, "errors": dict(errors), "elapsed": elapsed, "sent": n}


async def latency(address: str, seconds: float) -> dict:
    c = await client.connect(address)
    errors: collections.Counter = collections.Counter()
    times: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            await c.call("GetStatus", timeout=60)
            times.append(time.monotonic() - t0)
        except NvkmdError as e:
            errors[e.code.value] += 1
    c.close()
    times.sort()
    q = (lambda f: times[min(len(times) - 1, int(f * len(times)))] if times else 0.0)
    return {"calls": len(times), "errors": dict(errors), "elapsed": seconds,
            "median_s": q(0.5), "p95_s": q(0.95), "max_s": times[-1] if times else 0.0}


async def decode(address: str) -> dict:
    import io

    from dbus_fast import Message
    from dbus_fast._private.unmarshaller import Unmarshaller

    from nvkmd import api
    from nvkmd.dbusconn import open_bus
    bus = await open_bus(address)
    replies = {
        "getstatus": await bus.call(Message(destination=api.BUS_NAME, path=api.OBJECT_PATH,
                                            interface=api.INTERFACE, member="GetStatus")),
        "getid": await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                        interface="org.freedesktop.DBus", member="GetId"))}
    bus.disconnect()
    out: dict = {}
    for name, msg in replies.items():
        data = bytes(msg._marshall(False))
        n = 300 if len(data) > 4096 else 5000
        t0 = time.process_time()
        for _ in range(n):
            if Unmarshaller(io.BytesIO(data)).unmarshall() is None:
                raise RuntimeError(f"{name}: dbus-fast read no message from its own bytes")
        out[f"{name}_unmarshal_us"] = (time.process_time() - t0) / n * 1e6
        out[f"{name}_reply_bytes"] = len(data)
    return out


def main() -> None:
    address, mode = sys.argv[1], sys.argv[2]
    if mode == "rate":
        out = asyncio.run(rate(address, int(sys.argv[3]), float(sys.argv[4]),
                               sys.argv[5] if len(sys.argv) > 5 else "nvkmd"))
    elif mode == "decode":
        out = asyncio.run(decode(address))
    elif mode == "latency":
        out = asyncio.run(latency(address, float(sys.argv[3])))
    else:
        out = asyncio.run(burst(address, int(sys.argv[3])))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
