"""Reading argument values from a dict of registers and a bytes-backed memory."""

from __future__ import annotations

import ctypes
import errno
import math
import os
import platform
import struct

import pytest

from uemu.argspec import ReadMemory, make_reader, parse, read_value

GARBAGE_HIGH = 0x5A5A5A5A_00000000  # high bits a narrower view must ignore


def memory(base: int, data: bytes) -> ReadMemory:
    """Tracee memory holding ``data`` at ``base``; anything else is unmapped."""

    def read_memory(address: int, size: int) -> bytes:
        start = address - base
        if start < 0 or start + size > len(data):
            raise OSError(errno.EIO, f"unmapped {address:#x}")
        return data[start:start + size]

    return read_memory


NO_MEMORY = memory(0, b"")


def value(spec: str, arch: str, registers: dict[str, int], read_memory: ReadMemory = NO_MEMORY,
          symbols: dict[str, int] | None = None, **options):
    return read_value(parse(spec, arch), arch, registers.__getitem__, read_memory,
                      None if symbols is None else symbols.get, **options)


# --------------------------------------------------------------------------
# Integers: the size before @ governs; sign- or zero-extension by the sign
# --------------------------------------------------------------------------

FULL = 0xFEDCBA98_87654321  # every byte has its top bit set except 0x43/0x21


@pytest.mark.parametrize(("spec", "expected"), [
    ("1@%rdi", 0x21),
    ("-1@%rdi", 0x21),
    ("2@%rdi", 0x4321),
    ("-2@%rdi", 0x4321),
    ("4@%rdi", 0x87654321),
    ("-4@%rdi", 0x87654321 - (1 << 32)),
    ("8@%rdi", FULL),
    ("-8@%rdi", FULL - (1 << 64)),
    # the register view does not narrow or widen what the size says
    ("-4@%dil", 0x87654321 - (1 << 32)),
    ("1@%edi", 0x21),
    ("%edi", 0x87654321),  # no prefix: the view's width, unsigned
    ("%rdi", FULL),
])
def test_register_integer_widths(spec: str, expected: int) -> None:
    assert value(spec, "x86_64", {"rdi": FULL}) == expected


@pytest.mark.parametrize(("spec", "register", "expected"), [
    ("-1@%rdi", 0x80, -128),
    ("1@%rdi", 0x80, 128),
    ("-1@%rdi", 0x7F, 127),
    ("-2@%rdi", 0xFFFF, -1),
    ("2@%rdi", 0xFFFF, 65535),
    ("-4@%edi", 0xFFFFFFF6, -10),
    ("-4@%edi", GARBAGE_HIGH | 0xFFFFFFF6, -10),
    ("-8@%rdi", (1 << 63), -(1 << 63)),
])
def test_register_sign_extension(spec: str, register: int, expected: int) -> None:
    assert value(spec, "x86_64", {"rdi": register}) == expected


def test_high_byte_view() -> None:
    registers = {"rax": 0x11_22_83_44}
    assert value("%ah", "x86_64", registers) == 0x83
    assert value("-1@%ah", "x86_64", registers) == 0x83 - 256
    assert value("%al", "x86_64", registers) == 0x44


@pytest.mark.parametrize("size", [1, 2, 4, 8])
@pytest.mark.parametrize(("arch", "order"), [("x86_64", "little"), ("ppc64", "big"), ("s390x", "big"),
                                             ("ppc64le", "little")])
def test_memory_integers_every_size_and_order(size: int, arch: str, order: str) -> None:
    stored = (1 << 8 * size) - 3  # -3 when signed
    data = b"\xee" * 8 + stored.to_bytes(size, order) + b"\xee" * 8
    base = {"x86_64": "rbp", "ppc64": "r31", "s390x": "r11", "ppc64le": "r31"}[arch]
    operand = {"x86_64": "8(%rbp)", "ppc64": "8(31)", "s390x": "8(%r11)", "ppc64le": "8(%r31)"}[arch]
    registers = {base: 0x7000}
    read_memory = memory(0x7000, data)
    assert value(f"{size}@{operand}", arch, registers, read_memory) == stored
    assert value(f"-{size}@{operand}", arch, registers, read_memory) == -3


