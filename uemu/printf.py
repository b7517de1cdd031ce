"""``--format``: a printf-style line per hit, over the hit's arguments.

The language is C's printf (as bpftrace's ``printf`` takes it) over the probe's
arguments, with what tracing needs:

- ``%d %i %u %x %X %o %c %p %f %F %e %E %g %G %s %%`` with flags ``-+ #0``,
  width and precision; ``%u %x %X %o`` show a value as unsigned 64-bit;
  length modifiers (``hh h l ll q j z t L``) are accepted and ignored, every
  value has its argument spec's size and sign already;
- ``%s`` reads a NUL-terminated string at the argument's address in the tracee,
  at most ``strsize`` bytes; ``%.Ns`` at most N bytes; ``%.*s`` takes N from the
  argument before the pointer, as C does.  POSIX positions name arguments in any
  order: ``%1$.*2$s`` is the string at argument 1 cut to argument 2 bytes, the
  (pointer, length) pairs of HotSpot's probes;
- an argument that could not be read, or is missing, prints ``?``; a null
  pointer under ``%s`` ``(null)``; a pointer whose first byte cannot be read
  ``(unreadable 0xADDR)``: never garbage, never an error;
- backslash escapes in the format as bpftrace has them: ``\\n \\t \\r \\\\ \\"``,
  ``\\xH[H]`` and octal ``\\N[NN]``; any other is refused as bpftrace refuses it.

Strings and characters from the tracee are escaped (``events.escape``).  A
format is checked whole when it is compiled, before anything is traced; every
width, precision and length is bounded by ``FIELD_LIMIT``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .events import Event, Value, escape

FIELD_LIMIT = 1 << 20
"""Largest width, precision or string length (bytes) a format or --strsize may ask."""

MASK64 = (1 << 64) - 1

_CONVERSION = re.compile(
    r"%(?:(?P<pos>\d+)\$)?(?P<flags>[-+ #0]*)"
    r"(?P<width>\*(?:\d+\$)?|\d+)?"
    r"(?:\.(?P<precision>\*(?:\d+\$)?|\d*))?"
    r"(?:hh|h|ll|l|q|j|z|t|L)?"
    r"(?P<kind>[diuxXocspfFeEgG%])"
)
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.?)", re.DOTALL)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"'}
_MAX_POSITION = 64
"""sys/sdt.h passes at most 12 arguments; a larger position is a typo."""


class FormatError(ValueError):
    """A format that cannot be compiled; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Conversion:
    """One ``%...`` of a format, with the indices of the arguments it takes."""

    kind: str
    flags: str
    arg: int
    width: int | None = None
    width_arg: int | None = None
    precision: int | None = None
    precision_arg: int | None = None
    fast: str | None = None
    """A Python ``%`` spec that prints an integer as C would, when one exists."""

    def render(self, args: list[Value], event: Event, strsize: int) -> str:
        if self.fast is not None:
            value = args[self.arg] if self.arg < len(args) else None
            if type(value) is int and value:  # 0 is where "%.0d", "%#x" and "%#o" differ
                return self.fast % (value & MASK64 if self.kind in "uxXo" else value)
        width, flags = self.width, self.flags
        if self.width_arg is not None:
            given = _int_arg(args, self.width_arg)
            width = None if given is None else min(abs(given), FIELD_LIMIT)
            if given is not None and given < 0:
                flags += "-"  # C: a negative width is a '-' flag and a positive width
        precision = self.precision
        if self.precision_arg is not None:
            given = _int_arg(args, self.precision_arg)
            precision = None if given is None or given < 0 else min(given, FIELD_LIMIT)
        value = args[self.arg] if self.arg < len(args) else None
        return _convert(self.kind, flags, width, precision, value, event, strsize)


