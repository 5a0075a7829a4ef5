"""What nvkmd-agent shows, decided from the daemon's data.  Pure: no bus, no
files, no clock (the caller passes ``now``).

A notification is a ``Notice`` in a *slot*: ``build:<K>`` for a kernel's
running build and its result, ``boot`` for the boot-at-risk warning.  The
agent keeps one server-side notification per slot and updates it in place
(``replaces_id``), so a build shows one bubble, not a stack of them.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from nvkmd.model import DaemonStatus, KernelStatus

LOW, NORMAL, CRITICAL = 0, 1, 2          # the spec's urgency byte
BOOT_SLOT = "boot"

PHASE_WORDS = {
    "prepare": "Preparing",
    "conftest": "Probing the kernel's interfaces",
    "compile": "Compiling",
    "link": "Linking",
    "install": "Installing",
    "done": "Finishing",
}

# A kernel in one of these states has no working module and nvkmd is not
# about to give it one on its own.
NO_MODULE = frozenset({"failed", "unsupported", "missing", "waiting-for-headers"})


@dataclasses.dataclass(frozen=True)
class Notice:
    slot: str
    summary: str
    body: str
    urgency: int
    icon: str = ""
    timeout_ms: int = -1         # -1: the server's default; 0: until closed
    resident: bool = False       # stays after its action is invoked
    percent: int | None = None   # a progress bar, where the server draws one
    log: str = ""                # "Show log" opens it
    kernel: str = ""
    job_id: int = 0
    seen_key: str = ""           # a failure's identity, remembered once shown

    @property
    def progress(self) -> bool:
        return self.percent is not None


def build_slot(kernel: str) -> str:
    return f"build:{kernel}"


def sentence(text: str) -> str:
    """"kernel API change in the driver" -> "Kernel API change in the driver."."""
    text = text.strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?:" else text + "."


def lines(*parts: str) -> str:
    return "\n".join(p for p in parts if p)


def failure_key(kernel: str, log: str, job_id: int = 0) -> str:
    """A failed build's identity: its log file (one per build, timestamped),
    or the job when the build never got a log."""
    return log or f"{kernel}#job{job_id}"


# -- the notices --------------------------------------------------------------

def failure_notice(kernel: str, cause: str, hint: str, log: str, job_id: int = 0) -> Notice:
    return Notice(slot=build_slot(kernel),
                  summary=f"NVIDIA module build failed for {kernel}",
                  body=lines(sentence(cause or "the build failed"), sentence(hint)),
                  urgency=CRITICAL, icon="dialog-error", log=log, kernel=kernel, job_id=job_id,
                  seen_key=failure_key(kernel, log, job_id))


def success_notice(kernel: str, version: str) -> Notice:
    what = f"NVIDIA {version}" if version else "The NVIDIA driver"
    return Notice(slot=build_slot(kernel), summary=f"NVIDIA modules ready for {kernel}",
                  body=f"{what} is built and installed for this kernel.",
                  urgency=LOW, icon="dialog-information", kernel=kernel)


def progress_notice(kernel: str, phase: str, percent: int, boots_next: bool = False,
                    eta_s: float = -1.0) -> Notice:
    """``eta_s``: seconds left by the previous build of the same driver
    version on this machine (JobInfo.eta_s); -1 shows none."""
    percent = max(0, min(100, int(percent)))
    word = PHASE_WORDS.get(phase, "Building")
    if eta_s >= 0:
        s = round(eta_s)
        word_eta = f"{s // 60}:{s % 60:02d}" if s >= 60 else f"{s}s"
        percent_text = f"{percent}%, about {word_eta} left"
    else:
        percent_text = f"{percent}%"
    # A reboot now would start a kernel without its module: say so where
    # the user looks (the daemon's logind delay lock names the build too).
    wait = f"\n{kernel} boots next: wait for this build before rebooting." if boots_next else ""
    return Notice(slot=build_slot(kernel), summary=f"Building NVIDIA modules for {kernel}",
                  body=f"{word}: {percent_text}{wait}", urgency=NORMAL if boots_next else LOW,
                  icon="system-run", percent=percent, kernel=kernel)


def _why(k: KernelStatus) -> tuple[str, str]:
    """(what is wrong with ``k``'s module, what to do)."""
    lb = k.last_build
    if k.state == "waiting-for-headers":
        pkg = k.headers_package
        return ("its kernel headers are not installed",
                f"install {pkg}" if pkg else "install the headers package for this kernel")
    if k.state in ("failed", "unsupported") and lb is not None:
        what = "the build failed" if k.state == "failed" else "this driver does not support it"
        return (f"{what}: {lb.cause}" if lb.cause else what, lb.hint)
    if k.state in ("queued", "building"):
        return "a build is under way", ""
    return "no module has been built for it", f"run: nvkmctl build {k.release}"


def boot_notice(k: KernelStatus, fallback: str = "") -> Notice:
    """``fallback``: an installed kernel whose module is ready, to boot once."""
    why, hint = _why(k)
    log = k.last_build.log if k.last_build and k.state in ("failed", "unsupported") else ""
    instead = (f"Or boot {fallback} once, which has its module: nvkmctl boot try {fallback}"
               if fallback and k.state not in ("queued", "building") else "")
    # Once for each (kernel, cause): the agent shows a notice again only
    # when it differs from the one up (or the one the user dismissed).
    return Notice(slot=BOOT_SLOT, summary="Rebooting now would start without the NVIDIA driver",
                  body=lines(sentence(f"{k.release} boots next and has no working NVIDIA module: "
                                      f"{why}"), sentence(hint), sentence(instead)),
                  urgency=CRITICAL, icon="dialog-warning", timeout_ms=0, resident=True, log=log,
                  kernel=k.release)


# -- decisions -------------------------------------------------------------------

def next_boot(kernels: list[KernelStatus]) -> KernelStatus | None:
    """The kernel that boots next: the one the daemon marks as the boot
    loader's default (``boot_next``, where the daemon knows it), else the
    newest (the daemon lists kernels newest first, and that is what GRUB
    boots by default)."""
    for k in kernels:
        if getattr(k, "boot_next", False):
            return k
    return kernels[0] if kernels else None


def just_built(k: KernelStatus) -> bool:
    """"missing" right after a successful build: the daemon looks at the
    installed module again only after JobFinished, so for a moment its
    status lags behind; and were the module really gone, the daemon would
    queue a build at once (given a usable source)."""
    return k.state == "missing" and k.last_build is not None and k.last_build.result == "success"


def next_boot_of(status: DaemonStatus) -> KernelStatus | None:
    """The kernel the boot loader starts next, as the daemon read it
    (``status.next_boot``); the newest where it could not read one."""
    nb = status.next_boot
    if nb is not None and nb.kernel and not nb.guess:
        return next((k for k in status.kernels if k.release == nb.kernel), None)
    return next_boot(status.kernels)


def ready_fallback(status: DaemonStatus, besides: str) -> str:
    """The newest installed kernel with a ready module other than ``besides``."""
    return next((k.release for k in status.kernels if k.state == "ready" and k.release != besides), "")


def boot_at_risk(status: DaemonStatus, warned_for: str = "") -> KernelStatus | None:
    """The next-boot kernel if it has no working module.  A kernel whose
    build is queued or running is not at risk yet (the progress notification
    says nvkmd is on it) unless the warning is already up for it
    (``warned_for``): then it stays until the module is ready."""
    if status.next_boot is not None and status.next_boot.guard == "off":
        return None                 # boot.guard = "off": no warnings
    k = next_boot_of(status)
    if k is None or k.state == "ready" or (just_built(k) and not status.source.error):
        return None
    if k.state in NO_MODULE or k.release == warned_for:
        return k
    return None


def unseen_failures(status: DaemonStatus, seen: Iterable[str] | set[str]) -> list[Notice]:
    """Failures the daemon reports that are still failing and that the user
    has not been shown (``seen`` holds ``failure_key``s), newest kernel first."""
    out = []
    for k in status.kernels:
        lb = k.last_build
        if lb is None or lb.result != "failed" or k.state not in ("failed", "unsupported"):
            continue
        job = next((j for j in status.jobs if j.kernel == k.release and j.result == "failed"
                    and (j.log == lb.log if lb.log else abs(j.finished_at - lb.finished_at) < 1e-3)),
                   None)
        n = failure_notice(k.release, lb.cause, lb.hint, lb.log, job.id if job else 0)
        if n.seen_key not in seen:
            out.append(n)
    return out


class ProgressGate:
    """At most one progress update per kernel every ``min_interval_s``, and
    none that changes nothing: the daemon sends up to four a second, and a
    notification server is not a progress bar widget."""

    def __init__(self, min_interval_s: float = 1.0):
        self.min_interval_s = min_interval_s
        self._last: dict[str, tuple[float, str, int]] = {}

    def allow(self, kernel: str, phase: str, percent: int, now: float) -> bool:
        last = self._last.get(kernel)
        if last is not None and ((phase, percent) == last[1:] or now - last[0] < self.min_interval_s):
            return False
        self._last[kernel] = (now, phase, percent)
        return True

    def forget(self, kernel: str) -> None:
        self._last.pop(kernel, None)


def escape_markup(text: str) -> str:
    """For servers with body-markup: the body is a tiny XML subset, so a
    compiler message such as ``<linux/pci.h>`` must be escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
