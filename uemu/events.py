"""The record of one probe hit, the one escaping of untrusted text, and the
text and JSON lines the CLI prints for a hit.

Escaping (README "Escaping"): everything that comes from a file or a tracee
(names from notes, paths, strings from memory, messages built from them) is
printed as printable ASCII.  A byte is itself when it is printable ASCII and
not a backslash; a backslash is ``\\\\``; newline, tab and carriage return are
``\\n \\t \\r``; every other byte is ``\\xHH``.  Text is taken as the bytes it
came from (UTF-8, with the bytes that were not UTF-8 kept by
``surrogateescape``), so the printed form names exactly one byte string:
``codecs.escape_decode`` gives it back.  No control sequence reaches a
terminal, and a literal ``\\xff`` (printed ``\\\\xff``) cannot be taken for the
byte 0xff (printed ``\\xff``).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

Value = int | float | None

STRICT_JSON = json.JSONEncoder(allow_nan=False)
"""JSON with no NaN or Infinity (made once: ``json.dumps`` with options builds an encoder per call)."""


@dataclass(slots=True)
class Event:
    """One hit of one probe in one thread.

    ``args`` is ``None`` when the session was asked not to decode them (counting);
    an element is ``None`` where a spec could not be parsed or read.
    ``read_string`` works only while the tracee is still stopped at the hit, that
    is inside a handler; events from ``Session.events()`` have it cleared.
    """

    ts_ns: int
    pid: int
    tid: int
    object: str
    provider: str
    name: str
    address: int
    specs: list[str]
    args: list[Value] | None
    read_string: Callable[[int, int], bytes | None] | None = field(default=None, repr=False)

    def to_json(self) -> str:
        """One JSON object (strict JSON: see ``json_number``); strings escaped."""
        return json_line(self)[:-1]


def json_line(event: Event) -> str:
    """``Event.to_json`` and a newline: the same text as ``STRICT_JSON.encode`` of
    ``_json_record``, made faster (it runs for every event): what a site repeats is
    encoded once (``JsonSite``), the rest written by ``JsonSite.line``."""
    site = _json_sites.get((event.object, event.provider, event.name, event.address))
    if site is None or site.specs != event.specs:
        site = JsonSite.of(event.object, event.provider, event.name, event.address, event.specs)
        if len(_json_sites) >= _JSON_SITES_MAX:
            _json_sites.clear()
        _json_sites[event.object, event.provider, event.name, event.address] = site
    return site.line(event.ts_ns, event.pid, event.tid, event.args)


class SiteLines(Protocol):
    """The line one output writes for each event of one site, what the site's events repeat
    made once (``JsonSite``, ``TextSite``): the jump path writes its hits with it, without
    an Event each (uemu/jumps.py, ``Reporter.line_shape``)."""

    def line(self, ts_ns: int, pid: int, tid: int, args: list[Value] | None) -> str: ...


LineShape = Callable[[str, str, str, int, list[str]], SiteLines]
"""How an output makes a site's ``SiteLines`` from its object, provider, name, address
and specs: ``JsonSite.of`` (--json) or ``TextSite.of`` (the text lines)."""


def _json_record(event: Event) -> dict[str, object]:
    """What ``Event.to_json`` encodes, in its order."""
    return {
        "ts_ns": event.ts_ns,
        "pid": event.pid,
        "tid": event.tid,
        "object": escape_name(event.object),
        "provider": escape_name(event.provider),
        "name": escape_name(event.name),
        "address": event.address,
        "args": event.args,
        "specs": list(map(escape_name, event.specs)),
    }


@dataclass(frozen=True, slots=True)
class JsonSite:
    """The JSON every event of one site repeats: the members between ``tid`` and ``args``,
    and ``specs``.  ``line`` is the one writer of an event's JSON line: ``json_line``'s,
    and the jump path's when its hits go to ``--json`` alone, as lines without an Event
    (uemu/jumps.py)."""

    specs: list[str]
    middle: str
    tail: str

    @classmethod
    def of(cls, obj: str, provider: str, name: str, address: int, specs: list[str]) -> JsonSite:
        record = _json_record(Event(0, 0, 0, obj, provider, name, address, specs, None))
        middle = {k: record[k] for k in ("object", "provider", "name", "address")}
        return cls(list(specs), STRICT_JSON.encode(middle)[1:-1], STRICT_JSON.encode({"specs": record["specs"]})[1:-1])

    def line(self, ts_ns: int, pid: int, tid: int, args: list[Value] | None) -> str:
        """The JSON line of this site's event with these fields; integer arguments (nearly
        always all there are) written here, at once."""
        try:
            shown = f"[{_join_items(map(_int_text, args))}]"  # type: ignore[arg-type]  # what JSON writes
        except TypeError:  # None, or a float or a None among them
            shown = _json_args(args)
        return f'{{"ts_ns": {ts_ns}, "pid": {pid}, "tid": {tid}, {self.middle}, "args": {shown}, {self.tail}}}\n'


_int_text, _join_items = int.__repr__, ", ".join
"""What ``JsonSite.line`` calls for each argument and list, bound once (a tenth of its time)."""
_JSON_SITES_MAX = 4096
_json_sites: dict[tuple[str, str, str, int], JsonSite] = {}


def _json_args(args: list[Value] | None) -> str:
    """``args`` as JSON when they are not all integers (``json_line`` writes those)."""
    if args is None:
        return "null"
    try:
        return STRICT_JSON.encode(args)
    except ValueError:  # a NaN or an infinity: rare, so looked for only then
        return STRICT_JSON.encode([json_number(v) for v in args])


# ---- escaping ------------------------------------------------------------------

_BYTE_TEXT = tuple(
    {0x5C: "\\\\", 0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r"}.get(b, chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}")
    for b in range(256)
)
_NOT_PLAIN = re.compile(r"[^\x20-\x5b\x5d-\x7e]")  # printable ASCII but the backslash


def escape(text: str | bytes) -> str:
    """The printable-ASCII form of untrusted text (module docstring)."""
    if isinstance(text, str):
        if text.isascii() and text.isprintable() and "\\" not in text:
            return text  # the usual case, kept cheap: it runs for every hit
        text = _utf8(text)
    return _NOT_PLAIN.sub(lambda m: _BYTE_TEXT[ord(m.group())], text.decode("latin-1"))


escape_name = functools.lru_cache(maxsize=4096)(escape)
"""``escape`` for the few texts every hit repeats (paths, probe names, specs):
cached, and called without a Python frame."""


def _utf8(text: str) -> bytes:
    """The bytes a str came from: ``surrogateescape`` gives back the bytes that
    were not UTF-8 (os.fsdecode, argv, /proc); any other lone surrogate keeps
    its own UTF-8-like form rather than failing."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


