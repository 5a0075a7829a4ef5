"""Why a build failed, from its log.  Pure logic: text in, diagnosis out."""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    kind: str          # stable identifier, e.g. "kernel-api"
    cause: str         # short sentence for a person
    hint: str          # what to do about it
    first_error: str   # the first line of the log that says what went wrong


# Markers nvkmd itself writes into the log, so its own failures diagnose too.
MARK_TIMEOUT = "nvkmd: build timed out after"
MARK_KILLED = "nvkmd: build killed by signal"
MARK_CANCELLED = "nvkmd: build cancelled"
MARK_SIGN = "nvkmd: signing failed:"
MARK_DEPMOD = "nvkmd: depmod failed:"
MARK_HEADERS = "nvkmd: headers missing:"
MARK_COMPILER = "nvkmd: compiler missing:"
MARK_NOSPACE = "nvkmd: no space left:"
MARK_INSTALL = "nvkmd: install failed:"
MARK_CONFLICT = "nvkmd: conflict:"
MARK_DKMS_UNUSABLE = "nvkmd: dkms backend unusable:"
MARK_DKMS_EXIT = "nvkmd: dkms"          # "nvkmd: dkms <action> exited <status>: <meaning>"

# Exit statuses of Debian 12's dkms 3.0.x (/usr/sbin/dkms ``die N``), plus
# 21 (headers missing) from dkms >= 3.1, which 3.0.x reports as 1 with a
# message the headers-missing rule matches.  status -> (kind, meaning).
DKMS_EXIT: dict[int, tuple[str, str]] = {
    1: ("dkms-failed", "dkms failed"),
    2: ("dkms-source", "the module source directory is missing"),
    3: ("dkms-tree", "the module is not in the DKMS tree, or already built"),
    4: ("dkms-conf", "dkms.conf is missing or the arguments are wrong"),
    5: ("dkms-installed", "the module is already installed"),
    6: ("install-failed", "installing failed (no such kernel directory, or depmod problems)"),
    7: ("dkms-module-missing", "the build did not produce a module dkms.conf names"),
    8: ("dkms-conf", "dkms.conf is not valid"),
    9: ("dkms-failed", "no permission to write the DKMS tree"),
    10: ("build-failed", "the module build failed"),
    11: ("dkms-failed", "autoinstall failed"),
    21: ("headers-missing", "the kernel headers are missing"),
    77: ("unsupported", "BUILD_EXCLUSIVE in dkms.conf excludes this kernel"),
    101: ("install-failed", "the PRE_INSTALL script failed"),
}


def dkms_exit_line(action: str, status: int) -> str:
    """The log line nvkmd writes when ``dkms <action>`` fails; ``diagnose`` reads it back."""
    meaning = DKMS_EXIT.get(status, ("dkms-failed", "dkms failed"))[1]
    return f"{MARK_DKMS_EXIT} {action} exited {status}: {meaning}"

_Q = "['‘’\"`]"        # gcc quotes names with ' or ‘ depending on locale
_NAME = r"([A-Za-z_][A-Za-z0-9_]*)"

