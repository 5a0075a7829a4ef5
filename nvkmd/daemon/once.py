"""``nvkmd --once``: one pass of the engine over the installed kernels."""

from __future__ import annotations

import sys

from nvkmd.build.progress import Progress
from nvkmd.config import Config
from nvkmd.install.engine import Engine, Outcome
from nvkmd.paths import Paths
from nvkmd.system import source as sources
from nvkmd.system.installed import module_is_current
from nvkmd.system.kernels import Kernel, check_release, list_kernels


def format_outcome(o: Outcome) -> str:
    line = f"{o.kernel}: {o.result}"
    if o.from_cache:
        line += " (from cache)"
    if o.diagnosis:
        line += f": {o.diagnosis.cause}"
    if o.log:
        line += f" [log: {o.log}]"
    if o.diagnosis and o.diagnosis.first_error:
        line += f"\n    error: {o.diagnosis.first_error}"
    if o.diagnosis and o.diagnosis.hint:
        line += f"\n    hint: {o.diagnosis.hint}"
    return line


async def run_once(paths: Paths, config: Config, kernel: str | None, force: bool) -> int:
    src = sources.discover(paths, config)
    print(f"source: {src.origin} ({src.kind}, version {src.version})", flush=True)
    engine = Engine(paths, config)
    if kernel:
        targets = [Kernel(paths, check_release(kernel))]
    else:
        targets = [k for k in list_kernels(paths) if force or not module_is_current(k, src)]
    failed = 0
    interactive = sys.stdout.isatty()
    for k in targets:
        last: list[Progress] = []

        def show(p: Progress, release: str = k.release) -> None:
            if interactive and (not last or p.phase != last[-1].phase or p.percent != last[-1].percent):
                print(f"\r{release}: {p.phase} {p.percent}%   ", end="", flush=True)
            last.append(p)
        outcome = await engine.build(k.release, src, force=force, on_progress=show)
        if interactive and last:
            print("\r", end="")
        print(format_outcome(outcome), flush=True)
        failed += not outcome.ok
    if not targets:
        print("all kernels are ready", flush=True)
    return 1 if failed else 0
