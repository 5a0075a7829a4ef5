"""Messages leave the daemon in the order it sent them.

dbus-fast 1.84 (Debian 12's python3-dbus-fast) queues what the socket
cannot take yet with ``append`` and takes the next with ``pop``: last in,
first out.  Under load, when replies wait for the bus to read, the oldest
reply waits until the queue is empty, which in a flood is never, while
every newer caller is answered; and signals arrive out of order (a job's
progress after its end).  Newer dbus-fast takes with ``popleft``; with the
queue's ``pop`` taking from the left as well, both send first in, first out.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class _Fifo(deque):
    pop = deque.popleft


def in_order(bus: Any) -> None:
    """Make a connected dbus-fast ``MessageBus`` send in order."""
    writer = getattr(bus, "_writer", None)
    queue = getattr(writer, "messages", None)
    if isinstance(queue, deque) and not isinstance(queue, _Fifo):
        writer.messages = _Fifo(queue)
