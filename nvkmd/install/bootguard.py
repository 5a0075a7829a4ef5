"""The boot guard's hands: change the boot default with the boot loader's
own tools, remember what was changed, put it back, and one-shot boots.

- GRUB, only with ``GRUB_DEFAULT=saved`` (grub.cfg reads ``saved_entry``):
  ``grub-set-default`` writes the pin; the user's value is put back with
  ``grub-editenv set/unset saved_entry``, which leaves a ``next_entry`` the
  user set meanwhile alone (grub-set-default would drop it).
- systemd-boot: ``bootctl set-default`` where the EFI variables can be
  written (the real root of an EFI boot), else the ``default`` line of
  ``loader.conf``, rewritten atomically.
- Anything else: nothing is changed, and the status says why.

The record lives in the state directory (``Paths.bootguard_state``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import structlog

from nvkmd.errors import ErrorCode, NvkmdError
from nvkmd.inspect import bls, grub, sdboot
from nvkmd.inspect.nextboot import GRUB, SYSTEMD_BOOT, NextBootChoice, next_boot
from nvkmd.install import guardrules
from nvkmd.install.guardrules import Pin
from nvkmd.paths import Paths
from nvkmd.procenv import child_env

log = structlog.get_logger()


@dataclasses.dataclass(frozen=True)
class GuardReport:
    """What the guard saw and did, for status, D-Bus and the log."""
    mode: str
    choice: NextBootChoice
    action: str = guardrules.NONE   # what this round did
    message: str = ""               # why, or what it changed
    pin: Pin | None = None          # the change in force now
    undo: str = ""                  # how to undo it by hand


def _tool(*names: str) -> str | None:
    return next((n for n in names if shutil.which(n)), None)


def _run(cmd: list[str]) -> str:
    """Run a boot loader tool; its error output (which may say more than
    its status: grub-set-default and grub-reboot exit 0 when grub-editenv
    failed under them, so every change is also read back)."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=child_env(),
                           errors="replace")
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NvkmdError(ErrorCode.INTERNAL, f"{cmd[0]}: {e}") from None
    if r.returncode:
        raise NvkmdError(ErrorCode.INTERNAL, f"{' '.join(cmd)}: exit {r.returncode}: "
                                             f"{(r.stderr or r.stdout).strip()[:300]}")
    return (r.stderr or "").strip()


def _check(what: str, now: str | None, want: str | None, said: str) -> None:
    if now != want:
        raise NvkmdError(ErrorCode.INTERNAL, f"{what} is {now!r} after the change, not {want!r}"
                                             + (f": {said.splitlines()[-1][:300]}" if said else ""))


def _shown(paths: Paths, p: Path) -> str:
    """``p`` as the managed system spells it, for commands shown to its admin."""
    try:
        return "/" + str(p.relative_to(paths.root)) if paths.root != Path("/") else str(p)
    except ValueError:
        return str(p)


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


# -- the record ---------------------------------------------------------------------

def _load(paths: Paths) -> dict:
    try:
        data = json.loads(paths.bootguard_state.read_text())
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("bootguard record unreadable, ignored", path=str(paths.bootguard_state), error=str(e))
        return {}


def load_record(paths: Paths) -> Pin | None:
    d = _load(paths).get("pin")
    try:
        return Pin.from_dict(d) if isinstance(d, dict) else None
    except TypeError:
        return None


def _save(paths: Paths, data: dict | None) -> None:
    f = paths.bootguard_state
    if not data:
        f.unlink(missing_ok=True)
        return
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, f)


def _save_record(paths: Paths, pin: Pin | None) -> None:
    _save(paths, {"pin": pin.to_dict()} if pin else None)


def _left_alone(paths: Paths) -> dict | None:
    """A setting the user made while nvkmd had pinned: never pinned over
    until it changes again."""
    d = _load(paths).get("left_alone")
    return d if isinstance(d, dict) else None


# -- per loader: can it be pinned, the setting now, what a value boots -----------------

def _sdboot_efi(paths: Paths) -> bool:
    # bootctl writes the firmware's variables of the machine it runs on: only
    # for the real root, and only when they are there.
    return paths.root == Path("/") and sdboot.efi_variables(paths)


def cannot_pin(paths: Paths, choice: NextBootChoice) -> str:
    if choice.loader == GRUB:
        cfg = grub.read_config(paths)
        if cfg is None or not cfg.saved:
            return ("pin needs GRUB_DEFAULT=saved in /etc/default/grub (then update-grub): "
                    "nothing was changed")
        if not _tool("grub-set-default", "grub2-set-default"):
            return "grub-set-default is not installed: nothing was changed"
        return ""
    if choice.loader == SYSTEMD_BOOT:
        if _sdboot_efi(paths):
            return "" if _tool("bootctl") else "bootctl is not installed: nothing was changed"
        return "" if sdboot.find_esp(paths) else "no ESP with loader.conf found: nothing was changed"
    return "the boot loader was not recognised: nothing was changed"


