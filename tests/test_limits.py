"""The bounds on arguments are one set of numbers: the D-Bus contract states
them, the bus adapter and the core enforce them with the same checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nvkmd import limits
from nvkmd.bus.service import validate
from nvkmd.errors import ErrorCode, NvkmdError

XML = (Path(__file__).resolve().parent.parent / "dbus/io.github.nvkmd.Manager1.xml").read_text()

# (method, argument, limit, the method's arguments with the limit at its place)
BOUNDS = [
    ("ListJobs", "finished", limits.MAX_FINISHED_JOBS, lambda n: [n]),
    ("GetLog", "lines", limits.MAX_LOG_LINES, lambda n: [0, "", n]),
    ("Cleanup", "keep", limits.MAX_KEEP, lambda n: [n, False]),
]


def _doc(method: str) -> str:
    m = re.search(rf"<!--\s*{method}:(.*?)-->", XML, re.S)
    assert m, f"{method} is not documented"
    return m.group(1)


@pytest.mark.parametrize("method,arg,limit,args", BOUNDS)
def test_the_contract_states_each_limit(method, arg, limit, args):
    doc = _doc(method)
    assert re.search(rf"@{arg}:.*?0\.\.{limit}\b", doc, re.S), (method, arg, limit)
    assert f"@{arg} above {limit})" in doc


@pytest.mark.parametrize("method,arg,limit,args", BOUNDS)
def test_the_bus_accepts_the_limit_and_refuses_one_more(method, arg, limit, args):
    assert validate(method, args(limit)) == args(limit)
    with pytest.raises(NvkmdError) as e:
        validate(method, args(limit + 1))
    assert e.value.code is ErrorCode.INVALID_ARGUMENT and arg in e.value.message


def test_the_checks_refuse_what_is_not_their_type():
    for check, bad in ((limits.finished_arg, "20"), (limits.finished_arg, True), (limits.keep_arg, 1.0),
                       (limits.lines_arg, -1), (limits.job_id_arg, 0), (limits.kernel_arg, "../x"),
                       (limits.kernel_arg, 5)):
        with pytest.raises(NvkmdError) as e:
            check(bad)
        assert e.value.code is ErrorCode.INVALID_ARGUMENT, (check, bad)
    assert limits.job_id_arg(0, zero_ok=True) == 0 and limits.kernel_arg("") == ""
