"""``--format``: conversions against glibc's own snprintf (called through ctypes),
the escapes bpftrace takes, strings from a bytes-backed fake memory, and the
formats that must be refused before anything is traced."""

from __future__ import annotations

import ctypes
import math
import platform
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uemu.events import Event
from uemu.printf import FIELD_LIMIT, FormatError, PrintfFormat

LIBC = ctypes.CDLL(None)
MASK64 = (1 << 64) - 1


def c_double(value: float) -> object:
    """A double as a variadic argument of snprintf.  ctypes puts a c_double in a
    floating-point register, where x86_64 and aarch64 take variadic doubles; the
    RISC-V psABI passes them in integer registers, so there it goes as its bits."""
    if platform.machine() == "riscv64":
        return ctypes.c_uint64(struct.unpack("<Q", struct.pack("<d", value))[0])
    return ctypes.c_double(value)


def snprintf(fmt: str, *args: object) -> str:
    buffer = ctypes.create_string_buffer(4096)
    size = LIBC.snprintf(buffer, len(buffer), fmt.encode(), *args)
    assert 0 <= size < len(buffer)
    return buffer.raw[:size].decode("latin-1")


def event(args: list, memory: dict[int, bytes] | None = None) -> Event:
    """A hit whose ``read_string`` reads a fake memory: address -> bytes up to an unmapped end."""
    memory = memory or {}

    def read_string(address: int, limit: int) -> bytes | None:
        for start, data in memory.items():
            if start <= address < start + len(data):
                return data[address - start :].split(b"\0")[0][:limit]
        return None

    return Event(0, 1, 1, "/obj", "prov", "name", 0x1000, [], args, read_string)


def render(fmt: str, args: list, memory: dict[int, bytes] | None = None, strsize: int = 256) -> str:
    line = PrintfFormat(fmt, strsize).render(event(args, memory))
    assert line.endswith("\n")
    return line[:-1]


flags = st.text(alphabet="-+ #0", max_size=3)
fields = st.one_of(st.none(), st.integers(0, 30))


def spec(flag: str, width: int | None, precision: int | None, length: str, kind: str) -> str:
    return "%" + flag + ("" if width is None else str(width)) + ("" if precision is None else f".{precision}") \
        + length + kind


@given(flags, fields, fields, st.sampled_from("di"), st.integers(-(1 << 63), (1 << 63) - 1))
def test_signed_conversions_print_as_glibc(flag, width, precision, kind, value):
    assert render(spec(flag, width, precision, "", kind), [value]) == \
        snprintf(spec(flag, width, precision, "ll", kind), ctypes.c_longlong(value))


@given(flags, fields, fields, st.sampled_from("uxXo"), st.integers(-(1 << 63), MASK64))
def test_unsigned_conversions_print_as_glibc_over_64_bits(flag, width, precision, kind, value):
    assert render(spec(flag, width, precision, "", kind), [value]) == \
        snprintf(spec(flag, width, precision, "ll", kind), ctypes.c_ulonglong(value & MASK64))


@given(flags, fields, st.one_of(st.none(), st.integers(0, 17)), st.sampled_from("fFeEgG"),
       st.floats(allow_nan=False, width=64) | st.integers(-(1 << 53), 1 << 53))
def test_float_conversions_print_as_glibc(flag, width, precision, kind, value):
    assert render(spec(flag, width, precision, "", kind), [value]) == \
        snprintf(spec(flag, width, precision, "", kind), c_double(value))


@given(flags.filter(lambda f: "#" not in f), fields, fields,
       st.binary(max_size=40).map(lambda b: bytes(c for c in b if 0x20 <= c < 0x7F and c != 0x5C)))
def test_strings_print_as_glibc(flag, width, precision, text):
    assert render(spec(flag, width, precision, "", "s"), [0x5000], {0x5000: text + b"\0"}) == \
        snprintf(spec(flag, width, precision, "", "s"), ctypes.c_char_p(text))


@pytest.mark.parametrize("fmt, c_args, args", [
    ("%*d|%-*d|%*d", (5, 1, -4, 2, 3, 33), [5, 1, -4, 2, 3, 33]),
    ("%.*f|%*.*e", (2, c_double(3.14159), 10, 3, c_double(2.5)), [2, 3.14159, 10, 3, 2.5]),
    ("%.*d", (-1, 7), [-1, 7]),  # a negative precision is no precision
    ("%2$d %1$d %2$x", (7, 255), [7, 255]),
    ("%1$*2$d|%1$-*2$d|", (42, 6), [42, 6]),
])
def test_starred_and_numbered_fields_as_glibc(fmt, c_args, args):
    assert render(fmt, args) == snprintf(fmt, *c_args)


