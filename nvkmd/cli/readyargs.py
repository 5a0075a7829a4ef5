"""``nvkmctl wait-ready``'s and ``nvkmctl status``'s usual command lines,
read without argparse.

nvkmd-ready.service runs ``nvkmctl wait-ready`` on every boot, before the
display manager, and ``status`` is what people (and scripts, often) type.
Building nvkmctl's whole parser (every command and its options, importing
every command module) costs more than the healthy check itself, so ``main``
asks ``parse`` first: it recognises only the exact spellings of these
commands' options and returns the same namespace argparse would; anything else
(help, an abbreviation, a value that starts with ``-``, a bad number, an
unknown option) returns None and argparse reads the line, so its usage
errors and help are the only ones.  tests/test_readyfast.py compares the
two on many command lines.
"""

from __future__ import annotations

from types import SimpleNamespace

# Options before the command (nvkmctl's), as main.py's parser() declares them.
GLOBAL = {"--bus": "bus", "--root": "root"}


def _bus(text: str) -> str:
    from nvkmd.api import parse_bus     # argtypes.bus's check, without argparse
    parse_bus(text)
    return text


# The conversions argparse applies (a ValueError: let argparse say why).
CONVERT = {"timeout": float, "bus": _bus}
# Per command: what main.py's COMMANDS runs, its own options (as its setup
# declares them) and their defaults.
FAST = {
    "wait-ready": ("nvkmd.cli.waitready:cmd_wait_ready",
                   {"-k": "kernel", "--kernel": "kernel", "-t": "timeout", "--timeout": "timeout"},
                   {"kernel": "", "timeout": 600.0}),
    "status": ("nvkmd.cli.statuscmd:cmd_status", {}, {}),
}


def parse(argv: list[str]) -> SimpleNamespace | None:
    values: dict[str, object] = {"bus": "system", "root": "/", "json": False}
    command = ""
    own: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not command and arg in FAST:
            command = arg
            own = FAST[arg][1]
            values.update(FAST[arg][2])
            continue
        if command and arg == "--json":
            values["json"] = True
            continue
        name, eq, value = arg.partition("=")
        dest = (own if command else GLOBAL).get(name)
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
    if not command:
        return None
    return SimpleNamespace(command=command, run=FAST[command][0], **values)
