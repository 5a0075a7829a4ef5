"""nvkmd-agent's warning about a kernel that is not installed yet and that
the driver will not build for: once per preflight result (kernel package
version, driver version), naming the kernel and the command that keeps
it out (``apt-mark hold ...``; pacman's ``IgnorePkg``).

The results come with the daemon's PreflightFinished signal and, for an
agent that starts later, from GetCandidates.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from nvkmd import api
from nvkmd.agent.rules import NORMAL, Notice, lines, sentence
from nvkmd.dbusconn import unwrap
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.verdict import WILL_BREAK, PreflightResult

SIGNAL = "PreflightFinished"


def slot(kernel: str) -> str:
    return f"preflight:{kernel}"


def notice(r: PreflightResult) -> Notice:
    keep = (f"It is held back (nvkmd holds it: {r.hold})." if r.held else
            f"To keep it out until a driver supports it: {r.hold}" if r.hold else "")
    return Notice(slot=slot(r.kernel), summary=f"The coming kernel {r.kernel} would break the NVIDIA driver",
                  body=lines(sentence(r.cause), sentence(r.hint), keep),
                  urgency=NORMAL, icon="dialog-warning", log=r.log, kernel=r.kernel,
                  seen_key=f"preflight:{r.key}")


def notices(results: Iterable[dict[str, Any]], seen: Iterable[str] | set[str]) -> list[Notice]:
    """One notice per "will break" result not shown before."""
    seen = set(seen)
    out = []
    for d in results:
        r = PreflightResult.from_dict(d)
        if r.verdict != WILL_BREAK or not r.kernel:
            continue
        n = notice(r)
        if n.seen_key not in seen:
            seen.add(n.seen_key)
            out.append(n)
    return out


async def subscribe(daemon: Any, callback: Callable[[list[dict[str, Any]]], None]) -> None:
    """``callback(results)`` for every PreflightFinished the daemon sends."""
    await daemon._add_match(f"type='signal',sender='{api.BUS_NAME}',path='{api.OBJECT_PATH}',"
                            f"interface='{api.INTERFACE}',member='{SIGNAL}'")

    def handler(msg: Any) -> None:
        if (msg.path == api.OBJECT_PATH and msg.interface == api.INTERFACE
                and msg.member == SIGNAL and msg.signature == "taa{sv}"):
            callback([unwrap(r) for r in msg.body[1]])
    daemon.conn.on_signal(handler)


async def candidates(daemon: Any) -> list[dict[str, Any]]:
    """The daemon's candidates; none from a daemon without preflights."""
    try:
        (cs,) = await daemon.call("GetCandidates")
    except NvkmdError as e:
        if e.code is ErrorCode.NOT_SUPPORTED:
            return []
        raise
    return [unwrap(c) for c in cs]
