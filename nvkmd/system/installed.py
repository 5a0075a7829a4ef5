"""What nvkmd installed for a kernel: the manifest beside its modules."""

from __future__ import annotations

import json

from nvkmd.system.kernels import Kernel
from nvkmd.system.source import Source

MANIFEST = "nvkmd.json"


def read_manifest(kernel: Kernel) -> dict | None:
    try:
        data = json.loads((kernel.nvkmd_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def module_is_current(kernel: Kernel, source: Source) -> bool:
    """nvkmd's modules for ``kernel`` were built from exactly ``source``."""
    m = read_manifest(kernel)
    if not m or m.get("version") != source.version or m.get("digest") != source.digest:
        return False
    return all(any(kernel.nvkmd_dir.glob(f"{name}.ko*")) for name in m.get("modules", []))
