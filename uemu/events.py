"""The record of one probe hit, and the ways the CLI prints it.

Everything that comes from the tracee (names from its notes, strings from its
memory) is escaped before it reaches a terminal: no control sequence passes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

Value = int | float | None


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
        return json.dumps(
            {
                "ts_ns": self.ts_ns,
                "pid": self.pid,
                "tid": self.tid,
                "object": self.object,
                "provider": self.provider,
                "name": self.name,
                "address": self.address,
                "args": self.args,
                "specs": self.specs,
            },
            allow_nan=True,
        )


_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def escape(text: str | bytes) -> str:
    """Printable ASCII stays; everything else becomes a C-style escape."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    text = text.replace("\\", "\\\\")
    return _UNPRINTABLE.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


def format_value(value: Value) -> str:
    if value is None:
        return "?"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def text_line(event: Event) -> str:
    """``SECONDS.MICROS PID/TID provider:name ARG...`` (CLOCK_MONOTONIC seconds)."""
    seconds, ns = divmod(event.ts_ns, 1_000_000_000)
    head = f"{seconds}.{ns // 1000:06d} {event.pid}/{event.tid} {escape(event.provider)}:{escape(event.name)}"
    if not event.args:
        return head + "\n"
    return head + " " + " ".join(map(format_value, event.args)) + "\n"


# ---- --format ----------------------------------------------------------------

_CONVERSION = re.compile(r"%([-+ #0]*)(\d+)?(?:\.(\d+))?([diuxXocspf%])")
_BACKSLASH = {"n": "\n", "t": "\t", "\\": "\\", "r": "\r", '"': '"'}


@dataclass(frozen=True)
class Conversion:
    flags: str
    width: str
    precision: str | None
    kind: str

    def spec(self, kind: str) -> str:
        precision = f".{self.precision}" if self.precision is not None else ""
        return f"%{self.flags}{self.width}{precision}{kind}"


class PrintfFormat:
    """A printf-style format applied to a hit's arguments in order.

    ``%d %i %u %x %X %o %c %p %f`` format numbers (``%u %x %X %o`` as unsigned
    64-bit), ``%s`` reads a NUL-terminated string at the argument's address
    from the tracee (at most ``strsize`` bytes), ``%%`` is a percent sign.
    Backslash escapes ``\\n \\t \\\\`` in the format work as in printf(1).
    """

    def __init__(self, fmt: str, strsize: int = 256):
        self.strsize = strsize
        self.pieces: list[str | Conversion] = []
        pos = 0
        fmt = re.sub(r"\\(.)", lambda m: _BACKSLASH.get(m.group(1), m.group(0)), fmt)
        for match in _CONVERSION.finditer(fmt):
            self.pieces.append(fmt[pos : match.start()])
            flags, width, precision, kind = match.groups()
            if kind == "%":
                self.pieces.append("%")
            else:
                self.pieces.append(Conversion(flags, width or "", precision, kind))
            pos = match.end()
        self.pieces.append(fmt[pos:])
        if "%" in "".join(p for p in self.pieces if isinstance(p, str) and p != "%"):
            raise ValueError(f"unsupported conversion in format {fmt!r}")
        self.needs_strings = any(isinstance(p, Conversion) and p.kind == "s" for p in self.pieces)

    def render(self, event: Event) -> str:
        args = iter(event.args or ())
        out = []
        for piece in self.pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            value = next(args, None)
            out.append(self._convert(piece, value, event))
        return "".join(out) + "\n"

    def _convert(self, conv: Conversion, value: Value, event: Event) -> str:
        if value is None:
            return conv.spec("s") % "?"
        kind = conv.kind
        if kind == "f":
            return conv.spec("f") % float(value)
        number = int(value)
        if kind in "di":
            return conv.spec("d") % number
        if kind in "uxXo":
            return conv.spec("d" if kind == "u" else kind) % (number & 0xFFFFFFFFFFFFFFFF)
        if kind == "p":
            return conv.spec("s") % f"{number & 0xFFFFFFFFFFFFFFFF:#x}"
        if kind == "c":
            return conv.spec("s") % escape(bytes([number & 0xFF]))
        # %s: the argument is a pointer into the tracee
        if event.read_string is None or number == 0:
            return conv.spec("s") % ("(null)" if number == 0 else "?")
        text = event.read_string(number, self.strsize)
        return conv.spec("s") % ("?" if text is None else escape(text))
