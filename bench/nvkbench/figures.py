"""Every figure: (number, name, anchor, function), in the order they run.

P1 runs last: it is the one that reinstalls a package on the real system.
"""

from __future__ import annotations

from . import fig_build

FIGURES = [
    (2, fig_build.P2, "raw make+copy+depmod", fig_build.p2),
    (3, fig_build.P3, "full build", fig_build.p3),
]
