"""Every figure: (number, name, anchor, function), in the order they run.

P1 runs last: it is the one that reinstalls a package on the real system.
"""

from __future__ import annotations

from . import fig_apt, fig_build, fig_preflight, fig_react, fig_service, fig_storm

FIGURES = [
    (2, fig_build.P2, "raw make+copy+depmod", fig_build.p2),
    (3, fig_build.P3, "full build", fig_build.p3),
    (4, fig_service.P4, "a bare idle Python", fig_service.p4),
    (5, fig_service.P5, "dkms status", fig_service.p5),
    (6, fig_service.P6, "dkms autoinstall with nothing to do", fig_service.p6),
    (7, fig_storm.P7, "one kernel arriving on a calm system", fig_storm.p7),
    (8, fig_service.P8, "the bus's own GetId", fig_service.p8),
    (9, fig_preflight.P9, "installing the kernel, then its build", fig_preflight.p9),
    (10, fig_react.P10, "the configured quiet period", fig_react.p10),
    (1, fig_apt.P1, "apt-get with DKMS building inside it", fig_apt.p1),
]