def current_value(paths: Paths, loader: str, method: str) -> str | None:
    if loader == GRUB:
        return grub.read_env(paths.grubenv).get("saved_entry")
    if method == "bootctl":
        return sdboot.read_efivar(paths, "LoaderEntryDefault")
    esp = sdboot.find_esp(paths)
    return sdboot.read_loader_conf(esp).get("default") if esp else None


def _sd_entries(paths: Paths) -> list[bls.BlsEntry]:
    esp = sdboot.find_esp(paths)
    return bls.sort_entries(bls.read_entries(sdboot.entries_dirs(paths, esp))) if esp else []


def value_for(paths: Paths, loader: str, kernel: str) -> str:
    """The setting that makes the loader boot ``kernel``, "" if no entry does."""
    if loader == GRUB:
        cfg = grub.read_config(paths)
        path = grub.find_kernel(cfg.menu, kernel) if cfg else None
        return grub.path_spec(path) if path else ""
    entry = next((e for e in _sd_entries(paths) if e.release == kernel and e.tries_left != 0), None)
    return entry.id if entry else ""


def would_boot(paths: Paths, loader: str, method: str, value: str | None) -> str:
    """The kernel the loader boots with its setting at ``value``."""
    if loader == GRUB:
        cfg = grub.read_config(paths)
        path, _ = grub.resolve(cfg.menu, value) if cfg else ([], False)
        return path[-1].release if path else ""
    entries = _sd_entries(paths)
    conf = (sdboot.read_loader_conf(sdboot.find_esp(paths)) if sdboot.find_esp(paths) else {})
    if method == "bootctl":
        c = sdboot.choose(entries, None, value, conf.get("default"), None)
    else:
        c = sdboot.choose(entries, None, sdboot.read_efivar(paths, "LoaderEntryDefault"), value, None)
    return c.entry.release if c.entry else ""


# -- writing ----------------------------------------------------------------------

def _write_loader_conf(esp: Path, value: str | None) -> None:
    conf = esp / "loader" / "loader.conf"
    try:
        lines = conf.read_text().splitlines()
    except FileNotFoundError:
        lines = []
    out = [ln for ln in lines if not (ln.split(None, 1)[:1] == ["default"])]
    if value is not None:
        out.append(f"default {value}")
    conf.parent.mkdir(parents=True, exist_ok=True)
    tmp = conf.with_name(conf.name + ".nvkmd-tmp")
    tmp.write_text("\n".join(out) + "\n")
    os.replace(tmp, conf)


def _set(paths: Paths, loader: str, method: str, value: str | None, restoring: bool) -> None:
    said = ""
    if loader == GRUB:
        editenv = _tool(*grub.EDITENV_TOOLS) or "grub-editenv"
        if not restoring:
            said = _run([_tool("grub-set-default", "grub2-set-default") or "grub-set-default",
                         f"--boot-directory={paths.boot_dir}", value or ""])
        elif value is None:
            said = _run([editenv, str(paths.grubenv), "unset", "saved_entry"])
        else:
            said = _run([editenv, str(paths.grubenv), "set", f"saved_entry={value}"])
    elif method == "bootctl":
        said = _run(["bootctl", "set-default", value or ""])
    else:
        esp = sdboot.find_esp(paths)
        if esp is None:
            raise NvkmdError(ErrorCode.NOT_SUPPORTED, "no ESP with a loader directory")
        _write_loader_conf(esp, value)
    key = "saved_entry" if loader == GRUB else "LoaderEntryDefault" if method == "bootctl" \
        else "loader.conf's default"
    _check(key, current_value(paths, loader, method), value or None, said)


def _undo_text(paths: Paths, loader: str, method: str, previous: str | None) -> str:
    if loader == GRUB:
        env = _shown(paths, paths.grubenv)
        return (f"grub-editenv {env} unset saved_entry" if previous is None
                else f"grub-editenv {env} set saved_entry={_q(previous)}")
    if method == "bootctl":
        return f"bootctl set-default {_q(previous or '')}"
    esp = sdboot.find_esp(paths)
    conf = _shown(paths, esp / "loader" / "loader.conf") if esp else "loader.conf"
    return (f"remove the 'default' line of {conf}" if previous is None
            else f"set 'default {previous}' in {conf}")


# -- one round ----------------------------------------------------------------------