@pytest.mark.parametrize(("arch", "spec", "expected"), [
    # gcc prints constants of unsigned types as signed numbers (observed)
    ("x86_64", "4@$-202182160", 0xF3F2F1F0),
    ("x86_64", "1@$-127", 129),
    ("x86_64", "-1@$-127", -127),
    ("x86_64", "8@$-1", (1 << 64) - 1),
    ("x86_64", "-4@$-1", -1),
    ("x86_64", "-2@$-7", -7),
    ("x86_64", "2@$-7", 65529),
    ("x86_64", "-4@$5", 5),
    ("x86_64", "-8@$140737488355327", 140737488355327),
    ("x86_64", "$0x10", 16),
    ("i386", "-8@$140737488355327", 140737488355327),
    ("aarch64", "4@-202182160", 0xF3F2F1F0),
    ("arm", "1@#-127", 129),
    ("ppc64le", "2@i-7", 65529),
    ("ppc64le", "-4@i42", 42),
    ("s390x", "-8@-693", -693),
    ("riscv64", "4@-1", 0xFFFFFFFF),
    ("mips64", "-4@5", 5),
    ("loongarch64", "1@300", 44),
])
def test_immediates(arch: str, spec: str, expected: int) -> None:
    assert value(spec, arch, {}) == expected


# --------------------------------------------------------------------------
# Register pairs on 32-bit ABIs
# --------------------------------------------------------------------------

def test_i386_pair_follows_gcc_order() -> None:
    registers = {"ecx": 0xFFFFFFFE, "ebx": 0xFFFFFFFF, "eax": 0x89ABCDEF, "edx": 0x01234567}
    assert value("-8@%ecx", "i386", registers) == -2  # ebx:ecx
    assert value("8@%eax", "i386", registers) == 0x01234567_89ABCDEF  # edx:eax
    assert value("-4@%ecx", "i386", registers) == -2  # one register when it fits


def test_arm_pair_is_the_next_register() -> None:
    registers = {"r2": 0x00000001, "r3": 0x80000000, "r6": 0xFFFFFFFF, "r7": 0x7FFFFFFF}
    assert value("-8@r2", "arm", registers) == -(1 << 63) + 1
    assert value("8@r6", "arm", registers) == (1 << 63) - 1


def test_double_in_a_register_pair() -> None:
    low, high = struct.unpack("<II", struct.pack("<d", -2.75))
    assert value("8f@%eax", "i386", {"eax": low, "edx": high}) == -2.75
    assert value("8f@r4", "arm", {"r4": low, "r5": high}) == -2.75


@pytest.mark.parametrize(("arch", "spec"), [
    ("i386", "-8@%ebp"),  # no pair partner
    ("i386", "12f@%eax"),  # long double named by one register (gcc -O0 warning)
    ("x86_64", "16f@%rax"),  # observed at -O0 with "unsupported size for integer register"
    ("aarch64", "16f@x12"),  # observed
    ("ppc64le", "16f@28"),  # observed
])
def test_values_wider_than_their_registers_are_unreadable(arch: str, spec: str) -> None:
    registers = {name: 1 for name in ("eax", "edx", "ebp", "esp", "rax", "rdx", "x12", "x13", "r28", "r29")}
    assert value(spec, arch, registers) is None


# --------------------------------------------------------------------------
# Floats
# --------------------------------------------------------------------------

def test_float_in_general_register_uses_its_low_bytes() -> None:
    (single_bits,) = struct.unpack("<I", struct.pack("<f", 2.5))
    (double_bits,) = struct.unpack("<Q", struct.pack("<d", 1.5))
    assert value("4f@%r11d", "x86_64", {"r11": GARBAGE_HIGH | single_bits}) == 2.5
    assert value("8f@%r10", "x86_64", {"r10": double_bits}) == 1.5
    assert value("4f@t1", "riscv64", {"t1": GARBAGE_HIGH | single_bits}) == 2.5
    assert value("8f@0", "ppc64", {"r0": double_bits}) == 1.5  # registers have no byte order


