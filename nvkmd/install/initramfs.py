"""Regenerate a kernel's initramfs after a successful install, when the
NVIDIA modules are part of it.

An initramfs that carries ``nvidia.ko`` (early KMS) keeps loading the old
module after nvkmd replaced it on disk, so it must be rebuilt; one that
does not carry it must be left alone, because rebuilding an initramfs is
slow and changes how the machine boots.  ``install.initramfs`` decides:

* ``"never"``: do nothing.
* a command containing ``{kernel}``: run it after every successful install.
* ``"auto"``: find the generator (update-initramfs, mkinitcpio, dracut)
  and the kernel's existing image; regenerate only when the generator's
  configuration names an NVIDIA module or the existing image contains one.
  A kernel without an image gets none.

The decisions are pure functions (``configured_modules``, ``decide``); the
shell around them runs the tools.  The engine calls ``regenerate`` after
the install and after depmod, so the image picks up the new modules.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterable

from nvkmd.config import Config
from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.paths import Paths
from nvkmd.procenv import child_env, run_tool
from nvkmd.system.kernels import Kernel

MARK = "nvkmd: initramfs:"
# Generators in order of preference: a Debian system may carry dracut-core
# beside initramfs-tools, but update-initramfs is then the one its kernel
# packages use.
TOOLS = ("update-initramfs", "mkinitcpio", "dracut")
# The lister that reads each generator's images.
LISTERS = {"update-initramfs": "lsinitramfs", "mkinitcpio": "lsinitcpio", "dracut": "lsinitrd"}
# Long enough for dracut with every module on a slow disk.
RUN_TIMEOUT_S = 900.0

Log = Callable[[str], None]


def normalise(module: str) -> str:
    """Module names compare with ``-`` and ``_`` as the same character, as modprobe does."""
    return module.strip().replace("-", "_")


# -- what the configuration puts into the initramfs (pure) -----------------

def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def initramfs_tools_modules(text: str) -> set[str]:
    """/etc/initramfs-tools/modules: one module per line, then its options."""
    return {normalise(line.split()[0]) for line in _strip_comments(text).splitlines() if line.split()}


def mkinitcpio_modules(text: str) -> set[str]:
    """mkinitcpio.conf: ``MODULES=(a b)`` or ``MODULES+=(c)``, across lines."""
    out: set[str] = set()
    for m in re.finditer(r"^\s*MODULES\+?=\(([^)]*)\)", _strip_comments(text), re.M):
        out |= {normalise(w.strip("'\"?")) for w in m.group(1).split()}
    return out


def dracut_modules(text: str) -> set[str]:
    """dracut.conf: ``add_drivers+=" a b "``, ``force_drivers``, ``drivers``;
    ``omit_drivers`` takes them out again."""
    added: set[str] = set()
    omitted: set[str] = set()
    for m in re.finditer(r"^\s*(add_drivers|force_drivers|drivers|omit_drivers)\+?=\s*"
                         r"(\"[^\"]*\"|'[^']*'|\S+)", _strip_comments(text), re.M):
        names = {normalise(w) for w in m.group(2).strip("\"'").split()}
        (omitted if m.group(1) == "omit_drivers" else added).update(names)
    return added - omitted


def configured_modules(tool: str, texts: Iterable[str]) -> set[str]:
    parse = {"update-initramfs": initramfs_tools_modules, "mkinitcpio": mkinitcpio_modules,
             "dracut": dracut_modules}[tool]
    # One text: dracut's omit_drivers in a later file takes out what an
    # earlier one added, as when dracut sources them in order.
    return parse("\n".join(texts))


def image_modules(listing: str) -> set[str]:
    """Module names in a lister's output (one path per line, maybe ``ls -l`` style)."""
    return {normalise(m.group(1)) for m in
            re.finditer(r"/([^/\s]+)\.ko(?:\.(?:xz|zst|gz))?\s*$", listing, re.M)}


@dataclasses.dataclass(frozen=True)
class Decision:
    run: bool
    reason: str


def decide(nvidia: set[str], configured: set[str], in_image: set[str] | None,
           image: Path | None) -> Decision:
    """Whether ``auto`` regenerates: only an existing image, and only when
    the configuration or the image itself holds one of ``nvidia``."""
    if image is None:
        return Decision(False, "the kernel has no initramfs image")
    wanted = {normalise(n) for n in nvidia}
    if wanted & configured:
        return Decision(True, f"the configuration puts {', '.join(sorted(wanted & configured))} "
                              f"into {image.name}")
    if in_image and wanted & in_image:
        return Decision(True, f"{image.name} contains {', '.join(sorted(wanted & in_image))}")
    return Decision(False, f"the NVIDIA modules are not part of {image.name}")


# -- the system: which generator, which image, which config files ----------

def find_tool(which: Callable[[str], str | None] = shutil.which) -> str | None:
    return next((t for t in TOOLS if which(t)), None)


def image_for(paths: Paths, tool: str, kernel: Kernel) -> Path | None:
    """The kernel's existing initramfs image, named as the generator names it."""
    k = kernel.release
    names = {"update-initramfs": [f"initrd.img-{k}"],
             "dracut": [f"initramfs-{k}.img", f"initrd.img-{k}"],
             "mkinitcpio": []}[tool]
    if tool == "mkinitcpio":
        # Arch names images by the kernel package, which pkgbase records.
        pkgbase = _read(kernel.dir / "pkgbase").strip()
        if pkgbase:
            names.append(f"initramfs-{pkgbase}.img")
    for name in names:
        p = paths.boot_dir / name
        if p.is_file():
            return p
    return None


