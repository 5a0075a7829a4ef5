"""Pure detection logic: the debouncer, event relevance, the diff between
two scans, the plan, kernel states, the notify STATUS line and boot choice."""

from __future__ import annotations

import pytest

from nvkmd.inspect.boot import grub_choice, parse_grub_default, systemd_boot_choice
from nvkmd.daemon.requests import kernel_state
from nvkmd.detect.diff import Change, diff
from nvkmd.detect.plan import ActiveJob, PastJob, plan
from nvkmd.detect.snapshot import KernelScan, Snapshot, SourceScan
from nvkmd.watch.debounce import Debouncer
from nvkmd.watch.events import WatchEvent, lock_event, relevant
from nvkmd.model import JobInfo
from nvkmd.daemon.sdnotifier import status_line, watchdog_interval


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# -- the debouncer ---------------------------------------------------------------

def test_debouncer_fires_after_quiet_time_and_each_event_resets_it():
    c = Clock()
    d = Debouncer(2.0, max_delay_s=100, clock=c)
    assert d.deadline() is None and d.take() is None and not d.pending
    d.poke()
    assert d.pending and d.deadline() == 1002.0
    c.t = 1001.5
    assert d.take() is None
    d.poke()                       # resets the quiet time
    assert d.deadline() == 1003.5
    c.t = 1003.4
    assert d.take() is None
    c.t = 1003.5
    assert d.take() is False       # due, an ordinary rescan
    assert not d.pending and d.take() is None


def test_debouncer_a_steady_stream_cannot_postpone_for_ever():
    c = Clock()
    d = Debouncer(1.0, max_delay_s=5.0, clock=c)
    d.poke()
    fired_at = None
    for _ in range(100):
        c.t += 0.5
        if d.take() is not None:
            fired_at = c.t
            break
        d.poke()
    assert fired_at == 1005.0


def test_debouncer_remembers_full_until_taken_and_now_skips_the_quiet_time():
    c = Clock()
    d = Debouncer(2.0, clock=c)
    d.poke(full=True)
    d.poke()
    c.t += 2
    assert d.take() is True
    d.poke()
    c.t += 2
    assert d.take() is False        # the full flag was consumed
    d.poke(now=True)
    assert d.take() is False        # due at once
    c.t += 1
    d.poke()
    d.poke(now=True)
    assert d.deadline() == c.t


def test_default_max_delay_is_never_shorter_than_the_quiet_time():
    d = Debouncer(3.0, max_delay_s=1.0)
    assert d.max_delay_s == 3.0
    assert Debouncer(2.0).max_delay_s == 10.0


# -- which events matter -----------------------------------------------------------

def ev(tag: str, name: str, *flags: str) -> WatchEvent:
    return WatchEvent(tag, f"/x/{name}", name, frozenset(flags))


@pytest.mark.parametrize("event, want", [
    (ev("modules", "6.1.0-47-amd64", "create", "isdir"), True),
    (ev("modules", ".storm-1", "create"), False),           # a file that is no kernel
    (ev("kernel", "build", "create"), True),
    (ev("kernel", "source", "delete"), True),
    (ev("kernel", "modules.dep", "moved_to"), False),       # depmod, after our install
    (ev("kernel", "updates", "create", "isdir"), False),    # our install
    (ev("kernel", "", "self_gone"), True),
    (ev("dpkg", "lock-frontend", "close_write"), True),
    (ev("dpkg", "status", "moved_to"), True),
    (ev("dpkg", "status-new", "close_write"), False),
    (ev("pacman", "db.lck", "delete"), True),
    (ev("pacman", "db.lck", "create"), False),
    (ev("pacman-local", "linux-headers-6.8-1", "create", "isdir"), True),
    (ev("rpm", ".rpm.lock", "close_write"), True),
    (ev("rpm", "rpmdb.sqlite-wal", "close_write"), False),  # our own `rpm -q`
    (ev("source", "version.mk", "close_write"), True),
    (ev("src", "nvidia-open-kernel.tar.xz", "moved_to"), True),
    (WatchEvent("overflow", "", "", frozenset({"overflow"})), True),
])
def test_relevance(event, want):
    assert relevant(event) is want


