"""The daemon's object on the bus: io.github.nvkmd.Manager1 at /io/github/nvkmd.

One raw message handler serves the interface, its properties and its
introspection, because it needs what dbus-fast's decorated interfaces do
not give: the caller's unique name (for polkit), and our own
InvalidArgument for a call with the wrong signature.  Core events become
signals and PropertiesChanged here, and nowhere else.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

import structlog
from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from nvkmd import __version__, api, limits
from nvkmd.bus import introspect, wire
from nvkmd.bus.auth import Authorizer
from nvkmd.bus.statuscache import StatusCache
from nvkmd.bus.throttle import PropertyState, Throttle
from nvkmd.errors import ErrorCode, NvkmdError, invalid
from nvkmd.verdict import PreflightFinished
from nvkmd.model import (CoreAPI, Event, JobFinished, JobProgress, JobQueued, NextBoot,
                         NextBootChanged, StateChanged)

log = structlog.get_logger("nvkmd.bus")

PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
INTROSPECTABLE_IFACE = "org.freedesktop.DBus.Introspectable"
_DBUS_ERR = "org.freedesktop.DBus.Error."


def validate(method: str, args: list[Any]) -> list[Any]:
    """Check a call's arguments before polkit is asked and the core sees
    them, with the core's own checks (``nvkmd.limits``): the signature is
    already right, this checks values.  Raises InvalidArgument."""
    if method == "ListJobs":
        limits.finished_arg(args[0])
    elif method == "Build":
        limits.kernel_arg(args[0])
    elif method == "Cancel":
        limits.job_id_arg(args[0])
    elif method == "Cleanup":
        limits.keep_arg(args[0])
    elif method == "GetLog":
        limits.job_id_arg(args[0], zero_ok=True)
        limits.kernel_arg(args[1])
        limits.lines_arg(args[2])
    elif method == "BootTry":
        limits.kernel_arg(args[0])
    return args


def _needs_auth(method: api.Method, args: list[Any]) -> bool:
    if method.name == "Cleanup":
        return bool(args[1])            # a dry run changes nothing
    return bool(method.action)


_WHAT = {"Build": "build modules", "Cancel": "cancel a job", "Cleanup": "remove modules",
         "Rescan": "ask for a rescan", "BootTry": "choose the kernel for the next boot",
         "SetBootGuard": "change the boot guard"}

_WHAT["Preflight"] = "test-build the NVIDIA modules for a kernel that is not installed"


def _percent(p: Any) -> int:
    return max(0, min(100, int(p)))


class ManagerService:
    def __init__(self, core: CoreAPI, bus: MessageBus):
        self.core = core
        self.bus = bus
        self.auth = Authorizer(bus)
        self.loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._tasks: set[asyncio.Task] = set()
        self._timers: dict[Any, asyncio.TimerHandle] = {}
        self._closed = False
        # GetLog answers one at a time, each once what was sent before has left (issue 16, P4).
        self._log_gate, self._last_sent = asyncio.Lock(), None
        interval = 1.0 / api.PROGRESS_RATE_HZ
        self.progress = Throttle(interval)
        self.status_cache = StatusCache(lambda: [wire.status(self.core.status())])
        initial = {"Version": __version__, "State": "starting", "CurrentJob": 0,
                   "Progress": ("", 0), "SourceVersion": "",
                   "NextBoot": NextBoot("", False, "unknown", "the daemon is starting")}
        try:
            st = core.status()
        except NvkmdError as e:   # not ready yet: StateChanged events will fill these in
            log.info("serving before the core is ready", reason=e.message)
        else:
            running = next((j for j in st.jobs if j.state == "running"), None)
            initial.update({
                "State": st.state,
                "CurrentJob": running.id if running else 0,
                "Progress": (running.phase, _percent(running.percent)) if running else ("", 0),
                "SourceVersion": st.source.version,
            })
            if st.next_boot is not None:
                initial["NextBoot"] = st.next_boot
        # NextBoot carries a build's percent: as rate-limited as Progress.
        self.props = PropertyState(initial, interval, throttled=frozenset({"Progress", "NextBoot"}))

    def close(self) -> None:
        self._closed = True
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()

    # -- sending ------------------------------------------------------------
    def _send(self, msg: Message) -> bool:
        try:
            fut = self.bus.send(msg)
            self._last_sent = fut
        except Exception as e:  # a value D-Bus cannot carry, or the bus is gone
            log.error("cannot send", member=msg.member, error=f"{type(e).__name__}: {e}")
            return False
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        return True

    def _reply(self, call: Message, signature: str = "", body: list[Any] | None = None) -> None:
        if call.flags & MessageFlag.NO_REPLY_EXPECTED:
            return
        if not self._send(Message.new_method_return(call, signature, body or [])):
            self._error(call, NvkmdError(ErrorCode.INTERNAL, "internal error: the reply could not "
                                         "be encoded (see the daemon's journal)"))

    def _error(self, call: Message, err: NvkmdError) -> None:
        if call.flags & MessageFlag.NO_REPLY_EXPECTED:
            return
        self._send(Message.new_error(call, api.error_name(err.code), wire.text(err.message)))

    def _std_error(self, call: Message, name: str, text: str) -> None:
        if not call.flags & MessageFlag.NO_REPLY_EXPECTED:
            self._send(Message.new_error(call, _DBUS_ERR + name, text))

    # -- incoming calls -----------------------------------------------------
    def handle(self, msg: Message) -> bool | None:
        """dbus-fast's message handler: True when we answered the message,
        None to let dbus-fast answer (Peer, unknown paths)."""
        if msg.message_type is not MessageType.METHOD_CALL or self._closed:
            return None
        if msg.path != api.OBJECT_PATH:
            if msg.interface == INTROSPECTABLE_IFACE and msg.member == "Introspect":
                xml = introspect.parent_xml(msg.path or "")
                if xml is not None:
                    self._reply(msg, "s", [xml])
                    return True
            if msg.interface == api.INTERFACE:
                self._std_error(msg, "UnknownObject", f"no object at {msg.path}; nvkmd's object "
                                f"is {api.OBJECT_PATH}")
                return True
            return None
        if msg.interface == PROPERTIES_IFACE:
            self._properties(msg)
            return True
        if msg.interface == INTROSPECTABLE_IFACE and msg.member == "Introspect":
            self._reply(msg, "s", [introspect.object_xml()])
            return True
        if msg.interface in (api.INTERFACE, None) and msg.member in api.METHODS:
            self._call(msg, api.METHODS[msg.member])
            return True
        if msg.interface == api.INTERFACE:
            self._std_error(msg, "UnknownMethod", f"{api.INTERFACE} has no method {msg.member}")
            return True
        return None

    def _call(self, msg: Message, method: api.Method) -> None:
        if msg.signature != method.in_signature:
            self._error(msg, invalid(f"{method.name} takes arguments of type "
                                     f"({method.in_signature}), not ({msg.signature})"))
            return
        args = list(msg.body)
        try:
            validate(method.name, args)
        except NvkmdError as e:
            self._error(msg, e)
            return
        if _needs_auth(method, args):
            task = self.loop.create_task(self._privileged(msg, method, args))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._run(msg, method, args)

    async def _privileged(self, msg: Message, method: api.Method, args: list[Any]) -> None:
        try:
            uid = await self.auth.check(msg, method.action, _WHAT.get(method.name, method.name))
        except NvkmdError as e:
            self._error(msg, e)
            return
        log.info("request", method=method.name, args=repr(args)[:200], sender=msg.sender, uid=uid)
        self._run(msg, method, args)

    def _run(self, msg: Message, method: api.Method, args: list[Any]) -> None:
        try:
            body = getattr(self, "_do_" + method.name)(*args)
            if asyncio.iscoroutine(body):     # work that must not block the loop
                task = self.loop.create_task(self._finish(msg, method, args, body))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return
        except Exception as e:
            self._failed(msg, method, args, e)
            return
        self.status_cache.answered(method.action)
        self._reply(msg, method.out_signature, body)

    async def _finish(self, msg: Message, method: api.Method, args: list[Any], body: Any) -> None:
        try:
            result = await body
        except Exception as e:
            self._failed(msg, method, args, e)
            return
        self.status_cache.answered(method.action)
        self._reply(msg, method.out_signature, result)

    def _failed(self, msg: Message, method: api.Method, args: list[Any], e: Exception) -> None:
        """Answer a method that raised (called while ``e`` is handled): our
        own errors as they are, anything else as INTERNAL, logged with its
        traceback, so that a bug costs one call, not the daemon."""
        if isinstance(e, NvkmdError):
            self._error(msg, e)
            return
        log.exception("internal error", method=method.name, args=repr(args)[:200])
        self._error(msg, NvkmdError(ErrorCode.INTERNAL, f"internal error in {method.name} "
                                    "(see the daemon's journal)"))

    # The methods: core call in, D-Bus body out.
    def _do_GetStatus(self) -> list:
        return self.status_cache.get()        # per state version (statuscache.py)

    def _do_ListKernels(self) -> list:
        return [wire.records(self.core.kernels())]

    def _do_ListJobs(self, finished: int) -> list:
        return [wire.records(self.core.jobs(finished))]

    def _do_Build(self, kernel: str, force: bool) -> list:
        return [[int(i) for i in self.core.build(kernel, bool(force))]]

    def _do_Cancel(self, job_id: int) -> list:
        self.core.cancel(job_id)
        return []

    async def _do_GetLog(self, job_id: int, kernel: str, lines: int) -> list:
        async with self._log_gate:      # 40 answers queued at once took the daemon to 400 MiB
            if self._last_sent is not None:     # dbus-fast writes in order
                await asyncio.wait([self._last_sent])
            path, tail = self.core.get_log(job_id, kernel, lines)
            return [wire.text(str(path)), [wire.text(line) for line in tail]]

    def _do_Cleanup(self, keep: int, execute: bool) -> list:
        return [[wire.text(str(p)) for p in self.core.cleanup(keep, bool(execute))]]

    async def _do_Rescan(self) -> list:
        await self.core.rescan_and_wait()
        return []

    async def _do_BootTry(self, kernel: str) -> list:
        return [wire.text(await self.core.boot_try(kernel))]

    def _do_SetBootGuard(self, mode: str) -> list:
        return [wire.text(self.core.set_boot_guard(mode))]

    def _do_Preflight(self, target: str) -> list:
        return [self.core.preflight(target)]

    def _do_GetCandidates(self) -> list:
        return [[wire.variant(c).value for c in self.core.candidates()]]

    # -- properties -----------------------------------------------------------
    def _prop_variant(self, name: str, value: Any = None) -> Variant:
        value = self.props.current[name] if value is None else value
        sig = api.PROPERTIES[name].signature
        if sig == "a{sv}":
            return Variant(sig, wire.record(value))
        return Variant(sig, list(value) if sig.startswith("(") else value)

    def _properties(self, msg: Message) -> None:
        member, sig, body = msg.member, msg.signature, msg.body
        expected = {"Get": "ss", "GetAll": "s", "Set": "ssv"}
        if member not in expected:
            self._std_error(msg, "UnknownMethod", f"{PROPERTIES_IFACE} has no method {member}")
            return
        if sig != expected[member]:
            self._std_error(msg, "InvalidArgs", f"{member} takes ({expected[member]}), not ({sig})")
            return
        iface = body[0]
        if iface not in (api.INTERFACE, ""):
            if member == "GetAll" and iface in (PROPERTIES_IFACE, INTROSPECTABLE_IFACE,
                                                "org.freedesktop.DBus.Peer"):
                self._reply(msg, "a{sv}", [{}])
            else:
                self._std_error(msg, "UnknownInterface", f"no properties of interface {iface}")
            return
        if member == "GetAll":
            self._reply(msg, "a{sv}", [{n: self._prop_variant(n) for n in api.PROPERTIES}])
            return
        name = body[1]
        if name not in api.PROPERTIES:
            self._std_error(msg, "UnknownProperty", f"{api.INTERFACE} has no property {name!r}")
        elif member == "Get":
            self._reply(msg, "v", [self._prop_variant(name)])
        else:
            self._std_error(msg, "PropertyReadOnly", f"property {name} is read-only")

    # -- events from the core -----------------------------------------------
    def on_event(self, event: Event) -> None:
        """The core's subscriber.  Safe to call from any thread."""
        if threading.get_ident() != self._thread:
            self.loop.call_soon_threadsafe(self.on_event, event)
            return
        if self._closed:
            return
        try:
            self._event(event)
        except Exception:
            # A bad event must not take the daemon down with it.
            log.exception("cannot publish event", event=repr(event)[:200])

    def _event(self, event: Event) -> None:
        self.status_cache.changed()           # whatever happened, GetStatus computes anew
        now = time.monotonic()
        if isinstance(event, JobQueued):
            j = event.job
            self._signal("JobQueued", [int(j.id), j.kernel, j.source_version])
        elif isinstance(event, JobProgress):
            value = (int(event.job_id), event.kernel, event.phase, _percent(event.percent))
            if self.progress.offer(event.job_id, value, now):
                self._signal("JobProgress", list(value))
            else:
                self._later(("job", event.job_id), self.progress.deadline(event.job_id),
                            lambda: self._flush_job(event.job_id))
            if event.job_id == self.props.current["CurrentJob"]:
                self._set_props({"Progress": (event.phase, _percent(event.percent))}, now)
        elif isinstance(event, JobFinished):
            # A held-back progress update is stale once the job has ended.
            self.progress.forget(event.job_id)
            timer = self._timers.pop(("job", event.job_id), None)
            if timer:
                timer.cancel()
            self._signal("JobFinished", [int(event.job_id), event.kernel, event.result,
                                         event.cause, event.hint, str(event.log)])
        elif isinstance(event, PreflightFinished):
            self._signal("PreflightFinished", [int(event.request_id),
                                               [wire.variant(r).value for r in event.results]])
        elif isinstance(event, NextBootChanged):
            self._set_props({"NextBoot": event.next_boot}, now)
        elif isinstance(event, StateChanged):
            self._set_props({"State": event.state, "CurrentJob": int(event.current_job),
                             "Progress": (event.phase, _percent(event.percent)),
                             "SourceVersion": event.source_version}, now)

    def _later(self, key: Any, when: float | None, fn: Callable[[], None]) -> None:
        if when is None or key in self._timers:
            return
        delay = max(0.0, when - time.monotonic())

        def fire() -> None:
            self._timers.pop(key, None)
            if not self._closed:
                fn()
        self._timers[key] = self.loop.call_later(delay, fire)

    def _flush_job(self, job_id: int) -> None:
        due, value = self.progress.take(job_id, time.monotonic())
        if due:
            self._signal("JobProgress", list(value))

    def _set_props(self, values: dict[str, Any], now: float) -> None:
        self._props_changed(self.props.update(values, now))
        self._later("props", self.props.deadline(), self._flush_props)

    def _flush_props(self) -> None:
        self._props_changed(self.props.flush(time.monotonic()))
        self._later("props", self.props.deadline(), self._flush_props)

    def _props_changed(self, changed: dict[str, Any]) -> None:
        if not changed:
            return
        self._send(Message.new_signal(
            api.OBJECT_PATH, PROPERTIES_IFACE, "PropertiesChanged", "sa{sv}as",
            [api.INTERFACE, {n: self._prop_variant(n, v) for n, v in changed.items()}, []]))

    def _signal(self, name: str, body: list[Any]) -> None:
        sig = api.SIGNALS[name]
        body = [wire.text(v) if isinstance(v, str) else v for v in body]
        self._send(Message.new_signal(api.OBJECT_PATH, api.INTERFACE, name, sig.signature, body))