def config_files(paths: Paths, tool: str) -> list[Path]:
    def conf_d(dirs: list[Path]) -> list[Path]:
        return [f for d in dirs for f in sorted(d.glob("*.conf")) if d.is_dir()]
    if tool == "update-initramfs":
        found = [paths.initramfs_tools_modules]
        for d in paths.initramfs_tools_modules_dirs:
            if d.is_dir():
                found += sorted(p for p in d.iterdir() if p.is_file())
        return found
    if tool == "mkinitcpio":
        return [paths.mkinitcpio_conf, *conf_d(paths.mkinitcpio_conf_dirs)]
    return [paths.dracut_conf, *conf_d(paths.dracut_conf_dirs)]


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def command_for(paths: Paths, tool: str, kernel: Kernel, image: Path) -> list[str]:
    """The generator's command line for one kernel.

    Only dracut can work on another root (``--root``): it takes the modules
    and its configuration from there and the programs from this system.
    """
    k = kernel.release
    system = paths.root == Path("/")
    if tool == "dracut":
        cmd = ["dracut", "--force"]
        if not system:
            cmd += ["--kmoddir", str(kernel.dir), "--conf", str(paths.dracut_conf),
                    "--confdir", str(paths.dracut_conf_dir)]
        return cmd + [str(image), k]
    if not system:
        raise NvkmdError(ErrorCode.NOT_SUPPORTED, f"{MARK} {tool} cannot regenerate an "
                         f"initramfs under --root {paths.root}; set install.initramfs to a command")
    if tool == "update-initramfs":
        return ["update-initramfs", "-u", "-k", k]
    return ["mkinitcpio", "-p", _read(kernel.dir / "pkgbase").strip()]


def list_image(tool: str, image: Path, log: Log) -> set[str] | None:
    """Module names inside ``image``, or None when no lister can read it."""
    listers = [LISTERS[tool], *(lst for lst in LISTERS.values() if lst != LISTERS[tool])]
    lister = next((lst for lst in listers if shutil.which(lst)), None)
    if lister is None:
        return None
    proc = subprocess.run([lister, str(image)], capture_output=True, text=True, env=child_env(),
                          timeout=RUN_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        log(f"nvkmd: initramfs: {lister} {image} exited {proc.returncode}; "
            "deciding from the configuration alone")
        return None
    return image_modules(proc.stdout)


# -- the step ---------------------------------------------------------------

def _run(cmd: list[str], log: Log, env: dict[str, str]) -> None:
    log("$ " + shlex.join(cmd))
    proc = run_tool(cmd, timeout=RUN_TIMEOUT_S, env=env, missing=ErrorCode.BUILD_FAILED,
                    prefix=f"{MARK} ", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = proc.stdout.splitlines()
    for line in lines:
        log(line)
    if proc.returncode != 0:
        raise NvkmdError(ErrorCode.BUILD_FAILED, f"{MARK} {cmd[0]} exited {proc.returncode}"
                         f"{': ' + lines[-1].strip() if lines else ''}")


def _check_writable(directory: Path) -> None:
    # Under nvkmd.service /boot is read-only unless the initramfs drop-in is
    # installed: say so, rather than let the generator fail half-way.
    if not os.access(directory, os.W_OK):
        raise NvkmdError(ErrorCode.BUILD_FAILED, f"{MARK} {directory} is not writable for nvkmd; "
                         "install systemd/nvkmd.service.d/initramfs.conf as "
                         "/etc/systemd/system/nvkmd.service.d/initramfs.conf (see README), "
                         "or set install.initramfs = \"never\"")


def custom_command(template: str, release: str) -> list[str]:
    """``install.initramfs`` as a command: split like a shell would, then
    put the (already validated) release in place of ``{kernel}``."""
    return [word.replace("{kernel}", release) for word in shlex.split(template)]


def regenerate(paths: Paths, config: Config, kernel: Kernel, log: Log = lambda line: None,
               critical: Callable[[bool], None] = lambda entering: None) -> bool:
    """Run the initramfs step for ``kernel`` after a successful install.

    Returns whether a generator ran.  Raises ``NvkmdError`` (marked with
    ``MARK``) when it ran and failed, so the build reports it.  The
    generator runs inside ``critical(True)`` / ``critical(False)``, like the
    module swap: some generators rewrite the image in place, and a
    half-written initramfs is a kernel that does not boot, so shutdown is
    delayed and a stopping daemon waits for it.
    """
    mode = config.install_initramfs
    if mode == "never":
        return False
    if mode != "auto":
        _critical_run(custom_command(mode, kernel.release), log, child_env(), critical)
        return True
    tool = find_tool()
    if tool is None:
        log(f"{MARK} skipped: no update-initramfs, mkinitcpio or dracut on this system")
        return False
    image = image_for(paths, tool, kernel)
    nvidia = {m.name for m in kernel.nvidia_modules()} or {"nvidia"}
    configured = configured_modules(tool, (_read(f) for f in config_files(paths, tool)))
    in_image = None
    if image is not None and not (configured & {normalise(n) for n in nvidia}):
        in_image = list_image(tool, image, log)
    decision = decide(nvidia, configured, in_image, image)
    if not decision.run:
        log(f"{MARK} skipped: {decision.reason}")
        return False
    log(f"{MARK} regenerating with {tool}: {decision.reason}")
    assert image is not None
    _check_writable(image.parent)
    # dracut leaves device nodes out by itself in containers; without
    # CAP_MKNOD (nvkmd.service's sandbox) it must be told.  The image boots
    # the same: the kernel mounts devtmpfs before running anything from it.
    _critical_run(command_for(paths, tool, kernel, image), log, child_env(DRACUT_NO_MKNOD="1"),
                  critical)
    return True


def _critical_run(cmd: list[str], log: Log, env: dict[str, str], critical: Callable[[bool], None]) -> None:
    critical(True)
    try:
        _run(cmd, log, env)
    finally:
        critical(False)