@pytest.mark.parametrize(("arch", "operand", "base", "pack"), [
    ("x86_64", "-8(%rbp)", "rbp", "<"),
    ("s390x", "-8(%r11)", "r11", ">"),
    ("ppc64", "-8(31)", "r31", ">"),
    ("aarch64", "[sp, -8]", "sp", "<"),
])
def test_floats_in_memory(arch: str, operand: str, base: str, pack: str) -> None:
    read_memory = memory(0x1000, struct.pack(pack + "d", -0.1) + struct.pack(pack + "f", 3.25))
    registers = {base: 0x1008}
    assert value(f"8f@{operand}", arch, registers, read_memory) == -0.1
    registers = {base: 0x1010}
    assert value(f"4f@{operand}", arch, registers, read_memory) == 3.25


def test_arm_float_immediate() -> None:
    assert value("8f@#1.5e+0", "arm", {}) == 1.5  # observed
    assert value("4f@#-2.5", "arm", {}) == -2.5


def x87(negative: bool, exponent: int, mantissa: int, size: int = 16) -> bytes:
    """An x87 80-bit extended value, padded to ``size`` bytes as gcc stores it."""
    packed = mantissa.to_bytes(8, "little") + (exponent | negative << 15).to_bytes(2, "little")
    return packed + b"\0" * (size - 10)


@pytest.mark.parametrize(("stored", "expected"), [
    (x87(False, 16383, 0xC000000000000000), 1.5),
    (x87(True, 16384, 0x9000000000000000), -2.25),
    (x87(False, 0, 0), 0.0),
    (x87(False, 0x7FFF, 0x8000000000000000), float("inf")),
    (x87(True, 0x7FFF, 0x8000000000000000), float("-inf")),
    (x87(False, 16383 + 2000, 0x8000000000000000), float("inf")),  # beyond double range
    (x87(False, 16383 - 2000, 0x8000000000000000), 0.0),  # below double range
    (x87(False, 16383, 0x8000000000000401), 1.0 + 2.0 ** -52),  # rounds to nearest, up
    (x87(False, 16383, 0x8000000000000400), 1.0),  # tie rounds to even
])
def test_x87_long_double(stored: bytes, expected: float) -> None:
    read_memory = memory(0x2000, stored)
    assert value("16f@(%rax)", "x86_64", {"rax": 0x2000}, read_memory) == expected
    read_memory = memory(0x2000, stored[:12])
    assert value("12f@(%eax)", "i386", {"eax": 0x2000}, read_memory) == expected


def test_negative_zero_and_denormals_keep_the_sign() -> None:
    for stored in (x87(True, 0, 0), x87(True, 0, 1)):
        result = value("16f@(%rax)", "x86_64", {"rax": 0x2000}, memory(0x2000, stored))
        assert math.copysign(1.0, result) == -1.0 and result == 0.0
    result = value("16f@[x0]", "aarch64", {"x0": 0x3000},
                   memory(0x3000, binary128(True, 0, 5).to_bytes(16, "little")))
    assert math.copysign(1.0, result) == -1.0 and result == 0.0


def test_x87_nan() -> None:
    read_memory = memory(0x2000, x87(False, 0x7FFF, 0xC000000000000000))
    result = value("16f@(%rax)", "x86_64", {"rax": 0x2000}, read_memory)
    assert result != result


# How each host's compiler names a 16-byte long double in memory, and the register.
HOST_LONG_DOUBLE = {
    "x86_64": ("16f@(%rax)", "x86_64", "rax"),  # x87 extended, stored in 16 bytes
    "aarch64": ("16f@[x0]", "aarch64", "x0"),  # IEEE binary128
    "riscv64": ("16f@0(a0)", "riscv64", "a0"),  # IEEE binary128
}


@pytest.mark.skipif(platform.machine() not in HOST_LONG_DOUBLE,
                    reason=f"no 16-byte long double format known for {platform.machine()}")
