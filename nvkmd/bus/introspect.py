"""Introspection XML, generated from the tables in ``nvkmd.api``.

Generated rather than copied from ``dbus/``: the tests compare this output
with the documented contract, so a member added to the code but not to the
contract (or the reverse) fails them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from functools import lru_cache

from nvkmd import api

DOCTYPE = ('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
           ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n')

# The standard interfaces the object also answers (dbus-fast serves Peer;
# nvkmd.bus.service serves Introspectable and Properties):
# (interface, [(method, in args, out args)], [(signal, args)]).
_STANDARD = (
    ("org.freedesktop.DBus.Introspectable", [("Introspect", [], [("xml_data", "s")])], []),
    ("org.freedesktop.DBus.Peer",
     [("Ping", [], []), ("GetMachineId", [], [("machine_uuid", "s")])], []),
    ("org.freedesktop.DBus.Properties",
     [("Get", [("interface_name", "s"), ("property_name", "s")], [("value", "v")]),
      ("GetAll", [("interface_name", "s")], [("properties", "a{sv}")]),
      ("Set", [("interface_name", "s"), ("property_name", "s"), ("value", "v")], [])],
     [("PropertiesChanged", [("interface_name", "s"), ("changed_properties", "a{sv}"),
                             ("invalidated_properties", "as")])]),
)

def _method(iface: ET.Element, name: str, args, returns) -> None:
    el = ET.SubElement(iface, "method", name=name)
    for arg, sig in args:
        ET.SubElement(el, "arg", name=arg, type=sig, direction="in")
    for arg, sig in returns:
        ET.SubElement(el, "arg", name=arg, type=sig, direction="out")


def _signal(iface: ET.Element, name: str, args) -> None:
    el = ET.SubElement(iface, "signal", name=name)
    for arg, sig in args:
        ET.SubElement(el, "arg", name=arg, type=sig)


def interface_element() -> ET.Element:
    iface = ET.Element("interface", name=api.INTERFACE)
    for m in api.METHODS.values():
        _method(iface, m.name, m.args, m.returns)
    for p in api.PROPERTIES.values():
        el = ET.SubElement(iface, "property", name=p.name, type=p.signature, access="read")
        if p.emits != "true":
            ET.SubElement(el, "annotation", name="org.freedesktop.DBus.Property.EmitsChangedSignal",
                          value=p.emits)
    for s in api.SIGNALS.values():
        _signal(iface, s.name, s.args)
    return iface


@lru_cache(maxsize=1)
def object_xml() -> str:
    """What ``Introspect`` on the object returns."""
    node = ET.Element("node")
    for name, methods, signals in _STANDARD:
        iface = ET.SubElement(node, "interface", name=name)
        for m in methods:
            _method(iface, *m)
        for s in signals:
            _signal(iface, *s)
    node.append(interface_element())
    ET.indent(node)
    return DOCTYPE + ET.tostring(node, encoding="unicode") + "\n"


def parent_xml(path: str) -> str | None:
    """``Introspect`` on an ancestor of the object names the next child, so
    ``busctl tree`` and d-feet can find the object; None for other paths."""
    target = api.OBJECT_PATH
    prefix = path.rstrip("/") + "/"
    if path == target or not target.startswith(prefix):
        return None
    child = target[len(prefix):].split("/")[0]
    return DOCTYPE + f'<node>\n  <node name="{child}"/>\n</node>\n'
