"""The D-Bus contract in dbus/: valid XML, documented member by member, and
exactly what the running daemon serves."""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from dbus_fast import SignatureTree

from dbus_helpers import ACTIVATION, BUSCONFIG, CONTRACT, DBUS_DIR, POLKIT_POLICY, raw_call
from helpers import TestRoot as Root
from nvkmd import api
from nvkmd.errors import ErrorCode
from nvkmd.model import JobInfo, KernelStatus, LastBuild, SourceInfo

POLKIT_DTD = Path("/usr/share/polkit-1/policyconfig-1.dtd")
XML_FILES = sorted(p for p in DBUS_DIR.iterdir() if p.suffix in (".xml", ".conf", ".policy"))


def test_dbus_dir_holds_the_four_files():
    assert {p.name for p in DBUS_DIR.iterdir()} >= {
        "io.github.nvkmd.Manager1.xml", "io.github.nvkmd.conf", "io.github.nvkmd.service",
        "io.github.nvkmd.policy"}


@pytest.mark.parametrize("path", XML_FILES, ids=lambda p: p.name)
def test_xmllint_validates(path):
    args = ["xmllint", "--noout"]
    if path.suffix == ".policy":
        assert POLKIT_DTD.is_file(), "polkit's DTD (package polkitd) is needed to validate the policy"
        args += ["--dtdvalid", str(POLKIT_DTD)]
    r = subprocess.run([*args, str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_busconfig_is_accepted_by_a_real_dbus_daemon(bus):
    # (Every bus in these tests includes it; this one says so by name.)
    assert bus.alive() and bus.address.startswith("unix:path=")
    assert str(BUSCONFIG) in bus.config.read_text()


def test_the_busconfig_lets_only_root_own_the_name_and_everyone_call():
    root = ET.parse(BUSCONFIG).getroot()
    owners = [(p.attrib, a.attrib["own"]) for p in root.iter("policy") for a in p.iter("allow")
              if "own" in a.attrib]
    assert owners == [({"user": "root"}, api.BUS_NAME)]
    default = [p for p in root.iter("policy") if p.get("context") == "default"]
    allowed = {(a.get("send_interface"), a.get("send_member")) for p in default for a in p.iter("allow")}
    assert allowed == {(api.INTERFACE, None),
                       ("org.freedesktop.DBus.Introspectable", "Introspect"),
                       ("org.freedesktop.DBus.Properties", "Get"),
                       ("org.freedesktop.DBus.Properties", "GetAll"),
                       ("org.freedesktop.DBus.Peer", None)}
    assert all(a.get("send_destination") == api.BUS_NAME for p in default for a in p.iter("allow"))


def test_the_activation_file_leaves_starting_to_systemd():
    lines = dict(line.split("=", 1) for line in ACTIVATION.read_text().splitlines()
                 if "=" in line and not line.startswith("#"))
    assert lines == {"Name": api.BUS_NAME, "Exec": "/bin/false", "User": "root",
                     "SystemdService": "nvkmd.service"}
    assert ACTIVATION.name == api.BUS_NAME + ".service"


def test_the_polkit_policy_defines_every_action_the_daemon_checks():
    root = ET.parse(POLKIT_POLICY).getroot()
    actions = {a.get("id"): {d.tag: d.text for d in a.find("defaults")} for a in root.iter("action")}
    used = {m.action for m in api.METHODS.values() if m.action}
    assert set(actions) == used
    for ident, defaults in actions.items():
        # nobody outside a local active session gets anything without a password
        assert defaults["allow_any"] == "auth_admin" and defaults["allow_inactive"] == "auth_admin", ident


# -- the contract file against the code -------------------------------------------

def interface_shape(node: ET.Element) -> dict:
    ifaces = [i for i in node.iter("interface") if i.get("name") == api.INTERFACE]
    assert len(ifaces) == 1
    iface = ifaces[0]

    def annotations(el):
        return {a.get("name"): a.get("value") for a in el.findall("annotation")}
    return {
        "methods": {m.get("name"): ([(a.get("name"), a.get("type"), a.get("direction", "in"))
                                     for a in m.findall("arg")], annotations(m))
                    for m in iface.findall("method")},
        "properties": {p.get("name"): (p.get("type"), p.get("access"), annotations(p))
                       for p in iface.findall("property")},
        "signals": {s.get("name"): ([(a.get("name"), a.get("type")) for a in s.findall("arg")],
                                    annotations(s))
                    for s in iface.findall("signal")},
        "annotations": annotations(iface),
    }


def contract() -> ET.Element:
    return ET.parse(CONTRACT).getroot()


def test_every_signature_in_the_contract_is_a_valid_dbus_type():
    for el in contract().iter():
        if el.get("type"):
            SignatureTree(el.get("type"))          # raises on an invalid signature
            assert len(SignatureTree(el.get("type")).types) == 1, el.attrib


def test_every_member_and_argument_is_documented():
    text = CONTRACT.read_text()
    iface = [i for i in contract().iter("interface") if i.get("name") == api.INTERFACE][0]
    for el in iface:
        name = el.get("name")
        # the comment right before the element starts with its name
        m = re.search(r"<!--((?:(?!-->).)*)-->\s*<" + el.tag + r" name=\"" + name + '"', text, re.S)
        assert m, f"{el.tag} {name} has no comment before it"
        doc = m.group(1)
        assert re.match(rf"\s*{name}:", doc), f"the comment before {name} does not start with it"
        assert len(doc.split()) >= 10, f"{name}'s comment says too little"
        for arg in el.findall("arg"):
            assert f"@{arg.get('name')}:" in doc, f"{name}'s argument {arg.get('name')} is undocumented"
        if el.tag == "method":
            action = api.METHODS[name].action
            if action:
                assert action in doc, f"{name} does not name its polkit action {action}"
            assert "Errors:" in doc, f"{name} does not list its errors"


def test_the_documented_error_names_are_exactly_the_error_codes():
    head = CONTRACT.read_text().split("<node>")[0]
    block = head.split("The names form a closed set:")[1].split("Errors of the standard")[0]
    documented = set(re.findall(r"^\s{4}([A-Z][A-Za-z]+)\s{2,}", block, re.M))
    assert documented == {c.value for c in ErrorCode}
    # and every error a method lists is one of them
    for errors in re.findall(r"Errors:(.*?)\.\n", CONTRACT.read_text(), re.S):
        for word in re.findall(r"\b([A-Z][A-Za-z]+)\b", errors):
            assert word in documented, f"unknown error {word} in {errors!r}"


@pytest.mark.parametrize("title,cls", [("A kernel record", KernelStatus),
                                       ("A job record", JobInfo)])
def test_the_documented_record_keys_are_the_model_fields(title, cls):
    head = CONTRACT.read_text().split("<node>")[0]
    block = head.split(title)[1].split("\n\n")[0]
    keys = set(re.findall(r"^    ([a-z_]+)\s+[a-z{}()]+\s", block, re.M))
    assert keys == {f.name for f in cls.__dataclass_fields__.values()}


def test_the_documented_nested_keys_are_the_model_fields():
    text = CONTRACT.read_text()
    for cls in (LastBuild, SourceInfo):
        for name in cls.__dataclass_fields__:
            assert re.search(rf"\b{name} [sbxd]\b", text), f"{cls.__name__}.{name} is undocumented"


def test_the_code_tables_match_the_contract():
    from nvkmd.bus.introspect import object_xml
    assert interface_shape(ET.fromstring(object_xml())) == interface_shape(contract())


# -- the live daemon against the contract -------------------------------------------

def test_live_introspection_matches_the_contract(tmp_path, bus, bus_daemon):
    d = bus_daemon(Root(tmp_path / "root"), bus, env={"NVKMD_RUNNING_KERNEL": "0.0.0-x"})
    reply = raw_call(bus.address, "Introspect", "", [],
                     interface="org.freedesktop.DBus.Introspectable")
    live = ET.fromstring(reply.body[0])
    assert interface_shape(live) == interface_shape(contract())
    names = {i.get("name") for i in live.iter("interface")}
    assert names == {api.INTERFACE, "org.freedesktop.DBus.Introspectable",
                     "org.freedesktop.DBus.Properties", "org.freedesktop.DBus.Peer"}
    # the standard interfaces it lists are really served
    assert raw_call(bus.address, "Ping", "", [], interface="org.freedesktop.DBus.Peer").body == []
    props = raw_call(bus.address, "GetAll", "s", [api.INTERFACE],
                     interface="org.freedesktop.DBus.Properties").body[0]
    shape = interface_shape(contract())
    assert {n: v.signature for n, v in props.items()} == {
        n: t for n, (t, _, _) in shape["properties"].items()}
    # and the ancestors lead busctl tree / d-feet to the object
    for parent, child in (("/", "io"), ("/io", "github"), ("/io/github", "nvkmd")):
        xml = raw_call(bus.address, "Introspect", "", [], path=parent,
                       interface="org.freedesktop.DBus.Introspectable").body[0]
        assert [n.get("name") for n in ET.fromstring(xml).findall("node")] == [child]
    assert d.stop() == 0