@pytest.mark.parametrize("number", [1.0, -1.5, 3.141592653589793, 1e-310, 6.02e23, -0.0])
def test_long_double_matches_the_host(number: float) -> None:
    """The host's own C long double, as its compiler stores it, reads back exactly."""
    spec, arch, register = HOST_LONG_DOUBLE[platform.machine()]
    stored = bytes(ctypes.c_longdouble(number))
    assert len(stored) == 16
    assert value(spec, arch, {register: 0x2000}, memory(0x2000, stored)) == number


def binary128(negative: bool, exponent: int, fraction: int) -> int:
    return negative << 127 | exponent << 112 | fraction


@pytest.mark.parametrize(("bits", "expected"), [
    (binary128(False, 16383, 1 << 111), 1.5),
    (binary128(True, 16384, 1 << 109), -2.25),
    (binary128(False, 0, 0), 0.0),
    (binary128(False, 0x7FFF, 0), float("inf")),
    (binary128(False, 16383, (1 << 112 - 53) | 1), 1.0 + 2.0 ** -52),  # just above the tie: up
    (binary128(False, 16383, 1 << 112 - 53), 1.0),  # tie to even
])
@pytest.mark.parametrize(("arch", "order"), [("aarch64", "little"), ("s390x", "big"), ("riscv64", "little")])
def test_binary128_long_double(bits: int, expected: float, arch: str, order: str) -> None:
    read_memory = memory(0x3000, bits.to_bytes(16, order))
    operand = {"aarch64": "[x4, 32]", "s390x": "32(%r4)", "riscv64": "32(a4)"}[arch]
    registers = {{"aarch64": "x4", "s390x": "r4", "riscv64": "a4"}[arch]: 0x3000 - 32}
    assert value(f"16f@{operand}", arch, registers, read_memory) == expected


def test_mips64_long_double_follows_the_file_byte_order() -> None:
    bits = binary128(False, 16383, 1 << 111)
    read_memory = memory(0x3000, bits.to_bytes(16, "big"))
    assert value("16f@0($6)", "mips64", {"r6": 0x3000}, read_memory, little_endian=False) == 1.5


@pytest.mark.parametrize(("arch", "pack"), [("ppc64le", "<"), ("ppc64", ">")])
def test_ppc_long_double_is_a_double_pair(arch: str, pack: str) -> None:
    read_memory = memory(0x4000, struct.pack(pack + "2d", 1.0, 2.0 ** -60))
    assert value("16f@0(8)", arch, {"r8": 0x4000}, read_memory) == 1.0 + 2.0 ** -60


# --------------------------------------------------------------------------
# Addresses: symbols, GOTOFF, indexes, zero registers
# --------------------------------------------------------------------------

SYMBOLS = {"gi": 0x5000, "ti": 0x5010, "garr": 0x5020, ".LANCHOR0": 0x6000, "sym": 0x7000}
DATA = memory(0x5000, bytes(range(0x40)))


def test_rip_with_a_symbol_uses_the_symbol_not_rip() -> None:
    registers = {"rip": 0xDEAD0000}
    assert value("-4@gi(%rip)", "x86_64", registers, DATA, SYMBOLS) == 0x03020100
    assert value("1@1+ti(%rip)", "x86_64", registers, DATA, SYMBOLS) == 0x11
    assert value("1@ti+1(%rip)", "x86_64", registers, DATA, SYMBOLS) == 0x11


def test_rip_with_only_a_number_is_rip_relative() -> None:
    assert value("1@16(%rip)", "x86_64", {"rip": 0x5000}, DATA) == 0x10


def test_symbol_with_base_or_index_register() -> None:
    assert value("1@ti(%rdx)", "x86_64", {"rdx": 3}, DATA, SYMBOLS) == 0x13  # observed -fno-pie
    assert value("-4@garr(,%rdx,4)", "x86_64", {"rdx": 2}, DATA, SYMBOLS) == 0x2B2A2928


