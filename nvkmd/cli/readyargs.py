"""``nvkmctl wait-ready``'s usual command lines, read without argparse.

nvkmd-ready.service runs ``nvkmctl wait-ready`` on every boot, before the
display manager.  Building nvkmctl's whole parser (every command and its
options) costs more than the healthy check itself, so ``main`` asks
``parse`` first: it recognises only the exact spellings of wait-ready's
options and returns the same namespace argparse would; anything else
(help, an abbreviation, a value that starts with ``-``, a bad number, an
unknown option) returns None and argparse reads the line, so its usage
errors and help are the only ones.  tests/test_readyfast.py compares the
two on many command lines.
"""

from __future__ import annotations

from types import SimpleNamespace

COMMAND = "wait-ready"
RUN = "nvkmd.cli.waitready:cmd_wait_ready"
# Options before the command (nvkmctl's) and after it (wait-ready's), as
# main.py's parser() and setup_wait_ready declare them.
GLOBAL = {"--bus": "bus", "--root": "root"}
OWN = {"-k": "kernel", "--kernel": "kernel", "-t": "timeout", "--timeout": "timeout"}


def _bus(text: str) -> str:
    from nvkmd.api import parse_bus     # argtypes.bus's check, without argparse
    parse_bus(text)
    return text


# The conversions argparse applies (a ValueError: let argparse say why).
CONVERT = {"timeout": float, "bus": _bus}


def parse(argv: list[str]) -> SimpleNamespace | None:
    values: dict[str, object] = {"bus": "system", "root": "/", "kernel": "", "timeout": 600.0,
                                 "json": False}
    seen = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not seen and arg == COMMAND:
            seen = True
            continue
        if seen and arg == "--json":
            values["json"] = True
            continue
        name, eq, value = arg.partition("=")
        dest = (OWN if seen else GLOBAL).get(name)
        if dest is None or (eq and not name.startswith("--")):
            return None
        if not eq:
            if i >= len(argv):
                return None
            value = argv[i]
            i += 1
        if not value or value.startswith("-"):
            return None
        try:
            values[dest] = CONVERT.get(dest, str)(value)
        except ValueError:
            return None
    if not seen:
        return None
    return SimpleNamespace(command=COMMAND, run=RUN, **values)
