"""What a test gets from one traced run: its hits per probe, and failure
messages that say what did fire (the ``Trace`` of the pytest plugin).

``count()`` and ``args()`` return an int, a list and tuples that compare as the
plain ones do but remember where they came from, so that a bare ``assert`` on
them fails with the story: the pytest plugin's assertrepr hook calls
``explain``.  The ``assert_*`` methods tell the same story where pytest does not
rewrite assertions.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import SupportsIndex, overload

from .events import Event, Value

Arg = Value | bytes
"""An argument as a test sees it: bytes where the test declared a string."""
Args = tuple[Arg, ...]

_SHOWN_HITS = 8
"""Hits of one probe listed in a message; the rest are counted."""


@dataclass(frozen=True)
class Report:
    """The facts a traced run leaves, as the tracer process sends them."""

    events: list[Event]
    args: list[Args]
    """Per event: its arguments, with the declared strings read at the hit."""
    armed: list[str]
    """``provider:name`` of every probe uemu armed, fired or not."""
    exit_status: int | None
    warnings: list[str]


@dataclass(eq=False)
class Trace:
    """The hits of one run or attach, in the order uemu saw them.

    Filled when the ``with`` block ends; before that only ``pid`` is known.
    Probes are named ``provider:name``; ``args`` has the declared strings as
    bytes (None for a NULL or unreadable pointer); ``events`` are uemu's own
    records, with the raw pointer values.
    """

    pid: int
    events: list[Event] = field(default_factory=list, repr=False)
    exit_status: int | None = None
    """The command's exit status as the shell reports it (``run`` only)."""
    stdout: bytes = field(default=b"", repr=False)
    """What the command wrote to its standard output (``run`` only)."""
    warnings: list[str] = field(default_factory=list, repr=False)
    probes: list[str] = field(default_factory=list, repr=False)
    """Every probe uemu armed, fired or not."""
    _args: dict[str, list[Args]] = field(default_factory=dict, repr=False)
    _complete: bool = field(default=False, repr=False)

    def __repr__(self) -> str:
        if not self._complete:
            return f"Trace(pid={self.pid}, running)"
        return f"Trace(pid={self.pid}, exit_status={self.exit_status}, fired={self.counts()})"

    def complete(self, report: Report, stdout: bytes = b"") -> None:
        self.events = report.events
        self.exit_status = report.exit_status
        self.stdout = stdout
        self.warnings = report.warnings
        self.probes = sorted(report.armed)
        for event, args in zip(report.events, report.args, strict=True):
            self._args.setdefault(f"{event.provider}:{event.name}", []).append(args)
        self._complete = True

    # ---- what fired ----------------------------------------------------------------

    def count(self, probe: str) -> Count:
        """Hits of ``probe`` (every site, every thread)."""
        return Count(len(self._hits(probe)), self, probe)

    def counts(self) -> dict[str, int]:
        """Hits per probe that fired."""
        self._check_complete()
        return {probe: len(hits) for probe, hits in sorted(self._args.items())}

    def args(self, probe: str) -> HitList:
        """The arguments of each hit of ``probe``, a tuple per hit."""
        return HitList(self, probe, [HitArgs(args, self, probe, index) for index, args in enumerate(self._hits(probe))])

    # ---- assertions that explain themselves -----------------------------------------

    def assert_fired(self, probe: str, times: int | None = None) -> None:
        """``probe`` fired (exactly ``times`` times when given)."""
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        count = self.count(probe)
        if (count == 0) if times is None else (count != times):
            op, expected = (">=", 1) if times is None else ("==", times)
            raise AssertionError("\n".join(count.explain(op, expected)))

    def assert_not_fired(self, probe: str) -> None:
        __tracebackhide__ = True
        count = self.count(probe)
        if count:
            raise AssertionError("\n".join(count.explain("==", 0)))

    def assert_fired_with(self, probe: str, *args: Arg) -> None:
        """Some hit of ``probe`` had exactly these arguments."""
        __tracebackhide__ = True
        hits = self._hits(probe)
        if args in hits:
            return
        lines = [f"{probe} never fired with {args!r}"]
        if not hits:
            lines += self._name_hint(probe)
        else:
            closest = max(range(len(hits)), key=lambda i: _likeness(hits[i], args))
            lines.append(f"closest: #{closest} {hits[closest]!r}" + _differences(hits[closest], args))
            lines += _type_hints(probe, hits[closest], args)
            lines += self._listing(probe)
        raise AssertionError("\n".join(lines + self._summary()))

    def assert_args(self, probe: str, expected: Sequence[Args]) -> None:
        """The hits of ``probe`` had exactly these arguments, in this order."""
        __tracebackhide__ = True
        got = self.args(probe)
        if got != list(expected):
            raise AssertionError("\n".join(got.explain("==", expected)))

    # ---- the story of a failure ---------------------------------------------------------

    def _hits(self, probe: str) -> list[Args]:
        self._check_complete()
        return self._args.get(probe, [])

    def _check_complete(self) -> None:
        if not self._complete:
            raise RuntimeError("the trace is filled when its with block ends: read it after the block")

    def _name_hint(self, probe: str) -> list[str]:
        """Why a probe has no hits: armed and silent, or a misspelt name."""
        if probe in self.probes:
            return [f"{probe} was armed but never fired"]
        return [self._near(probe) or f"{probe} is not a probe uemu armed"]

    def _near(self, probe: str) -> str | None:
        names = sorted(set(self.probes) | set(self._args))
        near = difflib.get_close_matches(probe, names, n=1, cutoff=0.75)
        return f"did you mean {near[0]} ({_times(len(self._args.get(near[0], [])), 'hit')})?" if near else None

    def _summary(self) -> list[str]:
        fired = ", ".join(f"{probe} {len(hits)}" for probe, hits in sorted(self._args.items()))
        silent = ", ".join(p for p in self.probes if p not in self._args)
        lines = [f"fired: {fired}" if fired else "nothing fired"]
        if silent:
            lines.append(f"armed, never fired: {silent}")
        return lines + [f"uemu warned: {warning}" for warning in self.warnings]

    def _listing(self, probe: str) -> list[str]:
        hits = self._args.get(probe, [])
        lines = [f"hits of {probe}:"] + [f"  #{i} {args!r}" for i, args in enumerate(hits[:_SHOWN_HITS])]
        if len(hits) > _SHOWN_HITS:
            lines.append(f"  ... {len(hits) - _SHOWN_HITS} more")
        return lines


