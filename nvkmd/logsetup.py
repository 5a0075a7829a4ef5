"""nvkmd's own logging: structlog events, to the journal or as key=value lines.

Under journald (systemd sets ``JOURNAL_STREAM`` to the device and inode of
the stream it gave us as stderr) each event is sent natively with
python3-systemd's ``journal.send``: its level as ``PRIORITY`` and every key
as a journal field ``NVKMD_<KEY>``, so ``journalctl -u nvkmd
NVKMD_KERNEL=<K>`` and ``journalctl -u nvkmd -p warning`` work.  Anywhere
else (a terminal, a test, a pipe) each event is one ``key=value`` line on
stderr, with a timestamp.  Under journald without python3-systemd the
lines carry a ``<N>`` syslog prefix, which journald reads as the priority.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from typing import Any, Callable

import structlog

# syslog(3) priorities journald filters on (journalctl -p).
PRIORITIES = {"debug": 7, "info": 6, "notice": 5, "warning": 4, "warn": 4, "error": 3,
              "exception": 3, "critical": 2, "fatal": 2}
_FIELD_BAD = re.compile(r"[^A-Z0-9_]")
_RESERVED = {"event", "level", "timestamp"}

_identifier = "nvkmd"      # SYSLOG_IDENTIFIER, and the prefix of fatal() lines


def under_journald(stream: Any = None) -> bool:
    """True when ``stream`` (default stderr) is the journal stream systemd
    announced; a JOURNAL_STREAM inherited by a child whose stderr was
    redirected does not count (see systemd.exec(5))."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    stream = stream or sys.stderr
    try:
        st = os.fstat(stream.fileno())
        return bool(ino) and (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (AttributeError, OSError, ValueError):
        return False


def field_name(key: str) -> str:
    """``kernel`` -> ``NVKMD_KERNEL``; anything but A-Z0-9_ becomes ``_``
    (journal field names allow nothing else, and at most 64 characters)."""
    return ("NVKMD_" + _FIELD_BAD.sub("_", key.upper()))[:64]


def journal_fields(event_dict: dict[str, Any]) -> dict[str, str]:
    """The journal entry for one event: MESSAGE, PRIORITY, NVKMD_* fields."""
    level = str(event_dict.get("level", "info")).lower()
    event = str(event_dict.get("event", ""))
    extra = {k: v for k, v in event_dict.items() if k not in _RESERVED and k != "exception"}
    message = " ".join([event, *(f"{k}={_text(v)}" for k, v in extra.items())])
    if event_dict.get("exception"):
        message += "\n" + str(event_dict["exception"])
    fields = {"MESSAGE": message, "PRIORITY": str(PRIORITIES.get(level, 6)),
              "SYSLOG_IDENTIFIER": _identifier, "NVKMD_EVENT": event}
    for k, v in extra.items():
        fields[field_name(k)] = _text(v)
    if event_dict.get("exception"):
        fields["NVKMD_EXCEPTION"] = str(event_dict["exception"])
    return fields


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class JournalLogger:
    """structlog's logger for the journal: the last processor hands it the
    event as a dict, and every level method sends it."""

    def __init__(self, send: Callable[..., None], fallback: Any):
        self._send = send
        self._fallback = fallback

    def msg(self, **fields: str) -> None:
        try:
            self._send(**fields)
        except OSError:
            # The journal went away (journald restarting): the stream may
            # still be there; better a line than nothing.
            print(f"<{fields['PRIORITY']}>{fields['MESSAGE']}", file=self._fallback, flush=True)

    debug = info = warning = warn = error = critical = exception = fatal = failure = msg


def _to_journal(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return journal_fields(event_dict)


def _syslog_prefix(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    level = str(event_dict.get("level", "info")).lower()
    event_dict["_prefix"] = f"<{PRIORITIES.get(level, 6)}>"
    return event_dict


def _journal_send() -> Callable[..., None] | None:
    try:
        from systemd import journal    # Debian's python3-systemd
    except ImportError:
        return None

    def send(**fields: str) -> None:
        # sendv, not send: send adds CODE_FILE/LINE/FUNC of its caller,
        # which would be this line for every event.
        journal.sendv(*(f"{k}={v}" for k, v in fields.items()))
    return send


def setup(verbose: bool = False, identifier: str | None = None) -> None:
    global _identifier
    # The program's name (nvkmd, nvkmd-agent) where it was started by it;
    # "python -m nvkmd.x" is still nvkmd.
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    _identifier = identifier or (prog if prog.startswith("nvkmd") else "nvkmd")
    level = logging.DEBUG if verbose else logging.INFO
    base: list = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level]
    journald = under_journald()
    send = _journal_send() if journald else None
    if send is not None:
        structlog.configure(
            processors=[*base, structlog.processors.format_exc_info, _to_journal],
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_factory=lambda *args: JournalLogger(send, sys.stderr),
            cache_logger_on_first_use=False,
        )
        return
    processors = list(base)
    if journald:
        processors.append(_syslog_prefix)
    else:
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=False))
    processors += [
        structlog.processors.format_exc_info,
        _KeyValue(),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


class _KeyValue:
    """Today's key=value line, behind the syslog prefix when there is one."""

    def __init__(self) -> None:
        self._render = structlog.processors.KeyValueRenderer(
            key_order=["timestamp", "level", "event"], drop_missing=True)

    def __call__(self, logger: Any, name: str, event_dict: dict[str, Any]) -> str:
        prefix = event_dict.pop("_prefix", "")
        return prefix + self._render(logger, name, event_dict)


def fatal(message: str, exc_info: bool = False, **fields: Any) -> None:
    """A fatal error of the program: ``err`` in the journal; elsewhere
    ``<prog>: message`` on stderr (and the traceback, for a crash)."""
    if under_journald() and _journal_send() is not None:
        structlog.get_logger().error(message, exc_info=exc_info, **fields)
        return
    if exc_info:
        traceback.print_exc()
    prefix = "<3>" if under_journald() else ""
    print(f"{prefix}{_identifier}: {message}", file=sys.stderr, flush=True)
