"""The adaptive quiet period (issue 16, P10), with an injected clock: short
when no package manager is seen, the configured one while one is at work
or a bulk file operation is going on.  That no build starts while a
package manager holds its lock is the scanner's wait, not the quiet
period's: tests/test_daemon_pkgmgr.py proves it on a real daemon."""

from __future__ import annotations

from nvkmd.watch.debounce import CALM_S, Debouncer


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_calm_machine_looks_after_the_short_quiet_period():
    c = Clock()
    d = Debouncer(2.0, clock=c, calm_s=CALM_S)
    d.poke()
    assert not d.busy() and d.deadline() == c.t + CALM_S
    c.t += CALM_S - 0.01
    assert d.take() is None
    c.t += 0.02
    assert d.take() is False


def test_package_manager_activity_keeps_the_long_quiet_period_for_a_while():
    c = Clock()
    d = Debouncer(2.0, clock=c, calm_s=CALM_S)
    d.activity()                         # a dpkg file changed, or a lock holder was seen
    c.t += 1.0
    d.poke()
    assert d.busy() and d.deadline() == c.t + 2.0
    c.t += 1.0
    assert d.take() is None              # calm would have fired here
    c.t += 1.01
    assert d.take() is False
    # Long after the last activity, calm again.
    c.t += Debouncer.BUSY_FOR_S
    d.poke()
    assert not d.busy() and d.deadline() == c.t + CALM_S


def test_a_bulk_operation_is_not_cut_short():
    """A tree copied by hand: once the burst is big, the long quiet period."""
    c = Clock()
    d = Debouncer(2.0, clock=c, calm_s=CALM_S)
    for _ in range(Debouncer.BULK_EVENTS):
        d.poke()
        c.t += 0.01
    assert d.busy() and d.deadline() == c.t - 0.01 + 2.0
    c.t += 1.0
    assert d.take() is None
    c.t += 1.0
    assert d.take() is False
    d.poke()                             # the next burst starts small again
    assert not d.busy()


def test_never_longer_than_configured_and_not_adaptive_without_calm():
    c = Clock()
    d = Debouncer(0.1, clock=c, calm_s=CALM_S)
    d.poke()
    assert d.deadline() == c.t + 0.1     # debounce_s below CALM_S wins
    d = Debouncer(2.0, clock=c)          # calm_s not given: the old fixed behaviour
    d.poke()
    assert d.busy() and d.deadline() == c.t + 2.0
    d = Debouncer(2.0, clock=c, calm_s=CALM_S)
    d.poke(now=True)
    assert d.deadline() == c.t
