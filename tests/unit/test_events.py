"""The escaping of untrusted text and the JSON of a hit: what reaches a terminal
or a JSON parser whatever the tracee's bytes."""

from __future__ import annotations

import codecs
import json
import math
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uemu.events import STRICT_JSON, Event, count_lines, escape, format_value, json_line, json_number, text_line


def strict_json(text: str) -> object:
    """json.loads that refuses NaN and the infinities, as JSON itself does."""

    def refuse(name: str) -> object:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@given(st.binary())
def test_escaped_bytes_are_printable_ascii_and_decode_back(data):
    text = escape(data)
    assert all(0x20 <= ord(c) < 0x7F for c in text)
    # Python's own decoder of the same escapes is the oracle: one form, one byte string.
    assert codecs.escape_decode(text.encode())[0] == data


@given(st.binary())
def test_text_decoded_as_os_fsdecode_escapes_as_its_bytes(data):
    assert escape(os.fsdecode(data)) == escape(data)


@pytest.mark.parametrize("raw, shown", [
    (b"plain name", "plain name"),
    (b"\x1b[31mred\x07", r"\x1b[31mred\x07"),
    (b"cr\r lf\n tab\t", r"cr\r lf\n tab\t"),
    (b"\xff", r"\xff"),
    (b"\\xff", r"\\xff"),  # a literal backslash is never taken for an escape
    ("café".encode(), r"caf\xc3\xa9"),
    (b"\x7f\x00\x9b", r"\x7f\x00\x9b"),
])
def test_escape_examples(raw, shown):
    assert escape(raw) == shown
    assert escape(os.fsdecode(raw)) == shown


def test_a_lone_surrogate_not_from_bytes_still_escapes():
    assert escape("a\ud800b") == r"a\xed\xa0\x80b"


def hit(args, provider="prov", name="name", obj="/bin/x"):
    return Event(1_500_000_000_123_456, 7, 8, obj, provider, name, 0x401000, ["-4@%eax", "8f@%xmm0"], args)


def test_json_is_strict_json_with_nan_and_infinities_as_strings():
    record = strict_json(hit([1, math.nan, math.inf, -math.inf, 2.5, None, -(1 << 63)]).to_json())
    assert record["args"] == [1, "NaN", "Infinity", "-Infinity", 2.5, None, -(1 << 63)]
    assert [float(v) for v in record["args"][1:4]][1:] == [math.inf, -math.inf]
    assert math.isnan(float(record["args"][1]))


def test_json_strings_use_the_escaped_form():
    event = hit([], provider="p\x1b", name="n\udcff", obj="/tmp/a\nb\\c")
    line = event.to_json()
    assert line.isascii() and "\n" not in line
    record = strict_json(line)
    assert (record["provider"], record["name"], record["object"]) == (r"p\x1b", r"n\xff", r"/tmp/a\nb\\c")


def test_json_of_a_counting_session_has_null_args():
    assert strict_json(hit(None).to_json())["args"] is None


def test_json_number_leaves_finite_values():
    assert [json_number(v) for v in (0, -1, 1.25, None)] == [0, -1, 1.25, None]


def test_text_line_escapes_names():
    assert text_line(hit([1, None, 0.5], provider="p\x07", name="n")) == "1500000.000123 7/8 p\\x07:n 1 ? 0.5\n"


def test_count_lines_are_sorted_and_escaped():
    assert count_lines({"b:x": 2, "a:\x1b": 1}) == ["a:\\x1b 1\n", "b:x 2\n"]


values = st.one_of(st.integers(-(1 << 64), 1 << 64), st.none(), st.floats())
names = st.sampled_from(["p", "n\udcff", "/bin/x", "a\nb\\c", "caf\u00e9", "%s%%d"])


@given(st.lists(st.tuples(names, names, st.sampled_from([0x10, 0x20]), st.lists(names, max_size=3),
                          st.one_of(st.none(), st.lists(values, max_size=5))), min_size=1, max_size=6))
def test_json_lines_are_the_encoders_bytes_whatever_the_sites_before(hits):
    """The per-site JSON made once is the same text as encoding each whole record (the
    sites come back with other specs and args: nothing of an earlier one leaks)."""
    for name, obj, address, specs, args in hits:
        event = Event(1_500_000_000_123_456, 7, 8, obj, "prov", name, address, specs, args)
        record = {"ts_ns": event.ts_ns, "pid": 7, "tid": 8, "object": escape(obj), "provider": "prov",
                  "name": escape(name), "address": address,
                  "args": None if args is None else [json_number(v) for v in args],
                  "specs": [escape(s) for s in specs]}
        assert json_line(event) == STRICT_JSON.encode(record) + "\n"
        assert event.to_json() + "\n" == json_line(event)


@given(st.lists(values, max_size=5), names)
def test_text_lines_show_each_value_as_format_value(args, name):
    line = text_line(hit(args, name=name))
    assert line == f"1500000.000123 7/8 prov:{escape(name)}" + "".join(" " + format_value(v) for v in args) + "\n"