# ---- values ---------------------------------------------------------------------


def json_number(value: Value) -> int | float | str | None:
    """A value as strict JSON allows it: NaN and the infinities, which JSON has
    no number for, become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``
    (what JavaScript's ``Number()`` and Python's ``float()`` read back)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def format_value(value: Value) -> str:
    if value is None:
        return "?"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def text_line(event: Event) -> str:
    """``SECONDS.MICROS PID/TID provider:name ARG...`` (CLOCK_MONOTONIC seconds)."""
    return _text_site(event.provider, event.name).line(event.ts_ns, event.pid, event.tid, event.args)


@dataclass(frozen=True, slots=True)
class TextSite:
    """What every text line of one site repeats, its probe escaped once.  ``line`` is the one
    writer of an event's text line: ``text_line``'s, and the jump path's when its hits go
    to the text lines alone (as JSON's, ``JsonSite``)."""

    probe: str
    formats: dict[int, str] = field(default_factory=dict, compare=False)
    """Number of arguments -> the %-format of a line with that many."""

    @classmethod
    def of(cls, obj: str, provider: str, name: str, address: int, specs: list[str]) -> TextSite:
        return _text_site(provider, name)

    def line(self, ts_ns: int, pid: int, tid: int, args: list[Value] | None) -> str:
        """One %-format a number of arguments (a third faster than joining them): ``%s``
        writes an int or a float as ``format_value`` does, not None."""
        seconds, ns = divmod(ts_ns, 1_000_000_000)
        shown: Sequence[object] = () if args is None else args if None not in args else list(map(format_value, args))
        shape = self.formats.get(len(shown))
        if shape is None:
            shape = self.formats[len(shown)] = f"%d.%06d %d/%d {self.probe.replace('%', '%%')}{' %s' * len(shown)}\n"
        return shape % (seconds, ns // 1000, pid, tid, *shown)


@functools.lru_cache(maxsize=4096)
def _text_site(provider: str, name: str) -> TextSite:
    """One ``TextSite`` a probe, its formats made once (every hit of the trap path asks)."""
    return TextSite(f"{escape(provider)}:{escape(name)}")


def count_lines(counts: dict[str, int]) -> Sequence[str]:
    """``--count``: ``provider:name HITS`` per probe, sorted by name."""
    return [f"{escape(name)} {hits}\n" for name, hits in sorted(counts.items())]
