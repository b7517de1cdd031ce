"""The SDT argument-spec language: ``[-]N[f]@operand`` -> where a value is, and reading it.

A note's argument string names, per argument, a size, a sign, a float flag and
one assembler operand as the compiler printed it for the target
(reference/usdt-format.md §8).  ``parse`` turns one spec into an ``ArgSpec``;
``make_reader`` turns an ``ArgSpec`` into a small function run on every probe
hit.  Each arch's operand grammar (``Arch.spec_dialect``) is one ``_Dialect``
row below: the grammars differ only in sigils, immediate prefixes and which
memory shapes exist, so one parser serves them all.

Parsing never raises on what a note contains: a form we cannot read (assembler
relocation operators such as ``#:lo12:``, GAS expressions, segment prefixes)
becomes an ``ArgSpec`` with ``error`` set, which tracing reports raw.
"""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Required, TypedDict

from uemu.arch import Arch, SpecRegister, by_name

ZERO_REGISTER = "zero"
"""Canonical name the arch tables give a hardwired zero register (aarch64 xzr,
riscv x0, mips $0, loongarch $r0): it reads as 0 without asking the tracee,
whose register set has no such slot.  As an address base on ppc and s390x,
register 0 also means "no register" and is parsed as this name."""

Regs = Callable[[str], int]
"""canonical register name -> its unsigned full value at the probe site."""
ReadMemory = Callable[[int, int], bytes]
"""(address, size) -> exactly ``size`` bytes of tracee memory, or OSError."""
SymbolAddress = Callable[[str], int | None]
"""symbol name -> its runtime address in the probed object, or None."""
Value = int | float | None
Reader = Callable[[Regs, ReadMemory], Value]

_SIZES = frozenset({1, 2, 4, 8, 12, 16})
USER_ADDRESS_LIMIT = 1 << 63
"""Addresses at or above this are never read: no Linux arch gives user space
memory there (TASK_SIZE is at most 2^56), and /proc/PID/mem's offset is a signed
loff_t.  An operand the tracee points there reads as unknown, as the kernel's
fetch of a kernel address fails."""


class OperandKind(StrEnum):
    """Where an argument's value is (``ArgSpec.kind``)."""

    REG = "reg"
    """In the register ``ArgSpec.reg``."""
    MEM = "mem"
    """At the address ``symbol + offset + base + index * scale``."""
    IMM = "imm"
    """The constant ``value``, or the address ``symbol + offset``."""
    UNPARSED = "unparsed"
    """A spec uemu cannot read: ``error`` says why; only ``raw``, ``size``,
    ``signed`` and ``is_float`` are known."""


@dataclass(frozen=True)
class ArgSpec:
    """One argument of a probe: where its value is (``kind``) and how to interpret it."""

    raw: str
    """The spec as the note wrote it."""
    size: int
    """Bytes that count.  The ``N@`` prefix governs, not the register named; an
    operand without prefix (hand-written asm probe) takes the register view's
    width, or the native word for memory and constants."""
    signed: bool = False
    is_float: bool = False
    sized: bool = True
    """Whether the spec had an ``N@`` prefix."""
    kind: OperandKind = OperandKind.UNPARSED
    reg: str | None = None
    """Canonical full register of a ``reg`` operand."""
    reg_bytes: int = 0
    """Width of the register view the spec named (``%eax``: 4)."""
    reg_shift: int = 0
    """Bit position of that view in the register (``%ah``: 8)."""
    base: str | None = None
    index: str | None = None
    index_bytes: int = 0
    """Width of the index register's view; narrower than the word means only
    those bytes count (aarch64 ``[x2, w11, sxtw]``: 4)."""
    index_signed: bool = False
    """The index view is sign-extended (aarch64 ``sxtw``), else zero-extended."""
    scale: int = 1
    """Index multiplier; negative for arm's subtracted index ``[r3, -r6]``."""
    offset: int = 0
    symbol: str | None = None
    gotoff: bool = False
    """i386 PIC ``sym@GOTOFF(%reg)``: the base register holds the GOT address and
    ``sym@GOTOFF`` is ``sym`` minus it, so their sum is ``sym``'s runtime address."""
    value: int | float | None = None
    """The constant of an ``imm`` operand without symbol, as printed (gcc prints
    constants of unsigned types as negative numbers)."""
    error: str | None = None

    @property
    def parsed(self) -> bool:
        return self.error is None


