"""uemu.fetch's decoding of a record: the one-``unpack`` decoder of integer arguments gives
what the trap path's readers give for the same register words and memory bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uemu import argspec
from uemu.arch import by_name
from uemu.fetch import NotFetchable, compile_args
from uemu.runtime import layout
from uemu.runtime.layout import FetchKind

REGISTERS = {
    "x86_64": ["%rax", "%ebx", "%cx", "%dl", "%rsp", "%r12", "%ah"],
    "i386": ["%eax", "%bx", "%cl", "%esp", "%ah"],
    "aarch64": ["x0", "w1", "sp", "x30"],
    "riscv64": ["a0", "s1", "sp", "ra"],
}
MEMORY = {"x86_64": "16(%rsp)", "i386": "-8(%ebp)", "aarch64": "[x2, 24]", "riscv64": "8(a1)"}


@st.composite
def spec_strings(draw: st.DrawFn, arch: str) -> str:
    """A probe's argument string: registers and memory of every integer size, signed or
    not, constants, a float now and then (which takes the readers' own step)."""
    specs = []
    for _ in range(draw(st.integers(0, 6))):
        size = draw(st.sampled_from([1, 2, 4, 8]))
        sign = draw(st.sampled_from(["", "-"]))
        kind = draw(st.sampled_from(["reg", "reg", "mem", "imm", "float"]))
        if kind == "reg":
            specs.append(f"{sign}{size}@{draw(st.sampled_from(REGISTERS[arch]))}")
        elif kind == "mem":
            specs.append(f"{sign}{size}@{MEMORY[arch]}")
        elif kind == "imm":
            specs.append(f"{sign}{size}@{'$' if arch in ('x86_64', 'i386') else ''}{draw(st.integers(-99, 99))}")
        else:
            specs.append(f"8f@{MEMORY[arch]}")
    return " ".join(specs)


def check(arch_name: str, args: str, data: st.DataObject) -> None:
    arch = by_name(arch_name)
    program = compile_args(args, arch, arch.jumps.frame, None, True)
    record = bytearray(program.record_size)
    expected: list[argspec.Value] = []
    at = layout.RECORD_HEADER.size
    ops = iter(program.ops)
    for spec in argspec.parse_all(args, arch):
        reader = argspec.make_reader(spec, arch, None, little_endian=True)
        op = next(ops) if spec.kind in ("reg", "mem") and spec.reg != argspec.ZERO_REGISTER else None
        if op is None or op.kind not in (FetchKind.REG, FetchKind.MEM):
            expected.append(reader(lambda name: 0, lambda address, size: b""))
            continue
        if op.kind == FetchKind.REG:
            names = [spec.reg]
            if spec.size > arch.word_size and spec.reg in arch.pair_high:  # i386: a pair, two ops
                names.append(arch.pair_high[spec.reg])
                next(ops)
            words = {name: data.draw(st.integers(0, (1 << 8 * arch.word_size) - 1)) for name in names}
            for name in names:
                struct.pack_into("<Q", record, at, words[name])
                at += 8
            expected.append(reader(lambda name, words=words: words.get(name, 0x1000), lambda address, size: b""))
            continue
        value = data.draw(st.binary(min_size=spec.size, max_size=spec.size))
        readable = data.draw(st.booleans())
        struct.pack_into("<I", record, at, spec.size if readable else 0)
        record[at + 8:at + 8 + spec.size] = value

        def read(address: int, size: int, value: bytes = value, readable: bool = readable) -> bytes:
            if not readable:
                raise OSError("unreadable")
            return value

        expected.append(reader(lambda name: 0x1000, read))
        at += 8 + -(-spec.size // 8) * 8
    buffer = bytes(64) + bytes(record)
    values, strings = program.decode(memoryview(buffer), 64)
    assert values == expected
    assert strings == {}


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(REGISTERS)).flatmap(lambda a: st.tuples(st.just(a), spec_strings(a))), st.data())
def test_a_record_decodes_to_what_the_readers_give(arch_args: tuple[str, str], data: st.DataObject) -> None:
    check(*arch_args, data)


def test_a_record_longer_than_a_stamp_can_say_keeps_the_trap() -> None:
    """A ring's stamp says a record's length in 13 bits of 8 bytes: a site whose strings
    would make a longer record keeps the trap (the runtime would record nothing)."""
    arch = by_name("x86_64")
    for count, fits in ((12, True), (16, False)):
        args = " ".join(["8@%rdi"] * count)
        strings = tuple(range(count))
        if fits:
            program = compile_args(args, arch, arch.jumps.frame, None, True, strings, layout.STR_MAX)
            assert program.record_size <= layout.RECORD_MAX
        else:
            with pytest.raises(NotFetchable, match="stamp"):
                compile_args(args, arch, arch.jumps.frame, None, True, strings, layout.STR_MAX)


@pytest.mark.parametrize(("args", "slots", "expected"), [
    ("-4@$42", [], [42]),
    ("-2@8(%rsp)", [(2, -3)], [-3]),
    ("-2@8(%rsp)", [(0, -3)], [None]),
    ("-8@%rcx -4@$42 4@8(%rsp) -1@%sil", [-7, (4, 9), 0x1FF], [-7, 42, 9, -1]),
    ("4@8(%rsp) -4@$-5 8@16(%rsp)", [(3, 1), (8, 2)], [None, -5, 2]),
])
def test_constants_registers_and_memory_come_back_in_the_specs_order(
        args: str, slots: list[int | tuple[int, int]], expected: list[int | None]) -> None:
    """The one-``unpack`` decoder picks each argument from where its layout put it (a
    register's word, a memory slot's status and value, a constant not in the record);
    a memory slot whose status is not its size is None."""
    arch = by_name("x86_64")
    program = compile_args(args, arch, arch.jumps.frame, None, True)
    record = bytearray(layout.RECORD_HEADER.size)
    for slot in slots:
        if isinstance(slot, tuple):
            record += struct.pack("<I4xq", *slot)
        else:
            record += struct.pack("<q", slot)
    assert len(record) == program.record_size
    assert program.decode(memoryview(bytes(8) + bytes(record)), 8) == (expected, {})
