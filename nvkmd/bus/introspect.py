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
# nvkmd.bus.service serves Introspectable and Properties).
_STANDARD = """
<node>
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect"><arg name="xml_data" type="s" direction="out"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Peer">
    <method name="Ping"/>
    <method name="GetMachineId"><arg name="machine_uuid" type="s" direction="out"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Properties">
    <method name="Get">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="property_name" type="s" direction="in"/>
      <arg name="value" type="v" direction="out"/>
    </method>
    <method name="GetAll">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="properties" type="a{sv}" direction="out"/>
    </method>
    <method name="Set">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="property_name" type="s" direction="in"/>
      <arg name="value" type="v" direction="in"/>
    </method>
    <signal name="PropertiesChanged">
      <arg name="interface_name" type="s"/>
      <arg name="changed_properties" type="a{sv}"/>
      <arg name="invalidated_properties" type="as"/>
    </signal>
  </interface>
</node>
"""


def interface_element() -> ET.Element:
    iface = ET.Element("interface", name=api.INTERFACE)
    for m in api.METHODS.values():
        el = ET.SubElement(iface, "method", name=m.name)
        for name, sig in m.args:
            ET.SubElement(el, "arg", name=name, type=sig, direction="in")
        for name, sig in m.returns:
            ET.SubElement(el, "arg", name=name, type=sig, direction="out")
    for p in api.PROPERTIES.values():
        el = ET.SubElement(iface, "property", name=p.name, type=p.signature, access="read")
        if p.emits != "true":
            ET.SubElement(el, "annotation", name="org.freedesktop.DBus.Property.EmitsChangedSignal",
                          value=p.emits)
    for s in api.SIGNALS.values():
        el = ET.SubElement(iface, "signal", name=s.name)
        for name, sig in s.args:
            ET.SubElement(el, "arg", name=name, type=sig)
    return iface


@lru_cache(maxsize=1)
def object_xml() -> str:
    """What ``Introspect`` on the object returns."""
    node = ET.fromstring(_STANDARD)
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
