"""A trace's values compare as plain ones and explain only themselves (pure
logic; the messages on real traces, as pytest prints them, are in
tests/integration/test_pytest_plugin.py)."""

from __future__ import annotations

import pytest

from uemu.events import Event
from uemu.probetrace import Report, Trace, explain
from uemu.testing import Usdt


def _trace() -> Trace:
    events = [Event(0, 7, 7, "/bin/cache", "cache", name, 0, [], [3, 0]) for name in ("evict", "evict", "miss")]
    trace = Trace(pid=7)
    trace.complete(Report(events, [(3, b"a"), (3, b"b"), (None,)], ["cache:evict", "cache:miss", "cache:hit"], 0, []))
    return trace


def test_values_compare_as_plain_ones():
    trace = _trace()
    assert trace.count("cache:evict") == 2 and isinstance(trace.count("cache:evict"), int)
    assert trace.args("cache:evict") == [(3, b"a"), (3, b"b")]
    assert trace.args("cache:evict")[1] == (3, b"b")
    assert trace.args("cache:miss") == [(None,)]
    assert trace.counts() == {"cache:evict": 2, "cache:miss": 1}


def test_only_a_traces_values_are_explained():
    trace = _trace()
    assert explain("==", 2, 3) is None
    assert explain("==", (3, b"a"), (3, b"b")) is None
    assert explain("<=", 5, trace.count("cache:evict")) == [
        "cache:evict fired 2 times, expected at least 5", "fired: cache:evict 2, cache:miss 1",
        "armed, never fired: cache:hit"]


def test_a_count_of_an_unknown_probe_names_none_near():
    assert _trace().count("other:thing").explain("==", 1)[:2] == [
        "other:thing fired 0 times, expected 1", "other:thing is not a probe uemu armed"]


def test_a_trace_is_read_after_its_block():
    trace = Trace(pid=7)
    assert repr(trace) == "Trace(pid=7, running)"
    with pytest.raises(RuntimeError, match="filled when its with block ends"):
        trace.count("cache:miss")


@pytest.mark.parametrize("strings", [{"evict": 1}, {"cache:evict": -1}, {"cache:evict": ["1"]}])
def test_string_declarations_are_checked(strings):
    with pytest.raises(ValueError, match="want 'provider:name': argument index"):
        Usdt().run(["/bin/true"], strings=strings)
