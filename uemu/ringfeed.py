"""Hits without a stop reach the session's handlers: a reader thread, and one time order.

The session's loop blocks in waitpid, and a jumped site never makes a stop, so ring
events cannot wait for the loop.  A reader thread drains the rings (``JumpPath.drain``)
as soon as a producer wakes it (the ring's futex) or at least every ``poll_ns``; its
events wait in a sorted list for ``window_ns`` (records of several threads and
processes finish in any order) and leave it in timestamp order (CLOCK_MONOTONIC on
both paths: in the target the vDSO's, or the CPU's counter converted between pairs
taken from it (runtime.c, now_ns); time.monotonic_ns in uemu).  The trap path's
events are handed out by the loop at their stop, at once (a handler may still read the
stopped thread's memory); ``before`` first drains the rings and hands out every older
ring event.  All under ``lock``, by whichever thread holds it: the reader, or the loop.
So handlers see events in time order, one at a time, from one thread at a time.

The order is exact for events that reach uemu within the window of their hit; a thread
descheduled in the middle of a hit for longer (its record is finished late) comes out
late, still in its own thread's order.  Counting alone (``--count``: no event) needs no
order and is delivered at once.

``on_ready`` is called from the reader thread after a batch is delivered, for a session
whose consumer lives in the loop's thread (``Session.events()``): it must wake the loop
without ptrace (only the tracing thread may ptrace), e.g. ``signal.pthread_kill`` of the
main thread with a signal whose handler interrupts a tracee.
"""

from __future__ import annotations

import bisect
import gc
import sys
import threading
import time
from collections.abc import Callable, Iterator
from operator import itemgetter

from .events import Event
from .uprobes import Consumer

RingEvent = tuple[int, Consumer, Event | str | None]
"""A ring event: its time (0 for one counted only), consumer, and the event, or its line
(the reporter writes nothing else: ``Reporter.line_shape``), or None (counted only)."""
Take = Callable[[list[RingEvent]], None]
"""What a drain calls for each batch of ring events (``RingFeed._take``): all counted
only, or all events (a session decodes every hit or none)."""
Deliver = Callable[[Iterator[RingEvent]], None]
"""Hands out the ring events of the iterator, in its order (one call per batch, not per
event: it runs for every event); on an exception, those it had not taken yet are left in
the iterator."""
DEFAULT_WINDOW_NS = 20_000_000
DEFAULT_POLL_NS = 100_000_000
"""The reader looks at least this often (and tells producers it is alive: the heartbeat)."""
NEVER = 1 << 64
"""Later than any CLOCK_MONOTONIC time."""
FLUSH_EVERY = 4096
"""Events taken in a drain before it looks for some old enough to hand out."""
BATCH_SLEEP_S = 0.001
"""After a busy drain the reader sleeps this long before draining again rather than be
woken by every record (the futex wake costs the hitting thread a system call)."""
SWITCH_INTERVAL_S = 0.0002
"""The interpreter's switch interval while a reader runs (its default is 5 ms)."""
FULL_COLLECTION_EVERY = 100
"""While a reader runs, the collector's full passes come after this many passes of its
middle generation (CPython's default: 10)."""


