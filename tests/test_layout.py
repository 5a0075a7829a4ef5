"""The package's shape: imports point down the data flow, never in a circle;
dbus-fast stays behind the bus boundary; system paths come from paths.py;
no module needs more than one sitting to read."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "nvkmd"
MAX_LINES = 400

# Lower stages first.  A module may import its own stage and any stage
# before it, never one after.  The shared vocabulary is the top-level modules.
# The programs people run (cli, admin, agent) sit on top; the clients of the
# daemon's API below them import nothing of the daemon's side.
STAGES = [
    ["shared"], ["system"], ["inspect"], ["watch"], ["detect"], ["jobs"], ["build"],
    ["install"], ["daemon"], ["bus"], ["clients"], ["cli", "admin", "agent"],
]
DBUS_ALLOWED = ("nvkmd.bus", "nvkmd.dbusconn")
# Paths a module may spell although they look like system paths: D-Bus
# object paths and what systemd's protocol names, not files nvkmd reads.
ABSOLUTE = re.compile(r"^/(?:usr|etc|var|lib|proc|sys|run|boot|dev|opt|tmp|home|root|efi|sbin|bin)(?:/|$)")


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = p
    return out


def stage_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or (len(parts) == 2 and (PKG / f"{parts[1]}.py").exists()):
        return "shared"
    return parts[1]


def imports_of(module: str, path: Path) -> set[str]:
    """Every nvkmd module ``module`` imports (at any depth of the file)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    pkg = module if is_pkg else module.rpartition(".")[0]
    found: set[str] = set()
    known = modules()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("nvkmd"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("nvkmd"):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.add(sub if sub in known else target)
    found.discard(module)
    return found


def _rank(stage: str, order: list[list[str]]) -> int | None:
    for i, group in enumerate(order):
        if stage in group:
            return i
    return None


def test_imports_point_down_the_flow():
    wrong = []
    for mod, path in modules().items():
        mine = stage_of(mod)
        for dep in imports_of(mod, path):
            theirs = stage_of(dep)
            if theirs == mine:
                continue
            a, b = _rank(mine, STAGES), _rank(theirs, STAGES)
            if a is None or b is None:
                wrong.append(f"{mod} ({mine}) imports {dep} ({theirs}): a stage not in STAGES")
            elif b > a:
                wrong.append(f"{mod} ({mine}) imports {dep} ({theirs})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circle():
    graph = {m: imports_of(m, p) for m, p in modules().items()}
    # A package's __init__ importing its own modules is not a circle.
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d not in graph:
                continue
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "\n".join(cycles)


def test_dbus_fast_only_behind_the_bus_boundary():
    offenders = []
    for mod, path in modules().items():
        if mod.startswith(DBUS_ALLOWED):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "dbus_fast" for n in names):
                offenders.append(mod)
    assert not offenders, offenders


def test_no_absolute_system_path_outside_paths():
    offenders = []
    for mod, path in modules().items():
        if mod == "nvkmd.paths":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr)
                      and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docstrings and ABSOLUTE.match(node.value)):
                offenders.append(f"{mod}:{node.lineno}: {node.value!r}")
    assert not offenders, "\n".join(offenders)


def test_system_paths_only_through_paths():
    """``paths.at("etc/...")`` spells a system path as surely as "/etc/..." does."""
    offenders = []
    for mod, path in modules().items():
        if mod == "nvkmd.paths":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "at" and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                offenders.append(f"{mod}:{node.lineno}: at({node.args[0].value!r})")
    assert not offenders, "\n".join(offenders)


def test_modules_are_small():
    big = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, big