class _Unparsed(Exception):
    """A spec uemu cannot read; the message becomes ``ArgSpec.error``."""


@dataclass(frozen=True)
class _Dialect:
    """How one family of assemblers writes operands."""

    sigil: str = ""
    """Register prefix (``%`` AT&T and s390, ``$`` mips and loongarch)."""
    sigil_optional: bool = False
    """Registers may also appear without the sigil (ppc ``8`` and ``%r8``)."""
    imm_prefix: str = ""
    """Immediate prefix (``$`` AT&T, ``i`` ppc's ``%I``, ``#`` arm); without it a
    bare number is an immediate too, except where ``number_is_memory``."""
    number_is_memory: bool = False
    """A bare number is an absolute address (GAS AT&T), not a constant."""
    float_immediates: bool = False
    """Immediates may be float literals (arm ``#1.5e+0``)."""
    paren: str = ""
    """Shape inside ``disp(...)``: ``"att"`` base,index,scale; ``"index,base"``
    (s390 ``D(X,B)``); ``"base"``; empty where the form does not exist."""
    brackets: bool = False
    """``[base, off]`` / ``[base, index, lsl #n]`` memory (arm, aarch64)."""
    comma_memory: bool = False
    """``base,off`` or ``base,index`` without brackets (ppc ``6,9``, loongarch)."""
    zero_r0_address: bool = False
    """Register 0 as an address part means the value 0 (ppc RA|0, s390 B/X)."""
    gotoff: bool = False
    """Displacements may be ``sym@GOTOFF`` (i386 PIC)."""


_DIALECTS = {
    "att": _Dialect(sigil="%", imm_prefix="$", number_is_memory=True, paren="att", gotoff=True),
    "aarch64": _Dialect(imm_prefix="#", float_immediates=True, brackets=True),
    "arm": _Dialect(imm_prefix="#", float_immediates=True, brackets=True),
    "ppc": _Dialect(
        sigil="%", sigil_optional=True, imm_prefix="i", paren="base", comma_memory=True,
        zero_r0_address=True,
    ),
    "s390": _Dialect(sigil="%", paren="index,base", zero_r0_address=True),
    "riscv": _Dialect(paren="base"),
    "mips": _Dialect(sigil="$", paren="base"),
    # gcc prints base,off (loongarch_print_operand_address); bcc's parser also
    # takes aarch64-like brackets, kept for hand-written probes.
    "loongarch": _Dialect(sigil="$", brackets=True, comma_memory=True),
}

# How each dialect's compilers lay out a 12/16-byte long double: x87 extended on
# x86, IBM double-double on ppc64 (gcc 12 __LDBL_MANT_DIG__ 106), IEEE binary128
# elsewhere (aarch64, s390x, riscv64, mips64, loongarch64: 113; observed).
_LONG_DOUBLE = {"att": "x87", "ppc": "ibm128"}

_PREFIX = re.compile(r"\s*(-?)([0-9]+)(f?)@")
_RELOCATION = re.compile(r"%[A-Za-z_][\w]*\(|#?:[A-Za-z_]\w*:")
_TERM = re.compile(r"([-+]?)(0[xX][0-9a-fA-F]+|[0-9]+|[A-Za-z_.][\w.]*)(@\w+)?")
_PAREN = re.compile(r"([^()]*)\(([^()]*)\)")
_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+|inf|nan)")
_EXTEND = re.compile(r"(lsl|sxtw|uxtw|sxtx|uxtx)(?:\s+#?([0-9]+))?")
_ARG = re.compile(r"(?:\[[^\]]*(?:\]|$)|\([^)]*(?:\)|$)|[^\s\[(])+")