def test_lock_events_are_the_ends_of_transactions():
    assert lock_event(ev("dpkg", "lock-frontend", "close_write"))
    assert lock_event(ev("dpkg", "lock", "close_write"))
    assert not lock_event(ev("dpkg", "status", "close_write"))
    assert lock_event(ev("pacman", "db.lck", "delete"))
    assert not lock_event(ev("pacman", "db.lck", "create"))
    assert lock_event(ev("rpm", ".rpm.lock", "close_write"))
    assert not lock_event(ev("modules", "lock", "create"))


# -- diff and plan -------------------------------------------------------------------

def ks(release: str, headers: bool = True, current: bool = False, key: str = "k") -> KernelScan:
    return KernelScan(release, headers, "", current, key if headers else "", "none", "")


def snap(*kernels: KernelScan, version: str = "535.1", digest: str = "d1") -> Snapshot:
    src = SourceScan("/usr/src/x", version, digest, "git") if version else SourceScan(error="none found")
    return Snapshot({k.release: k for k in kernels}, src)


def test_diff_names_every_change():
    a = snap(ks("6.1.0-1"), ks("6.1.0-2", headers=False), ks("6.1.0-3"))
    b = snap(ks("6.1.0-2"), ks("6.1.0-3", headers=False), ks("6.1.0-4"), version="535.2", digest="d2")
    assert diff(a, b) == [
        Change("kernel-removed", "6.1.0-1"),
        Change("headers-added", "6.1.0-2"),
        Change("headers-removed", "6.1.0-3"),
        Change("kernel-added", "6.1.0-4"), Change("headers-added", "6.1.0-4"),
        Change("source-changed", old="535.1 (d1)", new="535.2 (d2)"),
    ]
    assert diff(b, b) == []
    # From nothing: every kernel is new, the source is not a "change".
    assert diff(None, a) == [Change("kernel-added", "6.1.0-1"), Change("headers-added", "6.1.0-1"),
                             Change("kernel-added", "6.1.0-2"), Change("kernel-added", "6.1.0-3"),
                             Change("headers-added", "6.1.0-3")]
    # Same version, other content (a patched tree) is a change too.
    assert diff(a, snap(*a.kernels.values(), digest="d9"))[0].kind == "source-changed"


def test_plan_queues_kernels_with_headers_whose_module_is_stale():
    s = snap(ks("6.1.0-9"), ks("6.1.0-10", current=True), ks("6.1.0-11", headers=False), ks("6.1.0-12"))
    p = plan(s, [], {}, diff(None, s))
    assert p.add == [("6.1.0-12", "kernel added: 6.1.0-12"), ("6.1.0-9", "kernel added: 6.1.0-9")]
    assert p.drop == []


def test_plan_is_idempotent_with_active_jobs():
    s = snap(ks("6.1.0-9"))
    p = plan(s, [ActiveJob(1, "6.1.0-9", "535.1", False)], {}, [])
    assert p.add == [] and p.drop == []


def test_plan_drops_jobs_of_removed_kernels_removed_headers_and_old_sources():
    s = snap(ks("6.1.0-2", headers=False), ks("6.1.0-3"))
    active = [ActiveJob(1, "6.1.0-1", "535.1", False), ActiveJob(2, "6.1.0-2", "535.1", True),
              ActiveJob(3, "6.1.0-3", "535.0", False)]
    p = plan(s, active, {}, [])
    assert p.drop == [(1, "kernel removed"), (2, "headers removed"),
                      (3, "superseded by source version 535.1")]
    assert p.add == [("6.1.0-3", "module missing or out of date")]


def test_plan_without_a_source_drops_everything_and_queues_nothing():
    s = snap(ks("6.1.0-3"), version="")
    p = plan(s, [ActiveJob(3, "6.1.0-3", "535.0", False)], {}, [])
    assert p.add == [] and p.drop == [(3, "no driver source: none found")]


def test_plan_does_not_retry_a_failed_pair_until_its_inputs_change():
    s = snap(ks("6.1.0-3", key="k1"))
    past = {("6.1.0-3", "535.1"): PastJob("failed", "k1")}
    assert plan(s, [], past, []).add == []
    # New headers (or a patched source): another key, another try.
    assert plan(snap(ks("6.1.0-3", key="k2")), [], past, []).add == \
        [("6.1.0-3", "module missing or out of date")]
    # A dropped job holds nothing back.
    assert plan(s, [], {("6.1.0-3", "535.1"): PastJob("cancelled", "")}, []).add != []
    # A new source version is a new pair.
    assert plan(snap(ks("6.1.0-3", key="k1"), version="535.2"), [], past, []).add != []
    # The kernel (or its headers) came back since: tried again, also after a success
    # (its modules may have been cleaned up meanwhile)...
    back = [Change("headers-added", "6.1.0-3")]
    assert plan(s, [], past, back).add == [("6.1.0-3", "headers added: 6.1.0-3")]
    assert plan(s, [], {("6.1.0-3", "535.1"): PastJob("success", "k1")}, back).add != []
    # ...but the first scan after a start finds every kernel "added": no retry then.
    assert plan(s, [], past, diff(None, s), initial=True).add == []


