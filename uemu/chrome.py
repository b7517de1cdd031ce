"""``--output-format chrome``: hits as Chrome's Trace Event Format (JSON), the
format Perfetto's UI (ui.perfetto.dev) and chrome://tracing open.

The file is the format's JSON Array form, written as hits come (memory stays
flat however long the trace): one event object per line, ``[`` first and
``]`` last.  The format allows the closing ``]`` to be missing, so a file cut
short by uemu's death still opens.

- Each process and thread gets a ``process_name`` / ``thread_name`` metadata
  event (``ph: "M"``) the first time it hits, named from ``/proc`` ``comm`` then:
  the viewers show names, not numbers.
- A hit is an instant event on its thread (``ph: "i"``, ``s: "t"``), named
  ``provider:name`` (or by ``--format``), category the provider, its arguments
  as ``args`` ``arg0``, ``arg1``...
- ``--slice BEGIN=END`` pairs two probes into duration events on each thread:
  a BEGIN hit opens a slice (``ph: "B"``), the next END hit of the same pair
  on that thread closes it (``ph: "E"``, END's arguments as ``end_arg0``...).
  Slices nest as calls do (``python:function__entry=python:function__return``).
  An END whose slice began before tracing began is an instant.  An END that
  closes a slice with others still open inside it (a longjmp, an exception that
  skipped their END) closes those first, at the same time: B/E events on a
  thread always nest, as both viewers require.  A slice still open when tracing
  ends has no E event; the viewers show it as not finished.

Every string is escaped (``events.escape``): the file is printable ASCII with
no JSON escapes but ``\\\\`` and ``\\"``, the subset every importer reads
(Perfetto's JSON tokenizer refuses control characters and ``\\u`` escapes in
some versions).  Timestamps are CLOCK_MONOTONIC microseconds with nanosecond
decimals, as the format wants (``ts`` in µs); integers beyond ±2^53, which the
viewers' JavaScript and double-based parsers would round, are written as
decimal strings; NaN and infinities as in ``events.json_number``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from .events import Event, Value, escape, escape_name, json_number
from .probespec import SdtPattern

_EXACT_IN_DOUBLE = 1 << 53
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class SlicePair:
    """``--slice BEGIN=END``: two probe globs whose hits open and close a slice."""

    begin: SdtPattern
    end: SdtPattern

    @property
    def text(self) -> str:
        return f"{self.begin.text}={self.end.text}"


@dataclass
class _Open:
    pair: int
    name: str
    category: str


class ChromeTrace:
    """Writes hits to ``stream`` as they come; ``close()`` ends the array.

    ``name`` renders an event's name (``--format``); ``comm(pid, tid)`` gives a
    thread's name (a process's is its main thread's), asked once per thread.
    """

    def __init__(self, stream: TextIO, slices: Sequence[SlicePair] = (), *,
                 name: Callable[[Event], str] | None = None,
                 comm: Callable[[int, int], bytes | None] = lambda pid, tid: None):
        self.stream = stream
        self.slices = list(slices)
        self.name = name
        self.comm = comm
        self._stacks: dict[tuple[int, int], list[_Open]] = {}
        self._roles: dict[tuple[str, str, str], tuple[str, int] | None] = {}
        self._named_processes: set[int] = set()
        self._first = True
        stream.write("[")

    def write(self, event: Event) -> None:
        """One hit: its thread's names the first time, then its trace event(s)."""
        thread = (event.pid, event.tid)
        if thread not in self._stacks:
            self._stacks[thread] = []
            self._name_thread(event.pid, event.tid)
        role = self._role(event)
        name = escape_name(f"{event.provider}:{event.name}") if self.name is None else self.name(event)
        category = escape_name(event.provider)
        if role is None:
            self._emit(event, "i", name, category, _args("arg", event.args), s="t")
        elif role[0] == "begin":
            self._stacks[thread].append(_Open(role[1], name, category))
            self._emit(event, "B", name, category, _args("arg", event.args))
        else:
            self._end(self._stacks[thread], event, role[1], name, category)

    def close(self) -> None:
        self.stream.write("\n]\n")

    def _end(self, stack: list[_Open], event: Event, pair: int, name: str, category: str) -> None:
        depth = next((i for i in range(len(stack) - 1, -1, -1) if stack[i].pair == pair), None)
        if depth is None:
            self._emit(event, "i", name, category, _args("arg", event.args), s="t")
            return
        while len(stack) > depth + 1:
            inner = stack.pop()
            self._emit(event, "E", inner.name, inner.category, {})
        opened = stack.pop()
        self._emit(event, "E", opened.name, opened.category, _args("end_arg", event.args))

    def _role(self, event: Event) -> tuple[str, int] | None:
        """Whether a probe opens or closes a slice of some pair (an END glob wins
        over a BEGIN glob that also matches), cached per probe."""
        key = (event.object, event.provider, event.name)
        if key not in self._roles:
            self._roles[key] = next(
                (("end" if pair.end.matches(event) else "begin", index)
                 for index, pair in enumerate(self.slices)
                 if pair.end.matches(event) or pair.begin.matches(event)),
                None,
            )
        return self._roles[key]

    def _name_thread(self, pid: int, tid: int) -> None:
        comm = self.comm(pid, tid)
        if pid not in self._named_processes:
            self._named_processes.add(pid)
            self._metadata("process_name", pid, pid, comm if tid == pid else self.comm(pid, pid))
        self._metadata("thread_name", pid, tid, comm)

    def _metadata(self, kind: str, pid: int, tid: int, comm: bytes | None) -> None:
        if comm is not None:
            self._line({"name": kind, "ph": "M", "pid": pid, "tid": tid, "args": {"name": escape(comm)}})

    def _emit(self, event: Event, phase: str, name: str, category: str, args: dict[str, object],
              **extra: str) -> None:
        ts = f"{event.ts_ns // 1000}.{event.ts_ns % 1000:03d}"
        record: dict[str, object] = {"name": name, "cat": category, "ph": phase, **extra,
                                     "pid": event.pid, "tid": event.tid}
        if args:
            record["args"] = args
        # ts is written by hand: a float would round nanoseconds away.
        self._line(record, f',"ts":{ts}')

    def _line(self, record: dict[str, object], tail: str = "") -> None:
        text = _COMPACT_JSON.encode(record)
        self.stream.write(("\n" if self._first else ",\n") + text[:-1] + tail + "}")
        self._first = False


def _args(prefix: str, values: list[Value] | None) -> dict[str, object]:
    return {f"{prefix}{i}": _json_arg(v) for i, v in enumerate(values or ())}


def _json_arg(value: Value) -> int | float | str | None:
    if isinstance(value, int) and not -_EXACT_IN_DOUBLE <= value <= _EXACT_IN_DOUBLE:
        return str(value)
    return json_number(value)


def read_comm(pid: int, tid: int) -> bytes | None:
    """A thread's name from /proc, as bytes (a name may be any bytes); None
    once the thread is gone."""
    try:
        with open(f"/proc/{pid}/task/{tid}/comm", "rb") as stream:
            return stream.read().rstrip(b"\n")
    except OSError:
        return None
