"""Properties of the argument-spec parser and readers over generated input."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from uemu.arch import all_arches, by_name
from uemu.argspec import ArgSpec, make_reader, parse, parse_all

ARCH_NAMES = sorted(arch.name for arch in all_arches())
SPEC_ALPHABET = "-0123456789f@%$#[](),:+ .xabcdeilmnoprstuwzGOTF\t"
spec_text = st.text(alphabet=SPEC_ALPHABET, max_size=40) | st.text(max_size=40)


def unmapped(address: int, size: int) -> bytes:
    raise OSError("unmapped")


def zeros(address: int, size: int) -> bytes:
    return bytes(size)


@given(spec_text, st.sampled_from(ARCH_NAMES))
def test_parse_and_read_never_raise(text: str, arch: str) -> None:
    spec = parse(text, arch)
    assert spec.raw == text
    assert spec.kind in ("reg", "mem", "imm", "unparsed")
    assert spec.parsed == (spec.kind != "unparsed")
    reader = make_reader(spec, arch, lambda name: 0x1000, little_endian=True)
    for read_memory in (unmapped, zeros):
        result = reader(lambda name: 0x2000, read_memory)
        assert result is None or isinstance(result, int | float)


@given(spec_text, st.sampled_from(ARCH_NAMES))
def test_parse_all_never_raises_and_keeps_text(text: str, arch: str) -> None:
    for spec in parse_all(text, arch):
        assert spec.raw and spec.raw in text


X86_64 = by_name("x86_64")
GPR64 = [name for name, view in X86_64.spec_registers.items() if view.width == 8 and name != "rip"]
INDEXES = [name for name in GPR64 if name != "rsp"]
symbols = st.from_regex(r"[A-Za-z_.][A-Za-z0-9_.]{0,8}", fullmatch=True)
prefixes = st.tuples(st.sampled_from([1, 2, 4, 8]), st.booleans())


def prefix_text(size: int, signed: bool) -> str:
    return f"{'-' if signed else ''}{size}@"


@given(prefixes, st.sampled_from(sorted(X86_64.spec_registers)))
def test_att_registers_round_trip(prefix: tuple[int, bool], name: str) -> None:
    size, signed = prefix
    view = X86_64.spec_registers[name]
    text = f"{prefix_text(size, signed)}%{name}"
    assert parse(text, X86_64) == ArgSpec(
        raw=text, size=size, signed=signed, kind="reg", reg=view.canonical,
        reg_bytes=view.width, reg_shift=view.shift,
    )


@given(
    prefixes,
    st.integers(-(1 << 31), (1 << 31) - 1),
    st.none() | symbols,
    st.none() | st.sampled_from(GPR64),
    st.none() | st.tuples(st.sampled_from(INDEXES), st.sampled_from([None, 1, 2, 4, 8])),
)
def test_att_memory_round_trips(prefix, offset, symbol, base, index) -> None:
    size, signed = prefix
    if base is None and index is None:
        base = "rbp"
    displacement = "" if offset == 0 and symbol is None else (
        str(offset) if symbol is None else f"{symbol}{offset:+d}"
    )
    inside = f"%{base}" if base else ""
    if index is not None:
        inside += f",%{index[0]}" + (f",{index[1]}" if index[1] else "")
    text = f"{prefix_text(size, signed)}{displacement}({inside})"
    assert parse(text, X86_64) == ArgSpec(
        raw=text, size=size, signed=signed, kind="mem", base=base,
        index=index[0] if index else None, index_bytes=8 if index else 0,
        scale=index[1] or 1 if index else 1, offset=offset, symbol=symbol,
    )


@given(prefixes, st.integers(-(1 << 63), (1 << 64) - 1))
def test_att_immediates_read_as_the_type_says(prefix: tuple[int, bool], number: int) -> None:
    size, signed = prefix
    spec = parse(f"{prefix_text(size, signed)}${number}", X86_64)
    expected = int.from_bytes((number % (1 << 8 * size)).to_bytes(size, "little"), "little", signed=signed)
    assert make_reader(spec, X86_64)(lambda name: 0, unmapped) == expected


@given(prefixes, st.sampled_from(sorted(X86_64.spec_registers)), st.integers(0, (1 << 64) - 1))
def test_att_register_values_are_their_low_bytes(prefix, name: str, register: int) -> None:
    size, signed = prefix
    view = X86_64.spec_registers[name]
    spec = parse(f"{prefix_text(size, signed)}%{name}", X86_64)
    low_bytes = (register >> view.shift).to_bytes(8, "little")[:size]
    expected = int.from_bytes(low_bytes, "little", signed=signed)
    assert make_reader(spec, X86_64)({view.canonical: register}.__getitem__, unmapped) == expected


AARCH64 = by_name("aarch64")
XREGS = [f"x{n}" for n in range(31)] + ["sp"]


@given(prefixes, st.sampled_from(XREGS), st.none() | st.integers(-4096, 4095), st.booleans())
def test_aarch64_bracket_memory_round_trips(prefix, base: str, offset: int | None, hash_sign: bool) -> None:
    size, signed = prefix
    inside = base if offset is None else f"{base}, {'#' if hash_sign else ''}{offset}"
    text = f"{prefix_text(size, signed)}[{inside}]"
    assert parse(text, AARCH64) == ArgSpec(
        raw=text, size=size, signed=signed, kind="mem", base=base, offset=offset or 0,
    )
    assert [spec.raw for spec in parse_all(f"{text} 8@x0 {text}", AARCH64)] == [text, "8@x0", text]
