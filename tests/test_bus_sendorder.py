"""What the daemon's connection sends arrives in the order it was sent,
also when the socket is full and dbus-fast queues (1.84 sent its queue last
in, first out: under a flood the oldest reply waited for the flood to end).

Real dbus-daemon, real dbus-fast connections: the sender queues 2000 signals
of 8 kB in one go, far more than a socket buffer holds; the receiver must
see their numbers in order.
"""

from __future__ import annotations

import asyncio

from dbus_fast import Message

from harness.waiting import until
from nvkmd.bus.sendorder import in_order
from nvkmd.dbusconn import open_bus

N = 2000


def test_a_queue_of_signals_arrives_in_the_order_sent(bus):
    async def main():
        sender = await open_bus(bus.address)
        receiver = await open_bus(bus.address)
        in_order(sender)
        got: list[int] = []

        def handler(msg):
            if msg.member == "Seq":
                got.append(msg.body[0])
        receiver.add_message_handler(handler)
        await receiver.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                    interface="org.freedesktop.DBus", member="AddMatch",
                                    signature="s", body=["type='signal',member='Seq'"]))
        pad = "x" * 8192
        try:
            for i in range(N):              # no await: the socket fills, dbus-fast queues
                sender.send(Message.new_signal("/t", "t.T", "Seq", "us", [i, pad]))
            assert len(sender._writer.messages) > 10, "the socket never filled: nothing queued"
            await until(lambda: len(got) == N, 60, f"{N} signals ({len(got)} so far)")
            assert got == sorted(got), [i for i, (a, b) in enumerate(zip(got, got[1:])) if a > b][:5]
        finally:
            sender.disconnect()
            receiver.disconnect()

    asyncio.run(main())