def _arch(arch: Arch | str) -> Arch:
    return by_name(arch) if isinstance(arch, str) else arch


@functools.cache
def split(args: str) -> tuple[str, ...]:
    """The arguments of a note's argument string, one spec each.

    Arguments are separated by blanks, but aarch64 and arm operands contain
    blanks inside brackets (``-4@[sp, 12]``), so blanks inside brackets or
    parentheses do not split.  Asm-written probes without any ``N@`` split the
    same way.  An empty string or one starting with ``:`` means no arguments
    (gdb, libbpf).  Cached: events name their specs at every hit.
    """
    if args.startswith(":"):
        return ()
    return tuple(_ARG.findall(args))


def parse_all(args: str, arch: Arch | str) -> list[ArgSpec]:
    """All arguments of a note's argument string (``split``), parsed."""
    resolved = _arch(arch)
    return [parse(arg, resolved) for arg in split(args)]


def parse(spec: str, arch: Arch | str) -> ArgSpec:
    """One argument spec; never raises on its content (see ``ArgSpec.error``)."""
    resolved = _arch(arch)
    prefix = _PREFIX.match(spec)
    if prefix:
        sign, digits, float_flag = prefix.groups()
        size: int | None = int(digits)
        operand = spec[prefix.end():].strip()
    else:
        sign = float_flag = ""
        size = None
        operand = spec.strip()
    try:
        fields = _parse_operand(operand, resolved, _DIALECTS[resolved.spec_dialect])
        if size is None:
            size = fields["reg_bytes"] if fields["kind"] is OperandKind.REG else resolved.word_size
        elif size not in _SIZES:
            raise _Unparsed(f"unsupported size {size}")
    except (_Unparsed, ValueError) as why:  # ValueError: int() of a huge digit string
        return ArgSpec(
            raw=spec, size=size or resolved.word_size, signed=bool(sign),
            is_float=bool(float_flag), sized=prefix is not None, error=str(why),
        )
    return ArgSpec(
        raw=spec, size=size, signed=bool(sign), is_float=bool(float_flag),
        sized=prefix is not None, **fields,
    )


class _Operand(TypedDict, total=False):
    """The ``ArgSpec`` fields an operand gives; the ``N@`` prefix gives the others."""

    kind: Required[OperandKind]
    reg: str
    reg_bytes: int
    reg_shift: int
    base: str
    index: str
    index_bytes: int
    index_signed: bool
    scale: int
    offset: int
    symbol: str | None
    gotoff: bool
    value: int | float


def _parse_operand(operand: str, arch: Arch, dialect: _Dialect) -> _Operand:
    if not operand:
        raise _Unparsed("empty operand")
    if _RELOCATION.search(operand):
        raise _Unparsed("assembler relocation operator")
    if dialect.brackets and operand.startswith("["):
        if not operand.endswith("]"):
            raise _Unparsed("unbalanced brackets")
        return _bracket_memory(operand[1:-1], arch, dialect)
    prefix = dialect.imm_prefix
    # A letter prefix (ppc ``i``) needs a number after it: ``ifoo`` is a symbol.
    if prefix and operand.startswith(prefix) and not (prefix.isalpha() and operand[1:2] not in "-+0123456789"):
        return _immediate(operand[len(prefix):], dialect)
    view = _register(operand, arch, dialect)
    if view is not None:
        return {"kind": OperandKind.REG, "reg": view.canonical, "reg_bytes": view.width, "reg_shift": view.shift}
    if dialect.comma_memory and "," in operand and "(" not in operand:
        return _comma_memory(operand, arch, dialect)
    paren = _PAREN.fullmatch(operand)
    if paren and dialect.paren:
        return _paren_memory(paren.group(1), paren.group(2), arch, dialect)
    offset, symbol, gotoff = _displacement(operand, dialect)
    if symbol is None and not dialect.number_is_memory:
        return {"kind": OperandKind.IMM, "value": offset}
    return {"kind": OperandKind.MEM, "offset": offset, "symbol": symbol, "gotoff": gotoff}


