"""JSON and text lines without an Event per hit: the jump path's lines are the bytes
``json_line`` and ``text_line`` write for the Events the same records make, and the
reporter writes them only for a session whose one taker of events is the line writer."""

from __future__ import annotations

from collections import deque

from hypothesis import given
from hypothesis import strategies as st

from uemu.consumers import Reporter
from uemu.events import Event, JsonSite, TextSite, Value, json_line, text_line
from uemu.fetch import FetchProgram
from uemu.jumps import JumpPath, _Recorded
from uemu.uprobes import Consumer, ProbeInfo, Uprobes


class _Taken:
    """A ring's records as ``JumpPath._ring_events`` reads them once taken: headers by offset."""

    def __init__(self, headers: dict[int, tuple[int, int, int, int]]):
        self.view = b""
        self._headers = headers

    def headers(self, offsets: list[int]) -> list[tuple[int, int, int, int]]:
        return [self._headers[at] for at in offsets]


values = st.one_of(st.integers(-(1 << 64), 1 << 64), st.none(),
                   st.floats(), st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0]))
names = st.sampled_from(["p", "n\udcff", "/bin/x", "a\nb\\c", "caf\u00e9", "q\"uote", "%d"])
records = st.tuples(st.integers(0, (1 << 64) - 1), st.integers(1, 1 << 22), st.integers(1, 1 << 22),
                    st.lists(values, max_size=6))


@given(st.lists(st.tuples(names, names, names, st.integers(0, (1 << 64) - 1), st.lists(names, max_size=4)),
                min_size=1, max_size=3),
       st.lists(records, min_size=1, max_size=8), st.data())
def test_the_jump_paths_lines_are_json_line_and_text_line_of_its_events(consumers, hits, data):
    """Every field of every event, each consumer of a site (two probes on one site too), args of
    every kind (ints of any size and sign, floats, NaN and the infinities, None), both shapes."""
    path = JumpPath(Uprobes(print))
    path.reported_pid = lambda pid, tid: pid + 1  # as for a vfork child: its parent's pid
    address = data.draw(st.integers(0, (1 << 64) - 1))
    site = tuple((Consumer(ProbeInfo(obj, provider, name, 0x10, ""), f"{provider}:{name}"), obj, provider, name, specs)
                 for obj, provider, name, _, specs in consumers)
    decoded: dict[int, list[Value]] = {}
    path._recorded[7] = _Recorded(address, site, FetchProgram((), 8, lambda buffer, at: (list(decoded[at]), {})))
    headers = {}
    for at, (ts_ns, pid, tid, args) in enumerate(hits):
        headers[at], decoded[at] = (7, pid, tid, ts_ns), args
        path.names[pid + 1, tid] = b"comm"
    taken = _Taken(headers)
    events = path._ring_events(taken, list(headers), None)  # type: ignore[arg-type]
    for shape, render in ((JsonSite.of, json_line), (TextSite.of, text_line)):
        lines = path._ring_events(taken, list(headers), shape)  # type: ignore[arg-type]
        assert len(lines) == len(events) == len(hits) * len(site)
        for (ts_ns, consumer, line), (event_ts, event_consumer, event) in zip(lines, events, strict=True):
            assert isinstance(event, Event) and (ts_ns, consumer) == (event_ts, event_consumer)
            assert line == render(event)


def _reporter() -> tuple[Reporter, list[str], list[Event]]:
    reporter = Reporter(True, lambda: None, lambda: None)
    written: list[str] = []
    seen: list[Event] = []
    reporter.line_out = (seen.append, written.append, JsonSite.of)
    reporter.handlers.append(seen.append)
    return reporter, written, seen


def test_lines_only_while_the_line_writer_alone_takes_events() -> None:
    reporter, _, _ = _reporter()
    assert reporter.line_shape() == JsonSite.of
    reporter.handlers.append(print)
    assert reporter.line_shape() is None, "another handler gets Events"
    reporter.handlers.pop()
    reporter.queue = deque()
    assert reporter.line_shape() is None, "events() gets Events"


def test_lines_are_written_a_batch_at_once_in_order_and_counted_up_to_max_events() -> None:
    reporter, written, seen = _reporter()
    consumer = Consumer(ProbeInfo("obj", "p", "n", 0x10, ""), "p:n")
    event = Event(3, 1, 1, "obj", "p", "n", 0x10, [], [])
    limits: list[int] = []
    reporter._on_limit = lambda: limits.append(reporter.event_count)
    reporter.max_events = 4
    reporter.deliver(iter([(1, consumer, "a\n"), (2, consumer, "b\n"), (3, consumer, event), (4, consumer, "c\n"),
                           (5, consumer, "d\n"), (6, consumer, "e\n")]))
    assert written == ["a\nb\n", "c\n"] and seen == [event], "the lines before an Event are written before it"
    assert consumer.hits == reporter.event_count == 4 and limits == [4]
