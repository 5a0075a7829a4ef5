"""The boot guard's decision, as a pure function over what was read.

"pin" moves the boot default only when all of this holds: the kernel that
boots next is known (not a guess) and has no ready module, the boot was not
set for one boot only by hand, the boot loader can be changed with its own
tools, and another installed kernel's module is installed and current.
What nvkmd changed is recorded (``Pin``); it is undone once the kernel the
user's own setting would boot has a ready module, or when the guard is
turned off, and forgotten (never overwritten) when the setting was changed
by someone else in the meantime.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nvkmd.system.kernels import release_key

NONE, PIN, RESTORE, FORGET = "none", "pin", "restore", "forget"


@dataclasses.dataclass(frozen=True)
class Pin:
    """What the guard wrote, so it can be undone exactly once."""
    loader: str                 # grub | systemd-boot
    method: str                 # grub-set-default | bootctl | loader.conf
    previous: str | None        # the user's value before; None: it was not set
    value: str                  # what nvkmd wrote
    protected: str              # the kernel moved away from
    target: str                 # the kernel pinned
    at: float
    undo: str                   # a command that undoes it by hand

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Pin":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclasses.dataclass(frozen=True)
class Decision:
    action: str                 # none | pin | restore | forget
    target: str = ""            # for pin: the kernel to boot
    reason: str = ""            # one line for status and the log


def newest_ready(states: dict[str, str], besides: str = "") -> str:
    ready = [k for k, s in states.items() if s == "ready" and k != besides]
    return max(ready, key=release_key) if ready else ""


def decide(mode: str, kernel: str, guess: bool, one_shot: bool, states: dict[str, str],
           record: Pin | None, current_value: str | None, user_would_boot: str,
           cannot_pin: str) -> Decision:
    """``kernel``: what boots next; ``states``: release -> KernelStatus.state;
    ``current_value``: the loader's setting now, where ``record`` wrote;
    ``user_would_boot``: the kernel ``record.previous`` would boot;
    ``cannot_pin``: why this loader cannot be pinned, "" if it can."""
    if record is not None:
        if current_value != record.value:
            return Decision(FORGET, reason=(
                f"the boot default was changed since nvkmd pinned {record.target} "
                f"(now {current_value!r}): left as it is"))
        if mode != PIN:
            return Decision(RESTORE, reason=f"boot.guard is {mode}: the user's default is put back")
        state = states.get(user_would_boot)
        if state == "ready":
            return Decision(RESTORE, reason=f"the module for {user_would_boot} is ready: "
                                            "the user's default is put back")
        if state is None:
            return Decision(RESTORE, reason=f"{user_would_boot or 'the kernel the default names'} "
                                            "is not installed any more: the user's default is put back")
        return Decision(NONE, reason=f"pinned to {record.target} until the module for "
                                     f"{user_would_boot} is ready")
    if mode != PIN or not kernel or states.get(kernel) == "ready":
        return Decision(NONE)
    if guess:
        return Decision(NONE, reason=cannot_pin or "which kernel boots next is a guess: nothing was changed")
    if one_shot:
        return Decision(NONE, reason=f"{kernel} was chosen for the next boot only: left as it is")
    if cannot_pin:
        return Decision(NONE, reason=cannot_pin)
    target = newest_ready(states, besides=kernel)
    if not target:
        return Decision(NONE, reason="no other installed kernel has a ready module: nothing to pin")
    return Decision(PIN, target=target, reason=(
        f"{kernel} has no ready module ({states.get(kernel, 'unknown')}): "
        f"the boot default now points at {target}"))
