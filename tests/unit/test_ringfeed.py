"""uemu.ringfeed's order: events of both paths leave in timestamp order once older than
the window, counting-only hits at once, everything at stop; the reader thread drains,
sleeps when idle, and hands an error back to the loop's thread."""

from __future__ import annotations

import gc
import itertools
import mmap
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from uemu.events import Event
from uemu.ring import MIN_SIZE, Ring, mapped_size
from uemu.ringfeed import FLUSH_EVERY, FULL_COLLECTION_EVERY, SWITCH_INTERVAL_S, Deliver, RingEvent, RingFeed
from uemu.runtime import layout
from uemu.uprobes import Consumer, ProbeInfo

CONSUMER = Consumer(ProbeInfo("obj", "p", "n", 0x10, ""), "p:n")


def event(ts: int, tid: int = 1) -> Event:
    return Event(ts, 1, tid, "obj", "p", "n", 0x10, [], [])


def each(hand_out: Callable[[Consumer, Event | None], None]) -> Deliver:
    """A ``deliver`` that hands the ring events out one by one (as the reporter does)."""

    def deliver(ring_events: Iterator[RingEvent]) -> None:
        for _, consumer, e in ring_events:
            hand_out(consumer, e)

    return deliver


def ring_events(items: list[Event | None]) -> list[RingEvent]:
    """Events, or hits counted only (None), as a drain hands them out."""
    return [(0, CONSUMER, None) if e is None else (e.ts_ns, CONSUMER, e) for e in items]


def ring(batches: list[list[Event | None]]):
    """A drain that hands out one batch of ring events per call."""

    def drain(take) -> int:
        batch = batches.pop(0) if batches else []
        take(ring_events(batch))
        return len(batch)

    return drain


def test_ring_events_leave_in_time_order_before_a_trap_hit() -> None:
    """A trap hit at ts 40 first hands out the ring's older events, in time order; the
    younger one waits for the window (or the end)."""
    delivered: list[int] = []
    feed = RingFeed(ring([[event(50), event(10), event(30)], [event(25)]]), lambda ns: None,
                    each(lambda c, e: delivered.append(e.ts_ns)), window_ns=100)
    feed.before(20)
    assert delivered == [10]
    feed.before(40)  # 25: a ring event that arrives late, still before the trap hit's time
    assert delivered == [10, 25, 30]
    feed.stop()
    assert delivered == [10, 25, 30, 50]


def test_counting_alone_is_delivered_at_once() -> None:
    seen: list[object] = []
    feed = RingFeed(ring([[None]]), lambda ns: None, each(lambda c, e: seen.append(e)))
    feed.before(0)
    assert seen == [None]


def test_the_reader_thread_drains_and_delivers_then_sleeps() -> None:
    now = time.monotonic_ns() - 10_000_000_000  # long past the window
    batches = [[event(now - 3), event(now - 5), event(now - 4)]]
    waits: list[int] = []
    delivered: list[int] = []
    ready = threading.Event()

    drain = ring(batches)

    def wait(ns: int) -> None:
        waits.append(ns)
        time.sleep(0.001)

    feed = RingFeed(drain, wait, each(lambda c, e: delivered.append(e.ts_ns)), window_ns=1_000_000,
                    on_ready=ready.set)
    feed.start()
    assert ready.wait(5)
    deadline = time.monotonic() + 5
    while (len(delivered) < 3 or not waits) and time.monotonic() < deadline:
        time.sleep(0.005)
    feed.stop()
    assert delivered == [now - 5, now - 4, now - 3]
    assert waits, "idle: it sleeps"


def test_an_error_in_the_reader_reaches_the_loop() -> None:
    def drain(take) -> int:
        raise OSError("the ring went away")

    feed = RingFeed(drain, lambda ns: None, lambda ring_events: None)
    feed.start()
    time.sleep(0.05)
    with pytest.raises(OSError, match="went away"):
        feed.stop()


def test_a_long_drain_hands_out_what_is_older_than_the_window_as_it_goes() -> None:
    """A reader far behind: the waiting events are not a whole ring's.  Before a trap hit, still
    nothing younger than the hit goes out first."""
    count = FLUSH_EVERY + 10
    delivered: list[int] = []
    during: list[int] = []

    def drain(take) -> int:
        for start in range(0, count, 1000):  # as takes of a ring hand them out
            take(ring_events([event(ts * 1000) for ts in range(start, min(start + 1000, count))]))
        during.append(len(delivered))
        return count

    feed = RingFeed(drain, lambda ns: None, each(lambda c, e: delivered.append(e.ts_ns)), window_ns=100_000)
    feed.before(1 << 62)
    assert 0 < during[0] < count and delivered == [ts * 1000 for ts in range(count)]
    assert max(delivered[:during[0]]) <= (count - 1) * 1000 - 100_000, "the window's events wait"
    delivered.clear()
    during.clear()
    feed._drain = drain
    feed.before(5000)
    assert during == [6] and delivered == [0, 1000, 2000, 3000, 4000, 5000], "none younger than the trap hit"


