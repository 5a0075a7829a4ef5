"""The model's records as D-Bus values: dataclasses become ``a{sv}``.

The D-Bus type of each key comes from the dataclass field's annotation, so
a field added to the model appears on the bus with the right type and no
edit here.  ``None`` values are left out (a{sv} has no null).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dbus_fast import Variant

from nvkmd.model import DaemonStatus

_BY_ANNOTATION = {"str": "s", "bool": "b", "int": "x", "float": "d", "list[str]": "as"}
_CAST = {"s": lambda v: text(str(v)), "b": bool, "x": int, "d": float,
         "as": lambda v: [text(str(x)) for x in v]}


def text(s: str) -> str:
    """``s`` as a string D-Bus can carry: valid UTF-8, no NUL.  Build logs
    and compiler messages are not always either."""
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from undecodable bytes
        s = s.encode("utf-8", "replace").decode("utf-8")
    return s


def variant(value: Any) -> Variant:
    """A Variant for a value whose type is known only at run time."""
    if isinstance(value, bool):
        return Variant("b", value)
    if isinstance(value, int):
        return Variant("x", value)
    if isinstance(value, float):
        return Variant("d", value)
    if isinstance(value, str):
        return Variant("s", text(value))
    if dataclasses.is_dataclass(value):
        return Variant("a{sv}", record(value))
    if isinstance(value, dict):
        return Variant("a{sv}", {str(k): variant(v) for k, v in value.items() if v is not None})
    if isinstance(value, (list, tuple)):
        if value and all(dataclasses.is_dataclass(v) or isinstance(v, dict) for v in value):
            return Variant("aa{sv}", [variant(v).value for v in value])
        return Variant("as", [text(str(v)) for v in value])
    return Variant("s", text(str(value)))


def record(obj: Any) -> dict[str, Variant]:
    """A dataclass instance as ``a{sv}``."""
    out: dict[str, Variant] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue
        sig = _BY_ANNOTATION.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))
        out[f.name] = Variant(sig, _CAST[sig](value)) if sig else variant(value)
    return out


def records(objs: list[Any]) -> list[dict[str, Variant]]:
    return [record(o) for o in objs]


def status(s: DaemonStatus) -> dict[str, Variant]:
    """``GetStatus``'s a{sv}: the shape of ``DaemonStatus.to_dict()``."""
    return {
        "daemon": Variant("a{sv}", {"version": Variant("s", text(s.version)),
                                    "state": Variant("s", text(s.state))}),
        "source": Variant("a{sv}", record(s.source)),
        "kernels": Variant("aa{sv}", records(s.kernels)),
        "jobs": Variant("aa{sv}", records(s.jobs)),
        "driver": Variant("a{sv}", record(s.driver)),
        **({"next_boot": Variant("a{sv}", record(s.next_boot))} if s.next_boot else {}),
        "candidates": Variant("aa{sv}", [variant(c).value for c in s.candidates]),
    }