def _register(token: str, arch: Arch, dialect: _Dialect) -> SpecRegister | None:
    """The register view ``token`` names, or None when it names none."""
    if dialect.sigil and token.startswith(dialect.sigil):
        token = token[len(dialect.sigil):]
    elif dialect.sigil and not dialect.sigil_optional:
        return None
    return arch.spec_registers.get(token)


def _address_register(token: str, arch: Arch, dialect: _Dialect) -> tuple[str, int]:
    """Canonical name and view width of a register used in an address."""
    view = _register(token.strip(), arch, dialect)
    if view is None:
        raise _Unparsed(f"unknown register {token.strip()!r}")
    if dialect.zero_r0_address and view.canonical == "r0":
        return ZERO_REGISTER, view.width
    return view.canonical, view.width


def _displacement(text: str, dialect: _Dialect) -> tuple[int, str | None, bool]:
    """``-4+16-16``, ``sym+40``, ``24+sym``, ``1+ti@GOTOFF`` -> (offset, symbol, gotoff)."""
    offset, symbol, gotoff = 0, None, False
    position, text = 0, text.strip()
    while position < len(text):
        term = _TERM.match(text, position)
        if term is None or (position and not term.group(1)):
            raise _Unparsed(f"cannot read displacement {text!r}")
        sign, body, suffix = term.groups()
        if body[0] in "0123456789":
            if suffix:
                raise _Unparsed(f"cannot read displacement {text!r}")
            number = int(body, 16) if body[1:2] in ("x", "X") else int(body)
            offset += -number if sign == "-" else number
        elif symbol is not None or sign == "-":
            raise _Unparsed("more than one symbol, or a subtracted one")
        elif suffix and not (suffix == "@GOTOFF" and dialect.gotoff):
            raise _Unparsed(f"relocation {suffix}")
        else:
            symbol, gotoff = body, bool(suffix)
        position = term.end()
    if not text:
        raise _Unparsed("empty displacement")
    return offset, symbol, gotoff


def _immediate(text: str, dialect: _Dialect) -> _Operand:
    if dialect.float_immediates and _FLOAT.fullmatch(text):
        return {"kind": OperandKind.IMM, "value": float(text)}
    offset, symbol, gotoff = _displacement(text, dialect)
    if gotoff:
        raise _Unparsed("@GOTOFF immediate")
    if symbol is None:
        return {"kind": OperandKind.IMM, "value": offset}
    return {"kind": OperandKind.IMM, "symbol": symbol, "offset": offset}


def _memory(arch: Arch, dialect: _Dialect, base: str, index: str = "", scale: int = 1,
            offset: int = 0, symbol: str | None = None, gotoff: bool = False,
            index_signed: bool = False) -> _Operand:
    """The fields of a memory operand from its register tokens."""
    if not (base.strip() or index.strip()):
        raise _Unparsed("address without register")
    fields: _Operand = {"kind": OperandKind.MEM, "offset": offset, "symbol": symbol, "gotoff": gotoff, "scale": scale}
    if base.strip():
        fields["base"] = _address_register(base, arch, dialect)[0]
    if index.strip():
        fields["index"], fields["index_bytes"] = _address_register(index, arch, dialect)
        fields["index_signed"] = index_signed
    return fields


