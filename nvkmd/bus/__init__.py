"""nvkmd on D-Bus: the only daemon-side package that imports dbus-fast.

``serve(core, bus)`` puts the core on the bus and returns only by raising
when the connection is lost: without the bus nobody can see or steer the
daemon, so it exits and systemd restarts it.
"""

from __future__ import annotations

from typing import Callable

import structlog
from dbus_fast import NameFlag, RequestNameReply
from dbus_fast.errors import DBusError

from nvkmd import api
from nvkmd.bus.logind import ShutdownInhibitor
from nvkmd.bus.sendorder import in_order
from nvkmd.bus.service import ManagerService
from nvkmd.bus.statuscache import front
from nvkmd.dbusconn import open_bus
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.model import CoreAPI

log = structlog.get_logger("nvkmd.bus")

__all__ = ["serve", "ShutdownInhibitor"]


# One way to connect, shared with the clients.
connect = open_bus


async def serve(core: CoreAPI, bus: str, on_serving: Callable[[], None] = lambda: None) -> None:
    """Serve ``core`` as io.github.nvkmd until the bus connection is lost,
    then raise ``NvkmdError(UNREACHABLE)``.  Cancel the task to stop.
    ``on_serving`` is called once the name is owned (the daemon tells
    systemd it is ready only then, so a client started after READY=1 finds it)."""
    conn = await connect(bus)
    in_order(conn)
    service = ManagerService(core, conn)
    # Answer and publish before owning the name, so no early caller is lost.
    conn.add_message_handler(front(service))
    core.subscribe(service.on_event)
    try:
        try:
            reply = await conn.request_name(api.BUS_NAME, NameFlag.DO_NOT_QUEUE)
        except DBusError as e:
            code = api.error_code(e.type)
            raise NvkmdError(code if code is ErrorCode.ACCESS_DENIED else ErrorCode.UNREACHABLE,
                             f"cannot own {api.BUS_NAME} on {api.describe_bus(bus)}: {e.text} "
                             "(the busconfig in dbus/ lets only root own it)") from None
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise NvkmdError(ErrorCode.BUSY, f"{api.BUS_NAME} is already owned on "
                             f"{api.describe_bus(bus)}: another nvkmd is running")
        log.info("serving", name=api.BUS_NAME, path=api.OBJECT_PATH, bus=bus,
                 unique_name=conn.unique_name)
        on_serving()
        why = "the bus closed the connection"
        try:
            await conn.wait_for_disconnect()
        except Exception as e:
            why = str(e) or type(e).__name__
        raise NvkmdError(ErrorCode.UNREACHABLE, f"lost the connection to {api.describe_bus(bus)}: {why}")
    finally:
        service.close()
        conn.disconnect()
