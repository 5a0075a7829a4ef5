"""``fix``: what a person would do when the driver does not load.

1. Rescan: every kernel directory, the source, DKMS's registrations.
2. Drop what interrupted installs left (nvkmd's staging and hand-over
   directories).
3. Rebuild what is missing or stale for every kernel with headers whose
   module is nvkmd's, DKMS's or absent (modules other packages own, and
   ones copied by hand, are reported, never replaced).
4. Run depmod where ``modules.dep`` is missing or older than a module in
   ``updates/`` or ``extra/``.
5. Report each thing it did, or that there was nothing to do.

The rebuild goes through a callback: the daemon queues a job, a one-shot
caller builds on the spot.  ``plan`` decides without changing anything.
"""

from __future__ import annotations

import dataclasses
import shutil
from typing import Callable

from nvkmd.config import Config
from nvkmd.errors import NvkmdError
from nvkmd.inspect import origin
from nvkmd.install.modules import depmod, recover, stale_stages
from nvkmd.paths import Paths
from nvkmd.system import dkms
from nvkmd.system.installed import module_is_current
from nvkmd.system.kernels import Kernel, list_kernels
from nvkmd.system.modinfo import MODULE_SUFFIXES
from nvkmd.system.source import Source, discover

BuildFn = Callable[[str], str]        # release -> what happened ("queued job 4", "success")


@dataclasses.dataclass(frozen=True)
class Step:
    kernel: str
    action: str          # "rebuild" | "depmod" | "tidy" | "report"
    why: str


def _stale_depmod(kernel: Kernel) -> str:
    dep = kernel.dir / "modules.dep"
    newest = 0
    for sub in ("updates", "extra"):
        d = kernel.dir / sub
        if not d.is_dir():
            continue
        for p in dkms.nvidia_module_files(d) + [q for q in d.rglob("*")
                                                if q.name.endswith(MODULE_SUFFIXES)
                                                and not q.name.startswith("nvidia")]:
            try:
                newest = max(newest, p.stat().st_mtime_ns)
            except OSError:
                pass
    if not newest:
        return ""
    try:
        if dep.stat().st_mtime_ns >= newest:
            return ""
        return "modules.dep is older than the modules in updates/ or extra/"
    except OSError:
        return "modules.dep is missing"


def _needs_build(paths: Paths, config: Config, kernel: Kernel, source: Source) -> str:
    choice = dkms.choose(config.build_backend, paths, source)
    if choice.registration:
        if dkms.is_current(paths, kernel, source, choice.registration):
            return ""
        return f"DKMS has no current {choice.registration.spec} installed"
    if module_is_current(kernel, source):
        return ""
    return "no nvidia module" if origin.of(paths, kernel.release) == "none" \
        else f"nvkmd's module is not built from {source.version}"


def plan(paths: Paths, config: Config) -> list[Step]:
    steps: list[Step] = []
    try:
        source: Source | None = discover(paths, config)
    except NvkmdError as e:
        source = None
        steps.append(Step("", "report", f"no usable source: {e.message}"))
    kernels = list_kernels(paths)
    running = paths.running_kernel()
    kernels.sort(key=lambda k: k.release != running)       # the running kernel first
    for k in kernels:
        leftovers = stale_stages(k)
        leftovers += list(k.dir.parent.glob(f".nvkmd-handover-{k.release}"))
        if leftovers:
            steps.append(Step(k.release, "tidy", "leftovers of an interrupted install: "
                              + ", ".join(p.name for p in leftovers)))
        kind = origin.of(paths, k.release)
        if kind in ("distro", "manual"):
            steps.append(Step(k.release, "report", f"its nvidia module is {kind}, not nvkmd's or "
                              "DKMS's; nvkmd leaves it alone"))
        elif source is not None:
            if k.headers is None:
                if kind == "none":
                    steps.append(Step(k.release, "report", "no nvidia module and no headers: "
                                      f"install the headers for {k.release}"))
            else:
                why = _needs_build(paths, config, k, source)
                if why:
                    steps.append(Step(k.release, "rebuild", why))
        why = _stale_depmod(k)
        if why:
            steps.append(Step(k.release, "depmod", why))
    return steps


def run(paths: Paths, config: Config, build: BuildFn) -> list[str]:
    """Carry out ``plan``; one line per thing done (or found)."""
    done: list[str] = []
    for step in plan(paths, config):
        kernel = Kernel(paths, step.kernel) if step.kernel else None
        if step.action == "tidy" and kernel:
            recover(kernel)
            for p in kernel.dir.parent.glob(f".nvkmd-handover-{kernel.release}"):
                shutil.rmtree(p, ignore_errors=True)
            done.append(f"{step.kernel}: removed {step.why}")
        elif step.action == "rebuild":
            done.append(f"{step.kernel}: rebuild ({step.why}): {build(step.kernel)}")
        elif step.action == "depmod" and kernel:
            try:
                depmod(kernel, lambda line: None)
                done.append(f"{step.kernel}: ran depmod ({step.why})")
            except NvkmdError as e:
                done.append(f"{step.kernel}: depmod failed ({e.message})")
        else:
            done.append(f"{step.kernel + ': ' if step.kernel else ''}{step.why}")
    return done or ["nothing to fix: every kernel with headers has a current module"]