def _paren_memory(disp: str, inside: str, arch: Arch, dialect: _Dialect) -> _Operand:
    """``disp(base,index,scale)`` (AT&T), ``D(X,B)`` (s390), ``D(B)`` (ppc, riscv, mips)."""
    offset, symbol, gotoff = _displacement(disp, dialect) if disp.strip() else (0, None, False)
    parts = inside.split(",")
    if dialect.paren == "att" and len(parts) <= 3:
        base, index, scale = [*parts, "", "", ""][:3]
        if scale.strip() not in ("", "1", "2", "4", "8") or (scale.strip() and not index.strip()):
            raise _Unparsed(f"bad scale {scale!r}")
        return _memory(arch, dialect, base, index, int(scale or 1), offset, symbol, gotoff)
    if dialect.paren == "index,base" and len(parts) == 2:
        return _memory(arch, dialect, parts[1], parts[0], 1, offset, symbol)
    if len(parts) == 1:
        return _memory(arch, dialect, parts[0], offset=offset, symbol=symbol)
    raise _Unparsed(f"cannot read address ({inside})")


def _comma_memory(operand: str, arch: Arch, dialect: _Dialect) -> _Operand:
    """ppc indexed ``RA,RB`` (no implicit scaling: the compiler already scaled
    RB); loongarch ``$rB,off`` and ``$rB,$rI``."""
    base, second = operand.split(",", 1)
    if _register(second.strip(), arch, dialect) is not None:
        return _memory(arch, dialect, base, second)
    offset, symbol, _ = _displacement(second, dialect)
    return _memory(arch, dialect, base, offset=offset, symbol=symbol)


def _bracket_memory(inside: str, arch: Arch, dialect: _Dialect) -> _Operand:
    """``[b]``, ``[b, off]``, ``[b, #off]``, ``[b, i]``, ``[b, -i]``,
    ``[b, i, lsl #n]``, ``[b, wi, sxtw]``, ``[b, wi, uxtw #n]``."""
    parts = [part.strip() for part in inside.split(",")]
    if len(parts) == 1:
        return _memory(arch, dialect, parts[0])
    second = parts[1]
    negative = second.startswith("-") and _register(second[1:], arch, dialect) is not None
    if negative or _register(second, arch, dialect) is not None:
        shift, signed = _extend(parts[2:])
        scale = -(1 << shift) if negative else 1 << shift
        return _memory(arch, dialect, parts[0], second.lstrip("-"), scale, index_signed=signed)
    if len(parts) > 2:
        raise _Unparsed(f"cannot read address [{inside}]")
    offset, symbol, _ = _displacement(second.removeprefix("#"), dialect)
    return _memory(arch, dialect, parts[0], offset=offset, symbol=symbol)


def _extend(rest: list[str]) -> tuple[int, bool]:
    """The index modifier after ``[b, i, ...``: (left shift, sign-extend?)."""
    if not rest:
        return 0, False
    extend = _EXTEND.fullmatch(rest[0]) if len(rest) == 1 else None
    if extend is None:
        raise _Unparsed(f"cannot read index modifier {', '.join(rest)!r}")
    operator, amount = extend.groups()
    return int(amount or 0), operator.startswith("s")


# --------------------------------------------------------------------------
# Reading values.  make_reader does every decision once; the returned closure
# only fetches and converts.
# --------------------------------------------------------------------------


def _none(regs: Regs, read_memory: ReadMemory) -> None:
    """The reader of an argument that cannot be read (unparsed, unresolved)."""
    return None


def make_reader(spec: ArgSpec, arch: Arch | str, symbol_address: SymbolAddress | None = None,
                *, little_endian: bool | None = None) -> Reader:
    """A function ``(regs, read_memory) -> value`` for one argument.

    Integers are truncated to ``spec.size`` and sign- or zero-extended; floats
    are decoded from their bytes; a value that cannot be read gives None
    (unparsed spec, unresolved symbol, 16-byte value in one register, an
    address at or above ``USER_ADDRESS_LIMIT``, a ``read_memory`` OSError).
    ``symbol_address`` is asked once, here.
    ``little_endian`` overrides the arch's byte order and is required for
    memory operands where the arch covers both (mips64).
    """
    resolved = _arch(arch)
    if not spec.parsed:
        return _none
    symbol_base = 0
    if spec.symbol is not None:
        found = symbol_address(spec.symbol) if symbol_address is not None else None
        if found is None:
            return _none
        symbol_base = found
    if spec.kind is OperandKind.IMM:
        return _immediate_reader(spec, resolved, symbol_base)
    if spec.kind is OperandKind.REG:
        return _register_reader(spec, resolved)
    little = resolved.little_endian if little_endian is None else little_endian
    if little is None:
        raise ValueError(f"{resolved.name} covers both byte orders: pass little_endian")
    return _memory_reader(spec, resolved, symbol_base, little)