def test_i386_gotoff_is_the_symbol_address() -> None:
    registers = {"ecx": 0x0804C000, "ebx": 1}  # ecx holds the GOT address
    assert value("-4@gi@GOTOFF(%ecx)", "i386", registers, DATA, SYMBOLS) == 0x03020100
    assert value("1@1+ti@GOTOFF(%ecx)", "i386", registers, DATA, SYMBOLS) == 0x11
    assert value("4@garr@GOTOFF(%ecx,%ebx,4)", "i386", registers, DATA, SYMBOLS) == 0x27262524


def test_i386_bare_symbols_are_memory_not_constants() -> None:
    assert value("-1@ti", "i386", {}, DATA, SYMBOLS) == 0x10
    assert value("-4@ti+4", "i386", {}, DATA, SYMBOLS) == 0x17161514


def test_symbolic_immediates_are_addresses() -> None:
    assert value("4@#.LANCHOR0+8", "arm", {}, DATA, SYMBOLS) == 0x6008
    assert value("8@$sym+8", "x86_64", {}, DATA, SYMBOLS) == 0x7008


@pytest.mark.parametrize("symbols", [None, {}])
def test_unresolved_symbols_read_as_none(symbols: dict | None) -> None:
    assert value("-4@gi(%rip)", "x86_64", {"rip": 0x5000}, DATA, symbols) is None
    assert value("8f@.LC0(%rip)", "x86_64", {"rip": 0x5000}, DATA, symbols) is None
    assert value("4@#.LANCHOR0+8", "arm", {}, DATA, symbols) is None


def test_symbol_address_is_asked_once_per_reader() -> None:
    asked: list[str] = []

    def symbol_address(name: str) -> int:
        asked.append(name)
        return SYMBOLS[name]

    reader = make_reader(parse("-4@gi(%rip)", "x86_64"), "x86_64", symbol_address)
    assert [reader({"rip": 0}.__getitem__, DATA) for _ in range(3)] == [0x03020100] * 3
    assert asked == ["gi"]


@pytest.mark.parametrize(("arch", "spec", "registers", "expected"), [
    ("x86_64", "1@16(%rcx,%rdx)", {"rcx": 0x5000, "rdx": 2}, 0x12),
    ("x86_64", "-8@-4+16-16(%rbp)", {"rbp": 0x5008}, 0x0B0A090807060504),
    ("aarch64", "1@[x2, w11, sxtw]", {"x2": 0x5008, "x11": GARBAGE_HIGH | 0xFFFFFFFE}, 0x06),
    ("aarch64", "1@[x2, w11, uxtw]", {"x2": 0x4008, "x11": GARBAGE_HIGH | 0x1000}, 0x08),
    ("aarch64", "2@[x2, x3, lsl #1]", {"x2": 0x5000, "x3": 3}, 0x0706),
    ("aarch64", "1@[x0, x1]", {"x0": 0x5000, "x1": 5}, 0x05),
    ("arm", "-2@[r3, r6, lsl #1]", {"r3": 0x5000, "r6": 4}, 0x0908),
    ("arm", "1@[r3, -r6]", {"r3": 0x5010, "r6": 4}, 0x0C),
    ("arm", "1@[fp, #-8]", {"r11": 0x5010}, 0x08),
    ("ppc64le", "1@6,9", {"r6": 0x5000, "r9": 7}, 0x07),  # no scaling by the size
    ("ppc64le", "-2@6,9", {"r6": 0x5000, "r9": 7}, 0x0807),
    ("ppc64le", "1@0,9", {"r0": 0xBAD, "r9": 0x5003}, 0x03),  # RA=0 reads as 0
    ("s390x", "1@16(%r1,%r5)", {"r1": 2, "r5": 0x5000}, 0x12),
    ("s390x", "1@16(%r0,%r5)", {"r0": 0xBAD, "r5": 0x5000}, 0x10),
    ("loongarch64", "1@$r12,$r13", {"r12": 0x5000, "r13": 9}, 0x09),
    ("loongarch64", "1@$r3,8", {"r3": 0x5000}, 0x08),
])
def test_addresses(arch: str, spec: str, registers: dict, expected: int) -> None:
    assert value(spec, arch, registers, DATA) == expected