# -- kernel state ---------------------------------------------------------------------

def job(state: str, result: str = "") -> JobInfo:
    return JobInfo(1, "6.1.0-3", "535.1", state, result=result)


def test_kernel_state():
    failed = (job("failed", "failed"), "kernel-api", "k1")
    refused = (job("failed", "failed"), "unsupported", "k1")
    assert kernel_state(True, False, "k1", job("running"), failed) == "building"
    assert kernel_state(True, True, "k1", job("queued"), None) == "queued"
    assert kernel_state(True, True, "k1", None, failed) == "ready"
    assert kernel_state(False, True, "", None, None) == "ready"     # built, headers gone since
    assert kernel_state(False, False, "", None, None) == "waiting-for-headers"
    assert kernel_state(True, False, "k1", None, failed) == "failed"
    assert kernel_state(True, False, "k1", None, refused) == "unsupported"
    assert kernel_state(True, False, "k2", None, failed) == "missing"   # inputs changed since
    assert kernel_state(True, False, "k1", None, None) == "missing"


# -- notify -----------------------------------------------------------------------------

def test_status_line_is_one_ascii_line():
    assert status_line("idle", ready=3, total=3) == "idle: 3 kernels ready"
    assert status_line("idle", ready=1, total=1) == "idle: 1 kernel ready"
    assert status_line("idle", ready=1, total=3, failed=1) == "idle: 1 kernel ready of 3, 1 failed"
    assert status_line("building", kernel="6.1.0-47-amd64", phase="compile", percent=45) == \
        "building 6.1.0-47-amd64: compile 45%"
    assert status_line("building", kernel="6.1.0-47-amd64", phase="link", percent=97, queued=2) == \
        "building 6.1.0-47-amd64: link 97% (2 more queued)"
    assert status_line("waiting-for-lock", waiting_for="dpkg lock /var/lib/dpkg/lock (pid 7)") == \
        "waiting for dpkg lock /var/lib/dpkg/lock (pid 7)"
    weird = status_line("building", kernel="6.1\u2013x\nSTATUS=oops", phase="compile", percent=1)
    assert weird.isascii() and "\n" not in weird


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}, pid=5) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "5"}, pid=5) == 0.1
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "6"}, pid=5) is None


# -- the boot loader's choice ------------------------------------------------------------

RELEASES = ["6.1.0-47-amd64", "6.1.0-4-amd64", "6.1.0-56-amd64"]


def test_grub_default_and_saved_entry():
    assert parse_grub_default("GRUB_TIMEOUT=5\n") == "0"
    assert grub_choice("GRUB_DEFAULT=0\n", "", RELEASES) is None
    assert grub_choice('GRUB_DEFAULT="gnulinux-advanced-x>gnulinux-6.1.0-47-amd64-advanced-x"\n',
                       "", RELEASES) == "6.1.0-47-amd64"
    env = "# GRUB Environment Block\nsaved_entry=Debian GNU/Linux, with Linux 6.1.0-47-amd64\n###"
    assert grub_choice("GRUB_DEFAULT=saved\n", env, RELEASES) == "6.1.0-47-amd64"
    assert grub_choice("GRUB_DEFAULT=saved\n", "", RELEASES) is None


def test_systemd_boot_default_glob():
    entries = {"debian-6.1.0-47-amd64": "title Debian\nversion 6.1.0-47-amd64\n",
               "debian-6.1.0-56-amd64": "title Debian\nlinux /vmlinuz-6.1.0-56-amd64\n"}
    assert systemd_boot_choice("timeout 3\ndefault debian-6.1.0-47-amd64.conf\n", entries,
                               RELEASES) == "6.1.0-47-amd64"
    assert systemd_boot_choice("default debian-*\n", entries, RELEASES) == "6.1.0-56-amd64"
    assert systemd_boot_choice("timeout 3\n", entries, RELEASES) is None
