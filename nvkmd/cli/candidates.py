"""`nvkmctl status`'s "Candidates" lines: plain rendering of the daemon's
preflight results, importing nothing of nvkmctl's own (render.py uses it)."""

from __future__ import annotations

from typing import Any


def candidate_lines(candidates: list[dict[str, Any]], g: Any) -> list[str]:
    """`nvkmctl status`'s "Candidates": each kernel the next upgrade would
    install, and whether the driver builds for it."""
    from nvkmd.verdict import PreflightResult
    out = [f"Candidates ({len(candidates)}, kernels the next upgrade would install):"]
    for d in candidates:
        r = PreflightResult.from_dict(d)
        state = d.get("state", r.verdict)
        what = f"{r.kernel or r.package}  {r.package} {r.package_version}".rstrip()
        if state == "ready":
            out.append(f"  {g.ok} {what}: ready, builds with NVIDIA {r.driver_version}")
        elif state == "will-break":
            out.append(f"  {g.bad} {what}: will break: {r.cause}")
            held = " (held by nvkmd)" if r.held else ""
            if r.hold:
                out.append(f"      keep it out: {r.hold}{held}")
            if r.log:
                out.append(f"      log: {r.log}")
        elif state == "unknown":
            out.append(f"  ? {what}: could not tell: {r.cause}")
        else:
            out.append(f"  {g.busy} {what}: {'being checked' if state == 'checking' else 'not checked yet'}")
    return out