def read_value(spec: ArgSpec, arch: Arch | str, regs: Regs, read_memory: ReadMemory,
               symbol_address: SymbolAddress | None = None,
               *, little_endian: bool | None = None) -> Value:
    """One argument's value now (builds a reader; keep the reader for repeated hits)."""
    return make_reader(spec, arch, symbol_address, little_endian=little_endian)(regs, read_memory)


def _int_from_bits(size: int, signed: bool) -> Callable[[int], int]:
    mask = (1 << 8 * size) - 1
    if not signed:
        return lambda bits: bits & mask
    sign = 1 << (8 * size - 1)
    return lambda bits: ((bits & mask) ^ sign) - sign


def _decoder(spec: ArgSpec, arch: Arch, little: bool) -> Callable[[bytes], Value]:
    """bytes of the value in memory order -> value."""
    order: Literal["little", "big"] = "little" if little else "big"
    if not spec.is_float:
        signed = spec.signed
        return lambda data: int.from_bytes(data, order, signed=signed)
    if spec.size in (2, 4, 8):
        unpack = struct.Struct(("<" if little else ">") + {2: "e", 4: "f", 8: "d"}[spec.size]).unpack
        return lambda data: unpack(data)[0]
    long_double = _LONG_DOUBLE.get(arch.spec_dialect, "binary128")
    if long_double == "x87":
        return _x87_extended
    if long_double == "ibm128":
        unpack = struct.Struct("<2d" if little else ">2d").unpack
        return lambda data: sum(unpack(data[:16]))
    return lambda data: _binary128(int.from_bytes(data[:16], order))


def _scaled(mantissa: int, exponent: int) -> float:
    """mantissa * 2**exponent rounded to the nearest float (int maths is exact)."""
    try:
        return float(mantissa << exponent) if exponent >= 0 else mantissa / (1 << -exponent)
    except OverflowError:
        return float("inf")


def _ieee_like(negative: bool, exponent: int, fraction: int, fraction_bits: int,
               explicit_one: bool) -> float:
    """Decode a 15-bit-exponent binary float (x87 extended, IEEE binary128)."""
    if exponent == 0x7FFF:
        payload = fraction & ((1 << (fraction_bits - explicit_one)) - 1)
        magnitude = float("nan") if payload else float("inf")
    elif exponent == 0:
        magnitude = 0.0  # zero or denormal: far below the smallest double
    else:
        mantissa = fraction if explicit_one else fraction | (1 << fraction_bits)
        magnitude = _scaled(mantissa, exponent - 16383 - fraction_bits + explicit_one)
    return -magnitude if negative else magnitude


def _x87_extended(data: bytes) -> float:
    """x87 80-bit extended (the first 10 of 12 or 16 bytes): explicit integer bit."""
    bits = int.from_bytes(data[:10], "little")
    return _ieee_like(bool(bits >> 79), (bits >> 64) & 0x7FFF, bits & ((1 << 64) - 1), 64, True)


def _binary128(bits: int) -> float:
    return _ieee_like(bool(bits >> 127), (bits >> 112) & 0x7FFF, bits & ((1 << 112) - 1), 112, False)


