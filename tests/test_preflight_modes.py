"""preflight.mode: "off" refuses requests, "manual" watches nothing, "auto"
on a system without apt or pacman acts as "manual"; the result store
survives a corrupt file.  Plain objects, no daemon."""

from __future__ import annotations

import pytest

from nvkmd.config import Config
from nvkmd.daemon.preflights import Preflights
from nvkmd.daemon.preflightstore import ResultStore
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.paths import Paths
from nvkmd.verdict import PreflightResult


def make(root, **cfg) -> Preflights:
    return Preflights(Paths.build(root.path), Config(**cfg), source=lambda: None,
                      build_needed=lambda: False, emit=lambda rid, rs: None)


def test_off_refuses_and_manual_watches_nothing(root):
    with pytest.raises(NvkmdError) as e:
        make(root, preflight_mode="off").request("linux-image-amd64")
    assert e.value.code is ErrorCode.NOT_SUPPORTED and "preflight.mode" in e.value.message
    lists = root.path / "apt" / "lists"
    lists.mkdir(parents=True)
    (root.path / "apt" / "apt.conf").write_text(f'Dir::State::lists "{lists}/";\n')
    p = make(root, preflight_mode="manual", preflight_apt_config="/apt/apt.conf")
    assert p.mode == "manual" and p.watch_spec() == {}


def test_auto_without_a_package_manager_is_manual(root):
    p = make(root)                 # a test root: no APT_CONFIG, no pacman database
    assert p.mode == "manual" and p.watch_spec() == {}
    assert p.request("") == 1      # a request still works


def test_auto_with_apt_watches_the_lists_apt_config_names(root):
    lists = root.path / "apt" / "lists"
    lists.mkdir(parents=True)
    (root.path / "apt" / "apt.conf").write_text(f'Dir::State::lists "{lists}/";\n')
    p = make(root, preflight_apt_config="/apt/apt.conf")
    assert p.mode == "auto" and p.watch_spec() == {lists: ("apt-lists", False)}


def test_result_store_survives_garbage(tmp_path):
    path = tmp_path / "preflight.json"
    path.write_text("{not json")
    s = ResultStore(path)
    assert s.results == {} and s.held == {}
    r = PreflightResult(kernel="6.1.0-57-amd64", verdict="ready", driver_version="9.9.1",
                        package="linux-headers-6.1.0-57-amd64", package_version="6.1.192-3", manager="apt")
    s.put(r)
    s.results[r.key]["elapsed_s"] = "garbage"
    s.results["x"] = {"verdict": "ready", "nonsense": 1, "kernel": 5}
    s.save()
    again = ResultStore(path)
    assert again.get(r.key).verdict == "ready"
