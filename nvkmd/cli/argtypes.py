"""argparse types for nvkmctl's arguments, with the daemon's own limits
(nvkmd.limits): a malformed argument is a usage error (exit 2) found
before anything is asked of the daemon, whether it runs or not."""

from __future__ import annotations

import argparse
from typing import Callable

from nvkmd import limits
from nvkmd.api import parse_bus
from nvkmd.errors import NvkmdError


def _checked(check: Callable[[object], object], convert: Callable[[str], object] = str
             ) -> Callable[[str], object]:
    def parse(text: str) -> object:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        try:
            return check(value)
        except NvkmdError as e:
            raise argparse.ArgumentTypeError(e.message) from None
    return parse


kernel = _checked(limits.kernel_arg)              # "" = every kernel
release = _checked(limits.check_release)         # one kernel, named
job_id = _checked(limits.job_id_arg, int)
log_job_id = _checked(lambda v: limits.job_id_arg(v, zero_ok=True), int)
lines = _checked(limits.lines_arg, int)
finished = _checked(limits.finished_arg, int)
keep = _checked(limits.keep_arg, int)


def bus(text: str) -> str:
    try:
        parse_bus(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text