class _ReaderSettings:
    """The interpreter's settings while any reader thread runs, the caller's back after:
    a short switch interval, and the collector's full passes ten times rarer.
    Counted, for sessions side by side.

    The switch interval: a reader kept busy by a fast producer holds the GIL in 5 ms
    turns, and the tracing thread needs it back after every ptrace or waitpid call, so
    each of them took up to 5 ms (measured at leaving: 2 231 ptrace requests in 5.7 s,
    moving 7 threads out of a busy jump path too late).

    The full passes: events waiting for their window (a burst's, every one of them: 270 000
    in bench 100000) outlive the young generations, and each full pass walks them all
    to free nothing (they hold no cycle: they go by their counts); they took 0.65 s of
    2.3 s in ``uemu run --json`` of bench 100000 (gc.callbacks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._interval = 0.0
        self._thresholds = (0, 0, 0)

    def __enter__(self) -> None:
        with self._lock:
            if not self._users:
                self._interval = sys.getswitchinterval()
                sys.setswitchinterval(min(self._interval, SWITCH_INTERVAL_S))
                self._thresholds = gc.get_threshold()
                young, middle, full = self._thresholds
                gc.set_threshold(young, middle, max(full, FULL_COLLECTION_EVERY))
            self._users += 1

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self._users -= 1
            if not self._users:
                sys.setswitchinterval(self._interval)
                gc.set_threshold(*self._thresholds)


_reading = _ReaderSettings()
_TIME = itemgetter(0)


class RingFeed:
    def __init__(self, drain: Callable[[Take], int], wait: Callable[[int], None], deliver: Deliver, *,
                 window_ns: int = DEFAULT_WINDOW_NS, poll_ns: int = DEFAULT_POLL_NS,
                 on_ready: Callable[[], None] | None = None, on_error: Callable[[], None] | None = None,
                 wake: Callable[[], None] | None = None):
        self._drain = drain
        self._wait = wait
        self._wake = wake
        """Ends a ``wait`` under way: ``stop`` does not wait out the poll."""
        self._deliver = deliver
        self.window_ns = window_ns
        self.poll_ns = poll_ns
        self.on_ready = on_ready
        self.on_error = on_error
        """Called from the reader thread when it ends early (it failed): the loop
        must notice, and ``stop`` raises the error in its thread."""
        self.lock = threading.RLock()
        """Held while handlers run; the session holds it to deliver or change its own state."""
        self._waiting: list[RingEvent] = []
        """Ring events not handed out yet: in time order up to ``_sorted``, then as taken
        since (time, then arrival, which stable sorts keep: one thread's records in the
        order of its hits)."""
        self._sorted = 0
        self._newest = 0
        """The newest ring event's time so far."""
        self._flush_at = FLUSH_EVERY
        self._until = NEVER
        """While ``before`` drains: its trap hit's time, which no ring event handed out
        during the drain may be younger than."""
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        """What ended the reader thread early (re-raised by ``stop``)."""

    # ---- the two ways in ----------------------------------------------------------------

    def before(self, ts_ns: int) -> None:
        """A hit of the trap path made at ``ts_ns`` is about to be handed out (by the
        caller, holding ``lock``): the ring's hits made before it go first."""
        with self.lock:
            self._until = ts_ns  # nothing younger goes out before it while draining
            try:
                self._drain(self._take)
            finally:
                self._until = NEVER
            self.flush(ts_ns)

    def _take(self, batch: list[RingEvent]) -> None:
        """Ring events: counted at once when they carry nothing, else in their time's turn.
        A long drain (a reader far behind) hands out, as it goes, what is older than the
        window before the newest event taken: the waiting list holds about a window of
        events, not a whole ring's (their memory, longer merges, the collector's walks over
        them, and nothing handed out until the drain ends)."""
        if not batch:
            return
        if batch[0][2] is None:
            self._deliver(iter(batch))
            return
        waiting = self._waiting
        waiting += batch
        self._newest = max(self._newest, max(map(_TIME, batch)))
        if len(waiting) >= self._flush_at:
            self.flush(min(self._newest - self.window_ns, self._until))

    # ---- the reader thread ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="uemu-ring-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with _reading:
            self._read()

    def _read(self) -> None:
        try:
            while not self._stopping.is_set():
                with self.lock:
                    got = self._drain(self._take)
                delivered = self.flush(time.monotonic_ns() - self.window_ns)
                if delivered and self.on_ready is not None:
                    self.on_ready()
                if got:
                    time.sleep(BATCH_SLEEP_S)
                else:
                    self._wait(self.window_ns if self._waiting else self.poll_ns)
        except BaseException as err:  # noqa: BLE001  (reported by stop(), in the loop's thread)
            self.error = err
            if self.on_error is not None:
                self.on_error()

    def flush(self, before_ns: int | None = None) -> int:
        """Deliver, in time order, every waiting event older than ``before_ns`` (all of
        them when None); returns how many.

        Why a sorted list, not a heap: a heap's push and pop cost a Python call and a
        climb each, a quarter of the reader's time at a record per 50 ns (py-spy); the
        events taken since the last flush are mostly in time order already (a ring's
        records come in the order they were reserved), and list.sort sorts such runs in
        C in about one pass."""
        with self.lock:
            waiting = self._waiting
            self._sort(waiting)
            cut = len(waiting) if before_ns is None else bisect.bisect_right(waiting, before_ns, key=_TIME)
            ready = waiting[:cut]
            del waiting[:cut]
            self._sorted = len(waiting)
            self._flush_at = len(waiting) + FLUSH_EVERY
            left = iter(ready)
            try:
                self._deliver(left)
            except BaseException:
                rest = list(left)  # not handed out: they wait as before
                waiting[:0] = rest
                self._sorted += len(rest)
                raise
        return len(ready)

    def _sort(self, waiting: list[RingEvent]) -> None:
        """The events taken since the last flush sorted, then merged into the sorted ones
        from where the oldest of them belongs: a window's events are not sorted again."""
        done = self._sorted
        if done == len(waiting):
            return
        fresh = waiting[done:]
        fresh.sort(key=_TIME)
        start = bisect.bisect_right(waiting, fresh[0][0], 0, done, key=_TIME)
        if start < done:
            fresh = waiting[start:done] + fresh
            fresh.sort(key=_TIME)
        waiting[start:] = fresh
        self._sorted = len(waiting)

    def stop(self, final_drain: Callable[[Take], int] | None = None) -> None:
        """End the reader thread, drain one last time (``final_drain``: the rings' last
        read, records nobody finished skipped), deliver everything."""
        self._stopping.set()
        if self._thread is not None:
            if self._wake is not None:
                self._wake()
            self._thread.join()
            self._thread = None
        if final_drain is not None:
            with self.lock:
                final_drain(self._take)
        self.flush()
        if self.error is not None:
            error, self.error = self.error, None
            raise error
