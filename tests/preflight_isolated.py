"""Run one preflight in a mount namespace where /lib/modules and dpkg's
database are read-only: whatever it did, it wrote nothing there.

    python preflight_isolated.py ROOT SOURCE_PATH TARGET [APT_CONFIG]

prints the result's JSON (or {"error": code, "message": ...}).  Used by
tests through ``aptrepo.isolated_preflight``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from nvkmd.build.preflight import Runner
from nvkmd.config import Config
from nvkmd.errors import NvkmdError
from nvkmd.paths import Paths
from nvkmd.system import source as sources
from nvkmd.system.candidates import Apt


def main() -> None:
    root, source_path, target = sys.argv[1:4]
    apt_config = Path(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] else None
    paths = Paths.build(root)
    config = Config(source_path=source_path)
    try:
        src = sources.discover(paths, config)
        res = asyncio.run(Runner(paths, config, Apt(apt_config), None).check(target, src))
        print(json.dumps(res.to_dict()))
    except NvkmdError as e:
        print(json.dumps({"error": e.code.value, "message": e.message}))


if __name__ == "__main__":
    main()