class Count(int):
    """The hit count of one probe; compares as an int."""

    trace: Trace
    probe: str

    def __new__(cls, value: int, trace: Trace, probe: str) -> Count:
        count = super().__new__(cls, value)
        count.trace, count.probe = trace, probe
        return count

    def explain(self, op: str, expected: object) -> list[str]:
        lines = [f"{self.probe} fired {_times(int(self), 'time')}, expected {_wanted(op, expected)}"]
        if not self:
            lines += self.trace._name_hint(self.probe)
        return lines + self.trace._summary()


class HitArgs(tuple[Arg, ...]):
    """The arguments of hit ``number`` of one probe; compares as a tuple."""

    trace: Trace
    probe: str
    number: int

    def __new__(cls, args: Args, trace: Trace, probe: str, number: int) -> HitArgs:
        hit = super().__new__(cls, args)
        hit.trace, hit.probe, hit.number = trace, probe, number
        return hit

    def explain(self, op: str, expected: object) -> list[str]:
        got = tuple(self)
        lines = [f"arguments of {self.probe} #{self.number} were {got!r}, expected {_wanted(op, expected)}"]
        if op != "==" or not isinstance(expected, tuple):
            return lines
        lines[0] += _differences(got, expected)
        same = [f"#{i}" for i, args in enumerate(self.trace._hits(self.probe)) if args == expected]
        if same:
            lines.append(f"{'hits' if len(same) > 1 else 'hit'} {', '.join(same[:_SHOWN_HITS])} had those arguments")
        return lines + _type_hints(self.probe, got, expected) + self.trace._listing(self.probe)