def test_length_modifiers_are_accepted_and_change_nothing():
    assert render("%lu %lld %hhd %zx %jd %td %Lf %qd", [1, -2, 300, 255, 4, 5, 1.5, 6]) == \
        "1 -2 300 ff 4 5 1.500000 6"


def test_strings_read_from_the_tracee():
    memory = {0x1000: b"java/lang/Object\x01garbage\0", 0x2000: b"red\x1b[31m \\x41 \xff\0", 0x3000: b"end"}
    # HotSpot passes (pointer, length) with no NUL at the length: %.*s in C order, or numbered.
    assert render("%.*s", [16, 0x1000], memory) == "java/lang/Object"
    assert render("%1$.*2$s", [0x1000, 9], memory) == "java/lang"
    assert render("%.4s|%-6.2s|%s", [0x1000, 0x1000, 0x3000], memory) == "java|ja    |end"
    # From the tracee: escaped, a literal backslash too; --strsize bounds a plain %s.
    assert render("%s", [0x2000], memory) == r"red\x1b[31m \\x41 \xff"
    assert render("%s", [0x1000], memory, strsize=4) == "java"
    assert render("%.0s|%.*s", [0x1000, 0, 0x1000], memory) == "|"


def test_a_string_that_cannot_be_read_prints_a_marker():
    assert render("%s %s %s %s", [0, 0x9999, -1, 1 << 63]) == \
        "(null) (unreadable 0x9999) (unreadable 0xffffffffffffffff) (unreadable 0x8000000000000000)"

    def failing(address: int, limit: int) -> bytes | None:
        raise OverflowError("offset")

    hit = Event(0, 1, 1, "/obj", "p", "n", 0, [], [0x10], failing)
    assert PrintfFormat("%s").render(hit) == "(unreadable 0x10)\n"


def test_missing_and_unreadable_arguments_print_a_question_mark():
    assert render("%d %5d %x|%-3c|", [None, 1]) == "?     1 ?|?  |"
    assert render("%d %d", []) == "? ?"
    assert render("%c%c%c", [65, 0x1B, 0x5C]) == r"A\x1b\\"


def test_nan_and_infinities_under_every_conversion():
    values = [math.nan, math.inf, -math.inf]
    assert render("%f %e %g", values) == "nan inf -inf"
    assert render("%d %x %5u|", values) == "nan inf  -inf|"


def test_bpftrace_escapes():
    assert render(r"a\tb\nc\\d\"e\x41\x4g\101\60\0|", []) == 'a\tb\nc\\d"eA\x04gA0\x00|'
    assert render(r"100%% of %d\r", [3]) == "100% of 3\r"


@pytest.mark.parametrize("fmt, why", [
    ("%q", "unsupported conversion at '%q'"),
    ("%", "unsupported conversion at '%'"),
    ("abc %", "unsupported conversion at '%'"),
    ("%5%", "takes no flags"),
    ("%999999999999d", f"width 999999999999 is larger than {FIELD_LIMIT}"),
    ("%.99999999999f", f"precision 99999999999 is larger than {FIELD_LIMIT}"),
    ("%1$d %d", "mix of numbered"),
    ("%d %1$d", "mix of numbered"),
    ("%1$*d", "mix of numbered"),
    ("%0$d", "position 0 is not 1 to 64"),
    (r"\q", r"invalid escape '\q'"),
    ("\\", "invalid escape"),
    (r"\400", r"octal escape \400 is larger than \377"),
])
def test_formats_refused_when_compiled(fmt, why):
    with pytest.raises(FormatError, match=None) as refused:
        PrintfFormat(fmt)
    assert why in str(refused.value)


def test_string_size_is_bounded():
    with pytest.raises(FormatError):
        PrintfFormat("%s", FIELD_LIMIT + 1)
    assert PrintfFormat("%s", FIELD_LIMIT).strsize == FIELD_LIMIT


def test_a_starred_field_is_bounded_at_run_time():
    assert len(render("%*d", [1 << 40, 1])) == FIELD_LIMIT


def test_escaped_literal_text_for_chrome_names():
    fmt = PrintfFormat("a\\tb→%s", escape_literal=True)
    memory = {0x10: b"x\\y\0"}
    assert fmt.text(event([0x10], memory)) == r"a\tb\xe2\x86\x92x\\y"
