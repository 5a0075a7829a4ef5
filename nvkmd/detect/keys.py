"""The key of a build's inputs (kernel, source content, toolchain, headers)."""

from __future__ import annotations

import hashlib

from nvkmd.system.kernels import Kernel
from nvkmd.system.source import Source


def build_key(kernel: Kernel, source: Source) -> str:
    parts = [kernel.release, source.version, source.digest, kernel.toolchain.describe()]
    headers = kernel.headers
    for name in (".config", "Module.symvers"):
        try:
            st = (headers / name).stat() if headers else None
            parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}" if st else name)
        except OSError:
            parts.append(name)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]