class HitList(list[HitArgs]):
    """The arguments of every hit of one probe; compares as a list of tuples."""

    def __init__(self, trace: Trace, probe: str, hits: list[HitArgs]):
        super().__init__(hits)
        self.trace, self.probe = trace, probe

    @overload
    def __getitem__(self, index: SupportsIndex) -> HitArgs: ...
    @overload
    def __getitem__(self, index: slice) -> list[HitArgs]: ...

    def __getitem__(self, index: SupportsIndex | slice) -> HitArgs | list[HitArgs]:
        __tracebackhide__ = True
        try:
            return super().__getitem__(index)
        except IndexError:
            lines = [f"{self.probe} fired {_times(len(self), 'time')}: no hit #{index}"]
            if not self:
                lines += self.trace._name_hint(self.probe)
            raise IndexError("\n".join(lines + self.trace._summary())) from None

    def explain(self, op: str, expected: object) -> list[str]:
        if op != "==" or not isinstance(expected, list):
            return [f"arguments of {self.probe} were {list(self)!r}, expected {_wanted(op, expected)}"]
        got = [tuple(hit) for hit in self]
        first = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), None)
        if first is None:
            lines = [f"{self.probe} fired {_times(len(got), 'time')}, expected {len(expected)}"]
        else:
            lines = [f"arguments of {self.probe} differ first at #{first}: were {got[first]!r}, "
                     f"expected {expected[first]!r}" + _differences(got[first], expected[first])]
            lines += _type_hints(self.probe, got[first], expected[first])
        if not got:
            lines += self.trace._name_hint(self.probe)
        return lines + self.trace._listing(self.probe) + self.trace._summary()


def explain(op: str, left: object, right: object) -> list[str] | None:
    """The pytest plugin's assertrepr hook: a failed comparison with a count or
    arguments from a Trace, told as a story; None for anything else."""
    for mine, other, side_op in ((left, right, op), (right, left, _FLIPPED.get(op, op))):
        if isinstance(mine, (Count, HitArgs, HitList)):
            return mine.explain(side_op, other)
    return None


_OP_WORDS = {"==": "", "!=": "not ", "<": "fewer than ", "<=": "at most ", ">": "more than ", ">=": "at least "}
_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}


def _wanted(op: str, expected: object) -> str:
    return f"{_OP_WORDS.get(op, op + ' ')}{expected!r}"


def _times(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _likeness(got: Args, expected: Args) -> int:
    """How many arguments are equal; a hit of another arity is least alike."""
    return sum(a == b for a, b in zip(got, expected, strict=True)) if len(got) == len(expected) else -1


def _differences(got: tuple[object, ...], expected: object) -> str:
    if not isinstance(expected, tuple):
        return ""
    if len(got) != len(expected):
        return f" ({_times(len(got), 'argument')}, expected {len(expected)})"
    differ = [str(i) for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b]
    return f" (argument{'s' if len(differ) > 1 else ''} {', '.join(differ)} differ{'' if len(differ) > 1 else 's'})"


def _type_hints(probe: str, got: tuple[object, ...], expected: object) -> list[str]:
    """A number where the test expected a string: the string was not declared."""
    if not isinstance(expected, tuple):
        return []
    hints = []
    for i, (a, b) in enumerate(zip(got, expected, strict=False)):
        if isinstance(b, (bytes, str)) and isinstance(a, int):
            hints.append(f"argument {i} is a number: to read it as a string, "
                         f"declare it: strings={{{probe!r}: {i}}}")
        elif isinstance(b, str) and isinstance(a, bytes):
            hints.append(f"argument {i} is bytes: compare it with {b.encode()!r}")
    return hints


def undeclared_strings(strings: Mapping[str, frozenset[int]], trace: Trace) -> list[str]:
    """Declared strings that name no armed probe, or an argument a probe lacks."""
    problems = []
    for probe, indexes in sorted(strings.items()):
        if probe not in trace.probes:
            problems.append("; ".join(filter(None, [f"strings= names {probe}, which uemu did not arm",
                                                    trace._near(probe)])))
            continue
        arity = max((len(args) for args in trace._args.get(probe, [])), default=None)
        beyond = sorted(i for i in indexes if arity is not None and i >= arity)
        if beyond:
            problems.append(f"strings= names argument {beyond[0]} of {probe}, "
                            f"which has {_times(arity or 0, 'argument')}")
    return problems

