"""The one client of nvkmd's D-Bus API, shared by nvkmctl, nvkmd-agent and
the boot ready-check.

Calls return the model's dataclasses; D-Bus errors come back as the
``NvkmdError`` the daemon raised (its error name maps back to the same
``ErrorCode``), and bus trouble becomes UNREACHABLE or ACCESS_DENIED with a
line a person can act on.  Signals arrive as the model's events.
"""

from __future__ import annotations

from typing import Any, Callable

from nvkmd import api
from nvkmd.clients.quick import CALL_TIMEOUT_S, FAILED_CALL, failure
from nvkmd.dbusconn import DBUS, Connection, name_owner, unwrap
from nvkmd.dbusconn import connect as connect_bus
from nvkmd.errors import ErrorCode, NvkmdError, invalid
from nvkmd.model import (
    DaemonStatus,
    Event,
    JobFinished,
    JobInfo,
    JobProgress,
    JobQueued,
    KernelStatus,
    NextBoot,
    NextBootChanged,
    StateChanged,
)

_U32, _U64 = 2**32 - 1, 2**64 - 1


def check_args(member: str, signature: str, args: tuple) -> None:
    """Refuse, as InvalidArgument, what D-Bus cannot carry (a NUL in a
    string, an out-of-range integer), instead of failing in the encoder."""
    if len(signature) != len(args):
        raise invalid(f"{member} takes {len(signature)} arguments, not {len(args)}")
    for sig, arg in zip(signature, args):
        ok = {"s": lambda a: isinstance(a, str) and "\x00" not in a,
              "b": lambda a: isinstance(a, bool),
              "u": lambda a: isinstance(a, int) and not isinstance(a, bool) and 0 <= a <= _U32,
              "t": lambda a: isinstance(a, int) and not isinstance(a, bool) and 0 <= a <= _U64,
              }.get(sig, lambda a: True)(arg)
        if not ok:
            raise invalid(f"{member}: not a valid argument of type {sig}: {repr(arg)[:80]}")


async def connect(bus: str = "system") -> "Client":
    return Client(await connect_bus(bus), bus)


