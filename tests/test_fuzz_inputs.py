"""Fuzzing the inputs nvkmd reads from the system (issue 12): random config
files and random kernel directory names, 2,000 cases in all.  Loading a
config either gives a Config whose every number is finite and in range or
a ConfigError; a scan never raises, whatever is under /lib/modules."""

from __future__ import annotations

import json
import math
import shutil
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvkmd.config import SCHEMA, Config, ConfigError
from nvkmd.detect.scan import scan
from nvkmd.paths import Paths
from nvkmd.system.kernels import list_kernels

CASES = 1000          # per test; two tests

FUZZ = settings(max_examples=CASES, deadline=5000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.text(max_size=40),
    st.sampled_from(["auto", "kbuild", "dkms", "never", "/usr/src/x", "", "{kernel}"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=6)
known = sorted({s for s, _ in SCHEMA})
keys_of = {s: sorted(k for s2, k in SCHEMA if s2 == s) for s in known}


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    return "[" + ", ".join(toml_value(x) for x in v) + "]"


@st.composite
def config_texts(draw) -> bytes:
    kind = draw(st.sampled_from(["schema", "schema", "schema", "text", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "text":
        return draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
    lines = []
    for section in draw(st.lists(st.sampled_from(known + ["extra"]), max_size=4, unique=True)):
        lines.append(f"[{section}]")
        names = keys_of.get(section, []) + ["nope"]
        for key in draw(st.lists(st.sampled_from(names), max_size=5, unique=True)):
            lines.append(f"{key} = {toml_value(draw(values))}")
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def _numbers_are_sane(c: Config) -> None:
    for name in ("build_jobs", "build_timeout_s", "build_cache_keep", "logs_keep",
                 "logs_max_mib", "daemon_debounce_s", "daemon_lock_wait_max_s"):
        v = getattr(c, name)
        assert isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v < 2**32, (name, v)


def test_random_config_files_load_or_fail_cleanly(tmp_path):
    path = tmp_path / "nvkmd.toml"

    @FUZZ
    @given(config_texts())
    def one(data: bytes) -> None:
        path.write_bytes(data)
        try:
            c = Config.load(path)
        except ConfigError as e:
            assert e.message.startswith(f"config {path}: ")
            return
        _numbers_are_sane(c)

    one()


names = st.text(alphabet=st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
                min_size=1, max_size=60).filter(lambda n: n not in (".", "..") and
                                                len(n.encode()) < 255)
tricky = st.sampled_from(["6.1.0-47-amd64..evil", "..6.1", "6.1.0-47-amd64\n", "-rf", " 6.1",
                          "6.1.0-47-amd64" + "x" * 200, ".nvkmd-handover-6.1", "6.1.0:47"])


def test_random_kernel_directory_names_never_break_a_scan(root):
    root.add_kernel("6.1.0-1-amd64", headers=False)
    (root.modules / "6.1.0-1-amd64" / "kernel").mkdir()
    root.add_tiny_source()
    paths = Paths.build(root.path)
    config = Config(source_path="/usr/src/nvidia-tiny")
    allowed = set(string.ascii_letters + string.digits + "._+~-")

    @FUZZ
    @given(st.lists(st.one_of(names, tricky), min_size=1, max_size=3, unique=True))
    def one(dirnames: list[str]) -> None:
        made = []
        for n in dirnames:
            d = root.modules / n
            if d.exists():
                continue
            d.mkdir()
            (d / "kernel").mkdir()
            made.append(d)
        try:
            listed = [k.release for k in list_kernels(paths)]
            snap = scan(paths, config)
            assert "6.1.0-1-amd64" in listed and "6.1.0-1-amd64" in snap.kernels
            for r in listed:
                assert set(r) <= allowed and ".." not in r
        finally:
            for d in made:
                shutil.rmtree(d)

    one()
