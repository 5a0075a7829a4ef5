"""What nvkmctl prints, as text.  Pure functions: model in, lines out.

The status box follows the "NVIDIA DKMS Status" box that nvctl users know:
a title, the daemon and the driver source, one line per kernel with its
module and headers, the running kernel marked, then the jobs.
"""

from __future__ import annotations

import dataclasses

from nvkmd.model import (
    ACTIVE_JOB_STATES,
    FINISHED_JOB_STATES,
    RESUMED,
    DaemonStatus,
    DriverInfo,
    JobInfo,
    KernelStatus,
    NextBoot,
)


@dataclasses.dataclass(frozen=True)
class Glyphs:
    ok: str
    bad: str
    busy: str
    rule: str
    fill: str
    empty: str


UNICODE = Glyphs("✓", "✗", "↻", "═", "█", "░")
ASCII = Glyphs("+", "x", "~", "=", "#", "-")


def glyphs_for(encoding: str | None) -> Glyphs:
    """Unicode marks where the terminal's encoding can show them."""
    try:
        "".join(dataclasses.astuple(UNICODE)).encode(encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return ASCII
    return UNICODE


def _title(text: str, g: Glyphs) -> list[str]:
    return [text, g.rule * 50, ""]


def kernel_line(k: KernelStatus, g: Glyphs = UNICODE) -> list[str]:
    mark = {"ready": g.ok, "queued": g.busy, "building": g.busy}.get(k.state, g.bad)
    if k.module_version and k.origin != "none":
        module = f"{k.origin} {k.module_version}"
    elif k.origin not in ("none", ""):
        module = k.origin
    else:
        module = "MISSING"
    line = f"  {mark} {k.release} [nvidia: {module}, headers: {g.ok if k.headers else g.bad}]"
    if k.running:
        line += " (running)"
    detail = {
        "queued": "queued",
        "building": f"building: {k.phase} {k.percent}%" if k.phase else "building",
        "waiting-for-headers": "waiting for headers" + (f" ({k.headers_package})"
                                                        if k.headers_package else ""),
        "unsupported": "not supported by this driver source",
        "missing": "no module",
    }.get(k.state)
    lb = k.last_build
    if k.state == "failed":
        detail = "build failed" + (f": {lb.cause}" if lb and lb.cause else "")
    if detail:
        line += f" {detail}"
    lines = [line]
    if k.state == "failed" and lb:
        if lb.hint:
            lines.append(f"      hint: {lb.hint}")
        if lb.log:
            lines.append(f"      log:  {lb.log}")
    return lines


def job_line(j: JobInfo) -> str:
    line = f"  #{j.id} {j.kernel} {j.state}"
    if j.state == "running" and j.phase:
        line += f": {j.phase} {j.percent}%"
    if j.reason == RESUMED:
        line += f" ({RESUMED})"
    elif j.force:
        line += " (forced)"
    if j.state == "failed" and j.cause:
        line += f": {j.cause}"
    return line


def next_boot_lines(nb: NextBoot, g: Glyphs = UNICODE) -> list[str]:
    """The next boot first (its line is `status`'s first), then how it was
    read and what the boot guard did."""
    out = [nb.line("—" if g is UNICODE else "-")]
    if nb.guess:
        out.append("  no boot loader configuration was recognised: the newest kernel is assumed")
    elif nb.loader:
        out.append(f"  {nb.loader}: {nb.source}" + (" (for the next boot only)" if nb.one_shot else ""))
    if nb.note:
        out.append(f"  note: {nb.note}")
    if nb.pinned:
        out.append(f"  boot guard ({nb.guard}) pointed the default at {nb.pinned}; undo: {nb.undo}")
    elif nb.guard_note:
        out.append(f"  boot guard ({nb.guard}): {nb.guard_note}")
    if nb.reason in ("failed", "unsupported") and not nb.pinned:
        out.append(f"  before rebooting: `nvkmctl logs -k {nb.kernel}`, or boot a ready kernel "
                   "once with `nvkmctl boot try <kernel>`")
    return out


def status_text(s: DaemonStatus, g: Glyphs = UNICODE) -> str:
    out = next_boot_lines(s.next_boot, g) + [""] if s.next_boot else []
    out += _title("NVIDIA Kernel Module Status (nvkmd)", g)
    out.append(f"{'Daemon:':<16}{s.state} (nvkmd {s.version})")
    src = s.source
    if src.path:
        out.append(f"{'Driver:':<16}{src.version or 'unknown'}")
        out.append(f"{'Source:':<16}{src.path}")
        out.append(f"{'Source Type:':<16}{src.kind or 'unknown'}")
    else:
        out.append(f"{'Driver:':<16}none found" + (f" ({src.error})" if src.error else ""))
    if src.path and src.error:
        out.append(f"{'Source Error:':<16}{src.error}")
    out.extend(driver_lines(s.driver, g))
    out.append("")
    out.append(f"Installed Kernels ({len(s.kernels)}):")
    for k in s.kernels:
        out.extend(kernel_line(k, g))
    if not s.kernels:
        out.append("  (none)")
    out.append("")
    if s.candidates:
        from nvkmd.cli.candidates import candidate_lines
        out.extend(candidate_lines(s.candidates, g) + [""])
    active = [j for j in s.jobs if j.state in ACTIVE_JOB_STATES]
    out.append(f"Jobs ({len(active)}):")
    out.extend(job_line(j) for j in active)
    if not active:
        out.append("  (none)")
    return "\n".join(out) + "\n"


def driver_lines(d: DriverInfo, g: Glyphs = UNICODE) -> list[str]:
    """Versions, firmware and Secure Boot (versions.driver_info)."""
    out = []
    if d.module_version:
        out.append(f"{'Module:':<16}{d.module_version} (for {d.kernel})")
        space = f"{d.userspace_version} (from {d.userspace_from})" if d.userspace_version \
            else "not found"
        mark = g.ok if d.userspace_version == d.module_version else g.bad
        out.append(f"{'User Space:':<16}{space}" + (f" {mark}" if d.userspace_version else ""))
        out.append(f"{'GSP Firmware:':<16}{d.firmware or 'unknown'}")
    sb = d.secure_boot
    if d.signing_key:
        sb += f", signing key {d.signing_key}"
    if d.module_signature:
        sb += f", module {d.module_signature}"
    out.append(f"{'Secure Boot:':<16}{sb}")
    if d.hint:
        out.append(f"{'Hint:':<16}{d.hint}")
    return out


def kernels_text(ks: list[KernelStatus], g: Glyphs = UNICODE) -> str:
    lines = [line for k in ks for line in kernel_line(k, g)]
    return "\n".join(lines or ["  (no kernels)"]) + "\n"


def jobs_text(js: list[JobInfo]) -> str:
    lines = []
    for j in js:
        line = job_line(j)
        if j.state in FINISHED_JOB_STATES and j.log:
            line += f" [log: {j.log}]"
        lines.append(line)
    return "\n".join(lines or ["  (no jobs)"]) + "\n"


def progress_bar(kernel: str, phase: str, percent: int, g: Glyphs = UNICODE, width: int = 30,
                 eta_s: float = -1.0) -> str:
    pct = max(0, min(100, percent))
    done = width * pct // 100
    bar = f"{kernel} {g.fill * done}{g.empty * (width - done)} {phase:<8} {pct:3d}%"
    return bar + (f"  about {eta_text(eta_s)} left" if eta_s >= 0 else "")


def eta_text(seconds: float) -> str:
    """``1:05`` or ``12s``: the time left, from the previous build of the same driver."""
    s = max(0, round(seconds))
    return f"{s // 60}:{s % 60:02d}" if s >= 60 else f"{s}s"


def finished_text(kernel: str, result: str, cause: str, hint: str, log: str) -> str:
    line = f"{kernel}: {result}"
    if cause:
        line += f": {cause}"
    lines = [line]
    if hint and result != "success":
        lines.append(f"    hint: {hint}")
    if log:
        lines.append(f"    log:  {log}")
    return "\n".join(lines) + "\n"


def cleanup_text(paths: list[str], keep: int, executed: bool, g: Glyphs = UNICODE) -> str:
    out = _title("NVIDIA Module Cleanup" + ("" if executed else " (dry run)"), g)
    out.append(f"Keeping: the {keep} most recent kernels, plus the running one")
    out.append("")
    if not paths:
        out.append("Nothing to remove.")
        return "\n".join(out) + "\n"
    out.append(f"{'Removed' if executed else 'To remove'} ({len(paths)}):")
    out.extend(f"  {g.bad} {p}" for p in paths)
    if not executed:
        out += ["", "Dry run - no changes made.", "Run with --execute to actually remove."]
    return "\n".join(out) + "\n"
