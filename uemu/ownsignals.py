"""Signals to uemu itself: the leaving signals and the one timer.

From the first ptrace call on, SIGINT, SIGTERM and SIGHUP only record why uemu
leaves (the loop may be in the middle of a hit: raising there would leave a
thread in a slot); SIGALRM serves both ``--duration`` and the periodic look for
sites changed behind uemu's back.  What leaving and looking mean is the
session's; this module only turns signals into its two callbacks, and puts the
previous handlers back.  Handlers are Python's, so they run between bytecodes
of the main thread: elsewhere (a session in another thread) there are none.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

CHECK_INTERVAL = 1.0
"""Seconds between looks for sites and counters changed behind uemu's back."""

LEAVING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
WAKE_SIGNAL = signal.SIGURG
"""Sent by another thread of uemu (the jump path's ring reader) to the main thread,
whose handler then wakes the loop: only the tracing thread may use ptrace."""

_SignalHandler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None
"""What ``signal.signal`` returns and takes back (None: not set from Python)."""


class OwnSignals:
    """``leave(reason)`` at a leaving signal or the deadline; ``look()`` every
    ``CHECK_INTERVAL`` seconds.  Both must only record and wake: they run inside
    whatever the main thread was doing."""

    def __init__(self, leave: Callable[[str], None], look: Callable[[], None],
                 wake: Callable[[], None] | None = None):
        self._leave = leave
        self._look = look
        self._wake = wake
        """Called at ``WAKE_SIGNAL`` (``wake_from_another_thread``)."""
        self._old: dict[int, _SignalHandler] = {}
        self._deadline: float | None = None

    def install(self) -> None:
        """Installed once, in the main thread only (``restore`` undoes it)."""
        if threading.current_thread() is not threading.main_thread() or self._old:
            return
        for sig in LEAVING_SIGNALS:
            self._old[sig] = signal.signal(sig, self._on_leaving_signal)
        self._old[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_alarm)
        if self._wake is not None:
            self._old[WAKE_SIGNAL] = signal.signal(WAKE_SIGNAL, self._on_wake_signal)

    def wake_from_another_thread(self) -> bool:
        """Have the main thread call ``wake`` (a signal to it); False: no handler is
        installed (not the main thread, or not yet), nothing sent."""
        if WAKE_SIGNAL not in self._old:
            return False
        signal.pthread_kill(threading.main_thread().ident or 0, WAKE_SIGNAL)
        return True

    def _on_wake_signal(self, signum: int, frame: FrameType | None) -> None:
        assert self._wake is not None
        self._wake()

    def start_timer(self, duration: float | None) -> None:
        """One timer serves ``duration`` and the look for changes behind our back."""
        if not self._old:
            return  # not the main thread: no signals, no timer
        if duration is not None:
            self._deadline = time.monotonic() + duration
        self._arm_timer()

    def restore(self) -> None:
        """The timer off, then the handlers from before.  ``_old`` is emptied first: an
        alarm whose Python handler runs in between (it was caught before the timer went
        off) must not arm the timer again, or its next alarm would meet the default
        action and end the process (seen in the arm64 guest: "Alarm clock")."""
        old, self._old = self._old, {}
        if old:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in old.items():
            signal.signal(sig, handler)

    def _arm_timer(self) -> None:
        delay = CHECK_INTERVAL
        if self._deadline is not None:
            delay = min(delay, max(self._deadline - time.monotonic(), 1e-6))
        signal.setitimer(signal.ITIMER_REAL, delay)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if not self._old:
            return  # restored meanwhile: no new turn
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self._leave("duration")
            return
        self._look()
        self._arm_timer()

    def _on_leaving_signal(self, signum: int, frame: FrameType | None) -> None:
        self._leave(signal.Signals(signum).name)
