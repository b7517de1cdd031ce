"""uemu's own signals: a leaving signal or the deadline becomes ``leave(reason)``,
the timer's other turns ``look()``, and the handlers from before come back.
Real signals to this process; nothing is faked."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from uemu import ownsignals
from uemu.ownsignals import OwnSignals


def _wait(done: list[str], limit: float = 5.0) -> None:
    end = time.monotonic() + limit
    while not done and time.monotonic() < end:
        time.sleep(0.005)


@pytest.mark.parametrize("sig", ownsignals.LEAVING_SIGNALS)
def test_a_leaving_signal_only_records_why(sig: signal.Signals) -> None:
    left: list[str] = []
    own = OwnSignals(left.append, lambda: None)
    own.install()
    try:
        os.kill(os.getpid(), sig)
        _wait(left)
    finally:
        own.restore()
    assert left == [sig.name]


def test_the_deadline_leaves_with_duration() -> None:
    left: list[str] = []
    own = OwnSignals(left.append, lambda: None)
    own.install()
    try:
        own.start_timer(0.05)
        _wait(left)
    finally:
        own.restore()
    assert left == ["duration"]


def test_the_timer_asks_for_a_look_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ownsignals, "CHECK_INTERVAL", 0.02)
    looks: list[str] = []
    own = OwnSignals(lambda reason: None, lambda: looks.append("look"))
    own.install()
    try:
        own.start_timer(None)
        end = time.monotonic() + 5
        while len(looks) < 3 and time.monotonic() < end:
            time.sleep(0.005)
    finally:
        own.restore()
    assert looks[:3] == ["look"] * 3


def test_restore_puts_back_the_handlers_and_stops_the_timer() -> None:
    before = {sig: signal.getsignal(sig) for sig in (*ownsignals.LEAVING_SIGNALS, signal.SIGALRM)}
    own = OwnSignals(lambda reason: None, lambda: None)
    own.install()
    own.start_timer(None)
    assert signal.getsignal(signal.SIGINT) != before[signal.SIGINT]
    own.restore()
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_outside_the_main_thread_nothing_is_installed() -> None:
    before = signal.getsignal(signal.SIGINT)
    own = OwnSignals(lambda reason: None, lambda: None)
    thread = threading.Thread(target=lambda: (own.install(), own.start_timer(0.01)))
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGINT) == before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_an_alarm_caught_while_restoring_arms_no_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """An alarm whose handler runs inside ``restore``, after the timer went off and
    before the handlers came back, must not arm the timer again: its next alarm would
    meet the handler from before (the default one ends the process)."""
    monkeypatch.setattr(ownsignals, "CHECK_INTERVAL", 0.02)
    setitimer = signal.setitimer

    def late_alarm(which: int, seconds: float, interval: float = 0.0) -> tuple[float, float]:
        old = setitimer(which, seconds, interval)
        if seconds == 0:
            os.kill(os.getpid(), signal.SIGALRM)  # its handler runs at the next bytecode
        return old

    caller_handler = signal.signal(signal.SIGALRM, lambda signum, frame: None)
    own = OwnSignals(lambda reason: None, lambda: None)
    own.install()
    own.start_timer(None)
    monkeypatch.setattr(signal, "setitimer", late_alarm)
    try:
        own.restore()
        armed = signal.getitimer(signal.ITIMER_REAL)
    finally:
        setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, caller_handler)
    assert armed == (0.0, 0.0)