def test_absolute_addresses_need_no_register() -> None:
    assert value("-1@20", "x86_64", {}, DATA) is None  # GAS: a bare number is memory at 20
    assert value("-1@20500", "x86_64", {}, memory(20500, b"\xff")) == -1
    assert value("-4@$r0,1234", "loongarch64", {}, memory(1234, b"\x07\0\0\0")) == 7
    assert value("4@16(0)", "ppc64", {"r0": 0xBAD}, memory(16, b"\0\0\0\x09")) == 9


@pytest.mark.parametrize(("arch", "spec"), [("aarch64", "-8@xzr"), ("aarch64", "4@wzr"),
                                            ("riscv64", "8@zero"), ("riscv64", "8@x0"),
                                            ("mips64", "8@$0"), ("loongarch64", "8@$zero")])
def test_zero_registers_read_zero_without_asking(arch: str, spec: str) -> None:
    assert value(spec, arch, {}) == 0


def test_addresses_wrap_at_the_word_size() -> None:
    top = memory(0xFFFFFFFC, b"\x01\x02\x03\x04")
    assert value("-4@-8(%ebp)", "i386", {"ebp": 4}, top) == 0x04030201
    low64 = memory(8, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    assert value("1@16(%rbp)", "x86_64", {"rbp": (1 << 64) - 8}, low64) == 1


@pytest.mark.parametrize("spec", ["8@-8(%rbp)", "8@(%rbp,%rdx,1)", "8@9223372036854775800(%rdx)", "8@-8"])
def test_addresses_from_2_63_up_are_unknown_not_an_error(spec: str) -> None:
    """/proc/PID/mem's offset is a signed loff_t: os.pread raises OverflowError
    (not OSError) from 2^63 up, where no Linux arch has user memory anyway."""
    with open("/proc/self/mem", "rb", buffering=0) as mem:
        def read_memory(address: int, size: int) -> bytes:
            return os.pread(mem.fileno(), size, address)

        assert value(spec, "x86_64", {"rbp": 0, "rdx": 1 << 63}, read_memory) is None


# --------------------------------------------------------------------------
# Failures are the argument's, never the tracer's
# --------------------------------------------------------------------------

def test_bad_pointer_gives_none() -> None:
    assert value("-4@(%rax)", "x86_64", {"rax": 0}, DATA) is None
    assert value("8f@(%rax,%rdx,8)", "x86_64", {"rax": 0, "rdx": 1}, DATA) is None


def test_short_read_gives_none() -> None:
    def short(address: int, size: int) -> bytes:
        return b"\x01"

    assert value("-4@8(%rbp)", "x86_64", {"rbp": 0}, short) is None
    assert value("-4@8(%rbp,%rax)", "x86_64", {"rbp": 0, "rax": 0}, short) is None


@pytest.mark.parametrize(("arch", "spec"), [("aarch64", "-4@[x7, #:lo12:.LANCHOR0]"),
                                            ("mips64", "8f@%got_ofst(.LC0)($6)"),
                                            ("x86_64", "8@$3+($10-$8)-$1")])
def test_unparsed_reads_as_none(arch: str, spec: str) -> None:
    assert value(spec, arch, {}, DATA, SYMBOLS) is None


def test_mips64_memory_needs_the_byte_order() -> None:
    spec = parse("-2@18($13)", "mips64")
    with pytest.raises(ValueError, match="little_endian"):
        make_reader(spec, "mips64")
    read_memory = memory(0x5000, bytes(range(0x40)))
    registers = {"r13": 0x5000}.__getitem__
    assert make_reader(spec, "mips64", little_endian=True)(registers, read_memory) == 0x1312
    assert make_reader(spec, "mips64", little_endian=False)(registers, read_memory) == 0x1213
    assert make_reader(parse("-4@$4", "mips64"), "mips64")({"r4": 7}.__getitem__, read_memory) == 7