def _immediate_reader(spec: ArgSpec, arch: Arch, symbol_base: int) -> Reader:
    if isinstance(spec.value, float):
        constant: Value = spec.value
    else:
        bits = symbol_base + spec.offset + (spec.value or 0)
        masked = bits & ((1 << 8 * spec.size) - 1)
        constant = _decoder(spec, arch, True)(masked.to_bytes(spec.size, "little"))
    return lambda regs, read_memory: constant


def _register_reader(spec: ArgSpec, arch: Arch) -> Reader:
    """Registers hold integers; a float's bytes are the register's low bytes."""
    name, shift, size = spec.reg, spec.reg_shift, spec.size
    assert name is not None  # a "reg" spec names its register
    decode: Callable[[int], Value]
    if spec.is_float:
        decode_bytes = _decoder(spec, arch, True)
        decode = lambda bits: decode_bytes((bits & ((1 << 8 * size) - 1)).to_bytes(size, "little"))  # noqa: E731
    else:
        decode = _int_from_bits(size, spec.signed)
    if name == ZERO_REGISTER:
        zero = decode(0)
        return lambda regs, read_memory: zero
    if size > arch.word_size:
        high = arch.pair_high.get(name)
        if size != 2 * arch.word_size or high is None:
            return _none
        word_bits = 8 * arch.word_size
        word_mask = (1 << word_bits) - 1
        return lambda regs, read_memory: decode((regs(name) & word_mask) | (regs(high) & word_mask) << word_bits)
    if not spec.is_float and not shift:
        mask = (1 << 8 * size) - 1
        if spec.signed:
            sign = 1 << (8 * size - 1)
            return lambda regs, read_memory: ((regs(name) & mask) ^ sign) - sign
        return lambda regs, read_memory: regs(name) & mask
    return lambda regs, read_memory: decode(regs(name) >> shift)


def _index_value(spec: ArgSpec, arch: Arch) -> Callable[[int], int]:
    """The index register's full value -> the index (view width, extension)."""
    if spec.index_bytes >= arch.word_size or not spec.index_bytes:
        return lambda bits: bits
    return _int_from_bits(spec.index_bytes, spec.index_signed)


def _memory_reader(spec: ArgSpec, arch: Arch, symbol_base: int, little: bool) -> Reader:
    size, decode = spec.size, _decoder(spec, arch, little)
    address_mask: int = (1 << 8 * arch.word_size) - 1
    last_start = USER_ADDRESS_LIMIT - size  # the value's last byte must lie below the limit
    constant = symbol_base + spec.offset
    base = spec.base
    # rip with a symbol: the assembler never saw this text, the symbol is the address.
    if base == ZERO_REGISTER or spec.gotoff or (spec.symbol is not None and base == arch.ip_reg):
        base = None
    index = spec.index if spec.index != ZERO_REGISTER else None

    if base is not None and index is None and not spec.is_float:
        base_reg = base
        order: Literal["little", "big"] = "little" if little else "big"
        signed = spec.signed

        def read_base_offset(regs: Regs, read_memory: ReadMemory) -> Value:
            at = (regs(base_reg) + constant) & address_mask
            if at > last_start:
                return None
            try:
                data = read_memory(at, size)
            except OSError:
                return None
            return int.from_bytes(data, order, signed=signed) if len(data) == size else None

        return read_base_offset

    if index is None and base is None:
        fixed = constant & address_mask

        def address(regs: Regs) -> int:
            return fixed
    elif index is None:
        assert base is not None  # the case before took both None
        only_base = base

        def address(regs: Regs) -> int:
            return (regs(only_base) + constant) & address_mask
    else:
        index_reg, index_value, scale = index, _index_value(spec, arch), spec.scale

        def address(regs: Regs) -> int:
            start = regs(base) if base is not None else 0
            return (start + index_value(regs(index_reg)) * scale + constant) & address_mask

    def read(regs: Regs, read_memory: ReadMemory) -> Value:
        at = address(regs)
        if at > last_start:
            return None
        try:
            data = read_memory(at, size)
        except OSError:
            return None
        return decode(data) if len(data) == size else None

    return read
