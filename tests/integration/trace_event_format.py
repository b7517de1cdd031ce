"""A reader of Chrome Trace Event Format files that checks what the viewers need.

Perfetto's trace processor cannot run here: its Python package (`pip install
perfetto`) downloads the trace_processor binary at run time, and only package
registries are reachable; no Debian, PyPI or npm package ships the binary, and
building it needs toolchains fetched from the network too.  So this module
checks the format's documented rules and the rules of Perfetto's JSON importer
(src/trace_processor/importers/json/ in the Perfetto sources), and builds the
model a viewer would draw: named processes and threads, slices with their
depth, instants.

From the Trace Event Format document ("Trace Event Format", Google, the format
of chrome://tracing):
- the JSON Array Format is a list of event objects, "the ] at the end is
  optional" (a trace cut short still loads);
- every event has ``ph``; ``name``, ``cat`` strings; ``pid``, ``tid``
  integers; ``ts`` a number of microseconds (not for metadata); ``args`` an
  object;
- duration events ``B``/``E`` on one thread nest, their timestamps in
  increasing order on that thread; an ``E`` closes the most recent open ``B``;
- instant events ``i`` have a scope ``s`` of ``g``, ``p`` or ``t``;
- metadata events ``M`` named ``process_name`` / ``thread_name`` carry
  ``args.name``.
From Perfetto's importer: ``pid``/``tid`` must fit in uint32; ``ts`` must be a
JSON number (a string is read as an integer only); an ``E`` whose name differs
from its open slice's is a misplaced end; its tokenizer refuses control
characters in strings and, in some versions, ``\\u`` escapes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_UINT32 = (1 << 32) - 1
_JSON_ESCAPE = re.compile(r"\\(.)")


class FormatViolation(AssertionError):
    """The file breaks a rule the format or a viewer's importer has."""


@dataclass
class Slice:
    pid: int
    tid: int
    name: str
    category: str
    begin: float
    depth: int
    args: dict
    end: float | None = None
    end_args: dict = field(default_factory=dict)


@dataclass
class Instant:
    pid: int
    tid: int
    name: str
    category: str
    ts: float
    args: dict


@dataclass
class Trace:
    processes: dict[int, str] = field(default_factory=dict)
    threads: dict[tuple[int, int], str] = field(default_factory=dict)
    slices: list[Slice] = field(default_factory=list)
    instants: list[Instant] = field(default_factory=list)

    def thread_slices(self, pid: int, tid: int) -> list[Slice]:
        return [s for s in self.slices if (s.pid, s.tid) == (pid, tid)]


def load(text: str) -> Trace:
    """Check ``text`` and return what a viewer would show; FormatViolation says why not."""
    _check_characters(text)
    if not text.rstrip().endswith("]"):
        text = text.rstrip().rstrip(",") + "]"  # "the ] at the end is optional"

    def no_constants(name: str) -> object:
        raise FormatViolation(f"{name} is not JSON")

    events = json.loads(text, parse_constant=no_constants)
    if not isinstance(events, list):
        raise FormatViolation("not the JSON Array Format")
    trace = Trace()
    stacks: dict[tuple[int, int], list[Slice]] = {}
    last_ts: dict[tuple[int, int], float] = {}
    for number, event in enumerate(events):
        try:
            _read(event, trace, stacks, last_ts)
        except FormatViolation as err:
            raise FormatViolation(f"event {number} {event}: {err}") from None
    return trace


def _check_characters(text: str) -> None:
    if not text.isascii():
        raise FormatViolation("bytes beyond ASCII")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise FormatViolation("a control character")
    for match in _JSON_ESCAPE.finditer(text):
        if match.group(1) not in '"\\/bfnrt':
            raise FormatViolation(f"escape \\{match.group(1)}, which Perfetto's tokenizer refuses")


def _read(event: object, trace: Trace, stacks: dict, last_ts: dict) -> None:
    if not isinstance(event, dict):
        raise FormatViolation("not an object")
    phase = _field(event, "ph", str)
    pid, tid = _field(event, "pid", int), _field(event, "tid", int)
    if not (0 <= pid <= _UINT32 and 0 <= tid <= _UINT32):
        raise FormatViolation("pid or tid outside uint32")
    name = _field(event, "name", str)
    args = event.get("args", {})
    if not isinstance(args, dict):
        raise FormatViolation("args is not an object")
    if phase == "M":
        if name not in ("process_name", "thread_name", "process_sort_index", "thread_sort_index",
                        "process_labels"):
            raise FormatViolation(f"unknown metadata {name}")
        label = args.get("name")
        if name.endswith("_name") and not isinstance(label, str):
            raise FormatViolation("a name metadata event without args.name")
        if name == "process_name":
            trace.processes[pid] = label
        elif name == "thread_name":
            trace.threads[(pid, tid)] = label
        return
    ts = event.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise FormatViolation("ts is not a number of microseconds")
    category = _field(event, "cat", str)
    thread = (pid, tid)
    if phase in ("B", "E"):
        if ts < last_ts.get(thread, ts):
            raise FormatViolation("duration events out of time order on their thread")
        last_ts[thread] = ts
    stack = stacks.setdefault(thread, [])
    if phase == "B":
        opened = Slice(pid, tid, name, category, ts, len(stack), args)
        stack.append(opened)
        trace.slices.append(opened)
    elif phase == "E":
        if not stack:
            raise FormatViolation("an E with no open B on its thread")
        closing = stack.pop()
        if name and name != closing.name:
            raise FormatViolation(f"misplaced end: E {name!r} closes B {closing.name!r}")
        closing.end, closing.end_args = ts, args
    elif phase in ("i", "I"):
        if event.get("s", "t") not in ("g", "p", "t"):
            raise FormatViolation("instant scope is not g, p or t")
        trace.instants.append(Instant(pid, tid, name, category, ts, args))
    else:
        raise FormatViolation(f"phase {phase!r} is not one uemu writes")


def _field(event: dict, key: str, kind: type) -> object:
    value = event.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise FormatViolation(f"{key} is not a {kind.__name__}")
    return value
