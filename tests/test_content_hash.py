"""The source fingerprint (source.content_hash) is recorded in every
installed module's manifest and compared on every boot (wait-ready) and
rescan: a faster way of computing it must give the same text, or an
upgrade of nvkmd would find every installed module stale and rebuild all."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from nvkmd.system.source import content_hash


def reference(tree: Path) -> str:
    """The fingerprint as it was first defined (and recorded in manifests)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            h.update(f"{p.relative_to(tree)}\0{st.st_size}\0{st.st_mode}\0{st.st_mtime_ns}\n"
                     .encode(errors="surrogateescape"))
    return h.hexdigest()[:16]


def test_same_fingerprint_as_first_defined(tmp_path):
    tree = tmp_path / "kernel-open"
    (tree / "nvidia" / "hal" / "deep").mkdir(parents=True)
    (tree / "Kbuild").write_text("obj-m += nvidia/\n")
    (tree / "nvidia" / "nv.c").write_text("int x;\n")
    (tree / "nvidia" / "hal" / "deep" / "a.h").write_text("")
    (tree / "nvidia" / "hal" / "deep" / "b.h").write_text("#define B 1\n")
    os.symlink("nv.c", tree / "nvidia" / "link.c")          # a file link: hashed as a link
    os.symlink("hal", tree / "nvidia" / "hal-link")          # a directory link: not followed
    (tree / os.fsdecode(b"odd-\xff-name.c")).write_text("")  # not UTF-8
    os.utime(tree / "Kbuild", ns=(1, 1_700_000_000_123_456_789))
    assert content_hash(tree) == reference(tree)
    (tree / "nvidia" / "nv.c").write_text("int y;\n")
    os.utime(tree / "nvidia" / "nv.c", ns=(1, 1))
    assert content_hash(tree) == reference(tree)