# (kind, regex, cause template, hint); the first rule that matches wins,
# so rules for conditions that cause other errors come first.
RULES: tuple[tuple[str, str, str, str], ...] = (
    ("timeout", re.escape(MARK_TIMEOUT) + r".*", "the build timed out",
     "the build took longer than build.timeout_s; raise it on a slow machine"),
    ("cancelled", re.escape(MARK_CANCELLED) + r".*", "the build was cancelled", "build it again when ready"),
    ("disk-full", r"(No space left on device|" + re.escape(MARK_NOSPACE) + r").*",
     "out of disk space", "free space under the cache, log and /lib/modules directories, then rebuild"),
    ("killed", r"(Killed signal terminated program.*|.*\bKilled\b.*|.*Out of memory.*|"
     + re.escape(MARK_KILLED) + r".*)",
     "the compiler was killed (out of memory?)", "lower build.jobs or free memory, then rebuild"),
    ("conflict", r"(" + re.escape(MARK_CONFLICT) + r".*|.*DKMS will not replace this module.*|"
     r".*is not newer than what is already found in kernel.*)",
     "another nvidia module is already installed for this kernel",
     "only one tool may own a kernel's nvidia module: remove the other one, or let it build"),
    ("dkms-unusable", re.escape(MARK_DKMS_UNUSABLE) + r".*",
     "DKMS cannot build this source",
     "register the source with `nvkmctl source init --dkms PATH`, or set build.backend = \"auto\""),
    ("headers-missing", r"(" + re.escape(MARK_HEADERS) + r".*|.*kernel source tree.*not found.*|"
     r".*kernel headers for kernel \S+ cannot be found.*|" + re.escape(MARK_DKMS_EXIT) + r" \w+ exited 21:.*|"
     r".*/build/Makefile: No such file.*|.*No targets specified and no makefile found.*)",
     "kernel headers are missing", "install the headers package for this kernel"),
    ("llvm-missing", r".*\b(clang|ld\.lld|llvm-[a-z]+)\b.*(not found|No such file).*",
     "the kernel was built with clang/lld, which is not installed",
     "install clang and lld (the versions the kernel names in CONFIG_CC_VERSION_TEXT)"),
    ("compiler-missing", r"(" + re.escape(MARK_COMPILER) + r".*|.*Unable to locate the compiler.*|"
     r".*\b(gcc[-0-9.]*|cc)\b.*(Command not found|not found|No such file or directory).*)",
     "the compiler the kernel was built with is not installed",
     "install the compiler named in the kernel's CONFIG_CC_VERSION_TEXT"),
    ("compiler-mismatch", r".*(compiler differs from the one used to build the kernel|"
     r"unrecognized command[- ]line option|Failed CC version check|The kernel was built by).*",
     "the compiler does not match the one the kernel was built with",
     "install the compiler version named in the kernel's CONFIG_CC_VERSION_TEXT"),
    ("unsupported", r".*(BUILD_EXCLUSIVE directive which does not match|"
     + re.escape(MARK_DKMS_EXIT) + r" \w+ exited 77:).*",
     "DKMS excludes this kernel: BUILD_EXCLUSIVE in dkms.conf does not match it",
     "the driver package does not support this kernel (BUILD_EXCLUSIVE_KERNEL/CONFIG in its "
     "dkms.conf); boot another kernel or use a driver release that supports it"),
    ("unsupported", r".*\*\*\* Failed .* sanity check.*",
     "the driver source refuses this kernel",
     "this driver version does not support this kernel; use a newer driver or another kernel"),
    ("gpl-only", r".*(GPL-incompatible module|uses GPL-only symbol).*",
     "the module uses a GPL-only kernel symbol",
     "use the open kernel modules (nvidia-open), or a driver release that supports this kernel"),
    ("modpost-undefined", r".*ERROR: modpost: .*undefined!.*",
     "modpost found an undefined symbol", "the headers do not match the kernel, or the driver "
     "source does not support it; reinstall the headers or update the driver"),
    ("signing-failed", re.escape(MARK_SIGN) + r".*", "signing the module failed",
     "check signing.key and signing.cert"),
    ("depmod-failed", re.escape(MARK_DEPMOD) + r".*", "depmod failed",
     "run depmod by hand to see why; the previous module was kept"),
    ("install-failed", re.escape(MARK_INSTALL) + r".*", "installing the module failed",
     "see the log; the previous module was kept"),
)

_API = (
    (rf"too (?:few|many) arguments to function {_Q}{_NAME}", "the arguments of {0}() changed"),
    (rf"implicit declaration of function {_Q}{_NAME}", "{0}() no longer exists"),
    (rf"{_Q}(?:struct |union )?([A-Za-z_][A-Za-z0-9_ ]*?){_Q} has no member named {_Q}{_NAME}",
     "struct {0} has no member {1} any more"),
    (rf"passing argument \d+ of {_Q}{_NAME}{_Q} from incompatible pointer type",
     "the signature of {0}() changed"),
    (rf"incompatible pointer type.*{_Q}{_NAME}", "the type of {0} changed"),
    (r"initialization of .* from incompatible pointer type", "a callback signature changed"),
)

_ERROR_LINE = re.compile(r"(\berror:|\bError \d+|^ERROR:|\*\*\*|^nvkmd: )")


def _first_error(lines: list[str]) -> str:
    for line in lines:
        if _ERROR_LINE.search(line) and "Error 1" not in line and "Error 2" not in line:
            return line.strip()
    for line in lines:
        if _ERROR_LINE.search(line):
            return line.strip()
    return ""


def diagnose(log: str) -> Diagnosis:
    lines = log.splitlines()
    for kind, pattern, cause, hint in RULES:
        rx = re.compile(pattern)
        for line in lines:
            if rx.search(line):
                return Diagnosis(kind, cause, hint, line.strip())
    for line in lines:
        if "error:" not in line:
            continue
        for pattern, what in _API:
            m = re.search(pattern, line)
            if m:
                names = [g.strip() for g in m.groups()]
                return Diagnosis(
                    "kernel-api",
                    f"the driver source does not support this kernel's API: {what.format(*names)}",
                    "this kernel changed an interface the driver uses; use a driver release "
                    "that supports it, or boot a kernel the driver supports",
                    line.strip())
    first = _first_error(lines)
    dkms = _dkms_exit(lines)
    if dkms:
        return Diagnosis(dkms[0], dkms[1], "read the log: DKMS's output and its make.log are in it",
                         first or dkms[2])
    return Diagnosis("unknown", "the build failed", "read the log for the first error", first)


_DKMS_EXIT_RE = re.compile(re.escape(MARK_DKMS_EXIT) + r" (\w+) exited (\d+):")


def _dkms_exit(lines: list[str]) -> tuple[str, str, str] | None:
    """(kind, cause, line) from nvkmd's record of a failed dkms command, when
    no rule above explained the failure better."""
    for line in lines:
        m = _DKMS_EXIT_RE.search(line)
        if m:
            kind, meaning = DKMS_EXIT.get(int(m.group(2)), ("dkms-failed", "dkms failed"))
            return kind, f"dkms {m.group(1)}: {meaning}", line.strip()
    return None