@pytest.mark.parametrize("seed", range(20))
def test_batches_out_of_order_leave_as_one_time_order_would(seed: int) -> None:
    """Batches whose events run back in time (threads' records finished out of order, a
    late one older than events already sorted) against a model that sorts everything
    taken so far: each trap hit hands out exactly the events at or before it, in time
    order, then arrival order among equal times."""
    rng = random.Random(seed)
    batches = [[event(rng.randrange(0, 1000 + 300 * n), tid=n) for _ in range(rng.randrange(0, 3000))]
               for n in range(12)]
    delivered: list[tuple[int, int]] = []
    feed = RingFeed(ring([list(b) for b in batches]), lambda ns: None,
                    each(lambda c, e: delivered.append((e.ts_ns, e.tid))), window_ns=1 << 40)
    model: list[tuple[int, int, int]] = []
    arrival = itertools.count()
    for n, batch in enumerate(batches):
        cut = rng.randrange(0, 1000 + 300 * n)
        model.extend((e.ts_ns, next(arrival), e.tid) for e in batch)
        model.sort()
        expected = [(ts, tid) for ts, _, tid in model if ts <= cut]
        model = [m for m in model if m[0] > cut]
        delivered.clear()
        feed.before(cut)
        assert delivered == expected
    delivered.clear()
    feed.stop()
    assert delivered == [(ts, tid) for ts, _, tid in model]


def test_a_handler_that_fails_leaves_the_events_after_it_waiting() -> None:
    delivered: list[int] = []

    def deliver(consumer: Consumer, e: Event | None) -> None:
        assert e is not None
        if e.ts_ns == 20 and 20 not in delivered:
            delivered.append(20)
            raise RuntimeError("a handler failed")
        delivered.append(e.ts_ns)

    feed = RingFeed(ring([[event(30), event(10), event(20)]]), lambda ns: None, each(deliver), window_ns=100)
    with pytest.raises(RuntimeError):
        feed.before(25)
    assert delivered == [10, 20]
    feed.stop()
    assert delivered == [10, 20, 30]


def test_stop_ends_the_readers_sleep_on_the_rings_futex() -> None:
    """Leaving wakes the reader thread asleep on a real ring's futex (its poll is
    100 ms): the sleep ends because of the wake, not its timeout (an hour here)."""
    buffer = mmap.mmap(-1, layout.PAGE + mapped_size(MIN_SIZE))
    buffer[:layout.PAGE] = Ring.initial(MIN_SIZE, drop=False)
    events = Ring(buffer, 0)
    woken: list[bool] = []
    asleep = threading.Event()

    def wait(ns: int) -> None:
        asleep.set()
        events.sleep(3600 * 10**9)
        woken.append(True)

    feed = RingFeed(lambda take: 0, wait, lambda ring_events: None, wake=events.wake_reader)
    feed.start()
    assert asleep.wait(30)
    stopper = threading.Thread(target=feed.stop)
    stopper.start()
    stopper.join(60)  # a guard against hanging: without the wake it would take the hour
    assert not stopper.is_alive() and woken == [True]


def test_readers_shorten_the_switch_interval_and_space_full_collections_until_the_last_one_stops() -> None:
    """Two sessions' readers side by side: the caller's interval and the collector's
    thresholds come back only when both have stopped."""
    caller, thresholds = sys.getswitchinterval(), gc.get_threshold()
    running: list[tuple[float, tuple[int, int, int]]] = []

    def wait(ns: int) -> None:
        running.append((sys.getswitchinterval(), gc.get_threshold()))
        time.sleep(0.001)

    feeds = [RingFeed(ring([]), wait, lambda ring_events: None) for _ in range(2)]
    for feed in feeds:
        feed.start()
    deadline = time.monotonic() + 5
    while len(running) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    feeds[0].stop()
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S) and caller > SWITCH_INTERVAL_S
    assert gc.get_threshold() == (*thresholds[:2], FULL_COLLECTION_EVERY) and thresholds[2] < FULL_COLLECTION_EVERY
    feeds[1].stop()
    assert running and all(value == pytest.approx(SWITCH_INTERVAL_S) for value, _ in running)
    assert all(during[2] == FULL_COLLECTION_EVERY for _, during in running)
    assert sys.getswitchinterval() == pytest.approx(caller) and gc.get_threshold() == thresholds