class PrintfFormat:
    """A compiled ``--format``: ``render(event)`` gives the line, newline included.

    ``escape_literal`` escapes the format's own text too, for outputs whose
    every string must be printable ASCII (the Chrome trace's event names).
    """

    def __init__(self, fmt: str, strsize: int = 256, *, escape_literal: bool = False):
        if not 0 <= strsize <= FIELD_LIMIT:
            raise FormatError(f"a string size must be 0 to {FIELD_LIMIT}")
        self.strsize = strsize
        self.pieces: list[str | Conversion] = []
        self._positional: bool | None = None
        self._next_arg = 0
        pos = 0
        for match in _CONVERSION.finditer(fmt):
            self._literal(fmt[pos : match.start()], escape_literal)
            if match["kind"] == "%":
                if match.group(0) != "%%":
                    raise FormatError(f"{match.group(0)!r}: '%%' takes no flags, width or position")
                self.pieces.append("%")
            else:
                self.pieces.append(self._conversion(match))
            pos = match.end()
        self._literal(fmt[pos:], escape_literal)

    @property
    def string_args(self) -> tuple[int, ...]:
        """Indexes of the arguments printed as strings (``%s``): the jump path copies
        them at the hit."""
        return tuple(sorted({p.arg for p in self.pieces if isinstance(p, Conversion) and p.kind == "s"}))

    def render(self, event: Event) -> str:
        return self.text(event) + "\n"

    def text(self, event: Event) -> str:
        """The hit's line without its newline."""
        args = event.args or []
        return "".join(
            piece if isinstance(piece, str) else piece.render(args, event, self.strsize)
            for piece in self.pieces
        )

    def _literal(self, text: str, escape_literal: bool) -> None:
        if "%" in text:
            where = text[text.index("%") :]
            raise FormatError(f"unsupported conversion at {where[:12]!r}")
        text = _ESCAPE.sub(_unescape, text)
        if text:
            self.pieces.append(escape(text) if escape_literal else text)

    def _conversion(self, match: re.Match[str]) -> Conversion:
        spec = match.group(0)
        numbered = match["pos"] is not None
        if self._positional is None:
            self._positional = numbered
        elif self._positional != numbered:
            raise FormatError(f"{spec!r}: mix of numbered (%N$) and unnumbered conversions")
        # C order: the arguments of a starred width and precision come before the value's.
        width, width_arg = self._field(match["width"], spec, "width")
        precision, precision_arg = self._field(match["precision"], spec, "precision")
        arg = _position(match["pos"], spec) if numbered else self._take()
        kind, flags = match["kind"], match["flags"]
        fast = None
        if kind in "diuxX" and width_arg is None and precision_arg is None:
            # Python's % is C's here once the flags C ignores are gone: '0' with a
            # precision, '+' and ' ' on unsigned conversions.
            if precision is not None:
                flags = flags.replace("0", "")
            if kind in "uxX":
                flags = flags.replace("+", "").replace(" ", "")
            fast = _spec(flags, width, precision, "d" if kind in "diu" else kind)
        return Conversion(kind, match["flags"], arg, width, width_arg, precision, precision_arg, fast)

    def _take(self) -> int:
        self._next_arg += 1
        return self._next_arg - 1

    def _field(self, text: str | None, spec: str, what: str) -> tuple[int | None, int | None]:
        """A width or precision: (fixed value, None) or (None, argument index)."""
        if text is None:
            return None, None
        if text.startswith("*"):
            numbered = text[1:].rstrip("$")
            if bool(numbered) != self._positional:
                raise FormatError(f"{spec!r}: mix of numbered (*N$) and unnumbered fields")
            return None, (_position(numbered, spec) if numbered else self._take())
        value = int(text) if text else 0  # C: "%.s" is precision 0
        if value > FIELD_LIMIT:
            raise FormatError(f"{spec!r}: {what} {value} is larger than {FIELD_LIMIT}")
        return value, None


def _position(text: str, spec: str) -> int:
    number = int(text)
    if not 1 <= number <= _MAX_POSITION:
        raise FormatError(f"{spec!r}: argument position {number} is not 1 to {_MAX_POSITION}")
    return number - 1


def _unescape(match: re.Match[str]) -> str:
    body = match.group(1)
    if body in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[body]
    if body[:1] == "x" and len(body) > 1:
        return chr(int(body[1:], 16))
    if body and body[0] in "01234567":
        value = int(body, 8)
        if value > 0xFF:
            raise FormatError(f"octal escape \\{body} is larger than \\377")
        return chr(value)
    raise FormatError(f"invalid escape '\\{body}' (bpftrace's: \\n \\t \\r \\\\ \\\" \\xHH \\NNN)")


def _int_arg(args: list[Value], index: int) -> int | None:
    value = args[index] if index < len(args) else None
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return int(value)


def _convert(kind: str, flags: str, width: int | None, precision: int | None, value: Value,
             event: Event, strsize: int) -> str:
    if value is None:
        return _pad("?", flags, width)
    if kind in "fFeEgG":
        number = float(value)
        if not math.isfinite(number):
            flags = flags.replace("0", "")  # C pads "inf" and "nan" with spaces
        return _spec(flags, width, precision, kind) % number
    if isinstance(value, float) and not math.isfinite(value):
        return _pad(repr(value), flags, width)  # "nan", "inf": no integer holds them
    number = int(value)
    if kind in "diuxXo":
        return _integer(kind, flags, width, precision, number)
    unsigned = number & MASK64
    if kind == "p":
        return _pad(f"{unsigned:#x}", flags, width)
    if kind == "c":
        return _pad(escape(bytes([unsigned & 0xFF])), flags, width)
    return _pad(_string(event, unsigned, strsize if precision is None else precision), flags, width)


def _integer(kind: str, flags: str, width: int | None, precision: int | None, number: int) -> str:
    """C's integer conversions, written out: Python's ``%`` differs on ``%.0d`` of
    0, ``%#o``, ``%#x`` of 0 and sign flags on unsigned conversions."""
    if kind in "di":
        sign = "-" if number < 0 else "+" if "+" in flags else " " if " " in flags else ""
        number = abs(number)
    else:
        sign, number = "", number & MASK64
    digits = "" if precision == 0 and number == 0 else format(number, "d" if kind in "diu" else kind)
    if precision is not None:
        digits = digits.rjust(precision, "0")
    prefix = ""
    if "#" in flags:
        if kind == "o" and not digits.startswith("0"):
            digits = "0" + digits
        elif kind in "xX" and number:
            prefix = "0" + kind
    head = sign + prefix
    if width is not None and "0" in flags and "-" not in flags and precision is None:
        digits = digits.rjust(width - len(head), "0")
    return _pad(head + digits, flags, width)


def _string(event: Event, address: int, limit: int) -> str:
    """``%s``: the string at ``address``, escaped, or a marker that says why not."""
    if address == 0:
        return "(null)"
    text = None
    if event.read_string is not None and address < 1 << 63:  # no user address is higher
        try:
            text = event.read_string(address, limit) if limit else b""
        except (OSError, OverflowError, ValueError):
            text = None  # whatever the tracee's memory did, the line goes on
    return f"(unreadable {address:#x})" if text is None else escape(text)


def _spec(flags: str, width: int | None, precision: int | None, kind: str) -> str:
    return "%" + flags + ("" if width is None else str(width)) + ("" if precision is None else f".{precision}") + kind


def _pad(text: str, flags: str, width: int | None) -> str:
    if width is None or len(text) >= width:
        return text
    return text.ljust(width) if "-" in flags else text.rjust(width)