def run(paths: Paths, mode: str, states: dict[str, str]) -> GuardReport:
    """Read the next boot, decide, act; ``states``: release -> kernel state."""
    releases = sorted(states)
    choice = next_boot(paths, releases)
    record = load_record(paths)
    if record is not None:
        now = current_value(paths, record.loader, record.method)
        user = would_boot(paths, record.loader, record.method, record.previous)
        d = guardrules.decide(mode, choice.kernel, choice.guess, choice.one_shot, states,
                              record, now, user, "")
    else:
        why_not = cannot_pin(paths, choice)
        alone = _left_alone(paths)
        if alone is not None:
            if current_value(paths, alone.get("loader", ""), alone.get("method", "")) == alone.get("value"):
                why_not = why_not or (f"the boot default was set by hand to {alone.get('value')!r} "
                                      "while nvkmd had pinned it: left as it is")
            else:
                _save(paths, None)
        d = guardrules.decide(mode, choice.kernel, choice.guess, choice.one_shot, states,
                              None, None, "", why_not)
    try:
        if d.action == guardrules.FORGET:
            _save(paths, {"left_alone": {"loader": record.loader, "method": record.method,
                                         "value": now}})
            log.warning("boot guard: pin left alone", reason=d.reason)
            return GuardReport(mode, next_boot(paths, releases), d.action, d.reason)
        if d.action == guardrules.RESTORE:
            _set(paths, record.loader, record.method, record.previous, restoring=True)
            _save_record(paths, None)
            log.warning("boot guard: default restored", value=record.previous, reason=d.reason)
            return GuardReport(mode, next_boot(paths, releases), d.action,
                               f"{d.reason} ({record.previous or 'unset'})")
        if d.action == guardrules.PIN:
            return _pin(paths, mode, choice, d, releases)
    except (NvkmdError, OSError) as e:
        msg = f"boot guard could not {d.action}: {e}; nothing else was changed"
        log.error("boot guard failed", action=d.action, error=str(e))
        return GuardReport(mode, next_boot(paths, releases), guardrules.NONE, msg, record,
                           record.undo if record else "")
    return GuardReport(mode, choice, guardrules.NONE, d.reason, record, record.undo if record else "")


def _pin(paths: Paths, mode: str, choice: NextBootChoice, d: guardrules.Decision,
         releases: list[str]) -> GuardReport:
    loader = choice.loader
    method = "grub-set-default" if loader == GRUB else "bootctl" if _sdboot_efi(paths) else "loader.conf"
    value = value_for(paths, loader, d.target)
    if not value:
        return GuardReport(mode, choice, guardrules.NONE, f"no boot entry boots {d.target}: nothing was changed")
    previous = current_value(paths, loader, method)
    undo = _undo_text(paths, loader, method, previous)
    pin = Pin(loader, method, previous, value, choice.kernel, d.target, time.time(), undo)
    # The record first: a crash between the two leaves a record whose value
    # does not match, which the next round forgets, never a silent change.
    _save_record(paths, pin)
    try:
        _set(paths, loader, method, value, restoring=False)
    except BaseException:
        _save_record(paths, None)
        raise
    after = next_boot(paths, releases)
    log.warning("boot guard: default pinned", kernel=choice.kernel, target=d.target,
                loader=loader, method=method, value=value, undo=undo)
    return GuardReport(mode, after, guardrules.PIN, f"{d.reason} (undo: {undo})", pin, undo)


def boot_try(paths: Paths, kernel: str, states: dict[str, str]) -> str:
    """Boot ``kernel`` once, next time; returns what was done."""
    if states.get(kernel) is None:
        raise NvkmdError(ErrorCode.NO_SUCH_KERNEL, f"{kernel} is not an installed kernel")
    if states[kernel] != "ready":
        raise NvkmdError(ErrorCode.INVALID_ARGUMENT,
                         f"{kernel} has no ready module ({states[kernel]}): not booting it")
    choice = next_boot(paths, sorted(states))
    value = value_for(paths, choice.loader, kernel) if choice.loader in (GRUB, SYSTEMD_BOOT) else ""
    if choice.loader == GRUB and value:
        tool = _tool("grub-reboot", "grub2-reboot") or "grub-reboot"
        said = _run([tool, f"--boot-directory={paths.boot_dir}", value])
        _check("next_entry", grub.read_env(paths.grubenv).get("next_entry"), value, said)
        undo = f"grub-editenv {_shown(paths, paths.grubenv)} unset next_entry"
    elif choice.loader == SYSTEMD_BOOT and value and _sdboot_efi(paths):
        _run(["bootctl", "set-oneshot", value])
        undo = "bootctl set-oneshot ''"
    elif choice.loader == SYSTEMD_BOOT and value:
        raise NvkmdError(ErrorCode.NOT_SUPPORTED, "systemd-boot keeps a one-shot boot in an EFI "
                                                  "variable, and there are none here")
    else:
        raise NvkmdError(ErrorCode.NOT_SUPPORTED,
                         f"no boot entry for {kernel} in a boot loader nvkmd can change "
                         f"({choice.loader}): nothing was changed")
    log.warning("boot try: one-shot boot set", kernel=kernel, value=value, undo=undo)
    return f"the next boot (once) starts {kernel}; undo: {undo}"