class Client:
    def __init__(self, conn: Connection, bus: str):
        self.conn = conn
        self.bus = bus
        self._props: dict[str, Any] = {}

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.disconnect()

    # -- calls ----------------------------------------------------------------
    async def _raw(self, dest: str, path: str, iface: str, member: str, signature: str,
                   body: list, timeout: float = CALL_TIMEOUT_S, interactive: bool = False) -> list:
        try:
            return await self.conn.call(dest, path, iface, member, signature, body,
                                        timeout=timeout, interactive=interactive)
        except FAILED_CALL as e:
            raise failure(e, self.bus, timeout) from None

    async def call(self, member: str, *args: Any, interactive: bool = False,
                   timeout: float = CALL_TIMEOUT_S) -> list:
        """Call a Manager1 method; ``interactive`` lets polkit ask the user
        for a password (through an agent) instead of refusing at once."""
        method = api.METHODS[member]
        check_args(member, method.in_signature, args)
        return await self._raw(api.BUS_NAME, api.OBJECT_PATH, api.INTERFACE, member,
                               method.in_signature, list(args), timeout, interactive)

    async def _bus_call(self, member: str, signature: str = "", body: list | None = None) -> list:
        return await self._raw(*DBUS, member, signature, body or [])

    async def status(self) -> DaemonStatus:
        (d,) = await self.call("GetStatus")
        return DaemonStatus.from_dict(unwrap(d))

    async def kernels(self) -> list[KernelStatus]:
        (ks,) = await self.call("ListKernels")
        return [KernelStatus.from_dict(unwrap(k)) for k in ks]

    async def jobs(self, finished: int = 20) -> list[JobInfo]:
        (js,) = await self.call("ListJobs", finished)
        return [JobInfo.from_dict(unwrap(j)) for j in js]

    async def build(self, kernel: str = "", force: bool = False, interactive: bool = False) -> list[int]:
        (ids,) = await self.call("Build", kernel, force, interactive=interactive)
        return list(ids)

    async def cancel(self, job_id: int, interactive: bool = False) -> None:
        await self.call("Cancel", job_id, interactive=interactive)

    async def get_log(self, job_id: int = 0, kernel: str = "", lines: int = 50) -> tuple[str, list[str]]:
        path, tail = await self.call("GetLog", job_id, kernel, lines)
        return path, list(tail)

    async def cleanup(self, keep: int, execute: bool, interactive: bool = False) -> list[str]:
        (paths,) = await self.call("Cleanup", keep, execute, interactive=interactive)
        return list(paths)

    async def rescan(self, interactive: bool = False) -> None:
        await self.call("Rescan", interactive=interactive)

    async def next_boot(self) -> NextBoot:
        body = await self._raw(api.BUS_NAME, api.OBJECT_PATH, "org.freedesktop.DBus.Properties",
                               "Get", "ss", [api.INTERFACE, "NextBoot"])
        return NextBoot.from_dict(unwrap(body[0]))

    async def boot_try(self, kernel: str, interactive: bool = False) -> str:
        (msg,) = await self.call("BootTry", kernel, interactive=interactive)
        return msg

    async def set_boot_guard(self, mode: str, interactive: bool = False) -> str:
        (msg,) = await self.call("SetBootGuard", mode, interactive=interactive)
        return msg

    async def properties(self) -> dict[str, Any]:
        body = await self._raw(api.BUS_NAME, api.OBJECT_PATH, "org.freedesktop.DBus.Properties",
                               "GetAll", "s", [api.INTERFACE])
        return unwrap(body[0])

    async def owner(self) -> str:
        """The unique name of the running daemon, "" if none runs."""
        return await name_owner(self._bus_call, api.BUS_NAME)

    # -- signals --------------------------------------------------------------
    async def _add_match(self, rule: str) -> None:
        await self._bus_call("AddMatch", "s", [rule])

    async def subscribe(self, callback: Callable[[Event], None]) -> None:
        """Deliver the daemon's signals as model events: JobQueued,
        JobProgress, JobFinished, and StateChanged for PropertiesChanged.
        The match rules name the well-known name, so they hold across
        daemon restarts and before the daemon first appears."""
        await self._add_match(f"type='signal',sender='{api.BUS_NAME}',path='{api.OBJECT_PATH}',"
                              f"interface='{api.INTERFACE}'")
        await self._add_match(f"type='signal',sender='{api.BUS_NAME}',path='{api.OBJECT_PATH}',"
                              f"interface='org.freedesktop.DBus.Properties',"
                              f"member='PropertiesChanged',arg0='{api.INTERFACE}'")
        try:
            self._props = await self.properties()
        except NvkmdError as e:
            if e.code is not ErrorCode.UNREACHABLE:
                raise
            self._props = {}

        def handler(msg: Any) -> None:
            if msg.path != api.OBJECT_PATH:
                return
            for event in self._events(msg):
                callback(event)
        self.conn.on_signal(handler)

    def _events(self, msg: Any) -> list[Event]:
        """StateChanged for a change of the daemon's state properties, and
        NextBootChanged when NextBoot changed (one PropertiesChanged may
        carry both)."""
        b = msg.body
        if (msg.interface == "org.freedesktop.DBus.Properties" and msg.member == "PropertiesChanged"
                and msg.signature == "sa{sv}as" and b[0] == api.INTERFACE):
            changed = unwrap(b[1])
            out: list[Event] = []
            if "NextBoot" in changed:
                out.append(NextBootChanged(NextBoot.from_dict(changed["NextBoot"])))
            if set(changed) - {"NextBoot"}:
                out.append(self._event(msg))
            else:
                self._props.update(changed)
            return out
        event = self._event(msg)
        return [event] if event is not None else []

    def _event(self, msg: Any) -> Event | None:
        b = msg.body
        if msg.interface == api.INTERFACE:
            if msg.member == "JobQueued" and msg.signature == "tss":
                return JobQueued(JobInfo(id=b[0], kernel=b[1], source_version=b[2], state="queued"))
            if msg.member == "JobProgress" and msg.signature == "tssu":
                return JobProgress(job_id=b[0], kernel=b[1], phase=b[2], percent=b[3])
            if msg.member == "JobFinished" and msg.signature == "tsssss":
                return JobFinished(job_id=b[0], kernel=b[1], result=b[2], cause=b[3], hint=b[4],
                                   log=b[5])
        elif (msg.interface == "org.freedesktop.DBus.Properties" and msg.member == "PropertiesChanged"
              and msg.signature == "sa{sv}as" and b[0] == api.INTERFACE):
            self._props.update(unwrap(b[1]))
            p = self._props
            phase, percent = (p.get("Progress") or ["", 0])[:2]
            return StateChanged(state=p.get("State", ""), current_job=p.get("CurrentJob", 0),
                                phase=phase, percent=percent,
                                source_version=p.get("SourceVersion", ""))
        return None

    async def watch_owner(self, callback: Callable[[str], None]) -> None:
        """``callback(unique_name)`` whenever the daemon appears ("" when it
        goes away)."""
        await self._add_match("type='signal',sender='org.freedesktop.DBus',"
                              "interface='org.freedesktop.DBus',member='NameOwnerChanged',"
                              f"arg0='{api.BUS_NAME}'")

        def handler(msg: Any) -> None:
            if (msg.member == "NameOwnerChanged" and msg.interface == "org.freedesktop.DBus"
                    and msg.signature == "sss" and msg.body[0] == api.BUS_NAME):
                callback(msg.body[2])
        self.conn.on_signal(handler)

    async def wait_disconnected(self) -> None:
        await self.conn.wait_for_disconnect()
