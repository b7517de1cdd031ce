"""A probe's argument specs as the runtime's fetch program, and the decoder of its records.

At a jumped site the arguments are fetched inside the target, at the hit, by the
runtime's C (uemu/runtime/src/runtime.c, ``fetch()``), from a small program uemu builds
here once per site: a register's word, the bytes at base + index * scale + disp, a
string at a pointer.  The record holds raw bytes; the values are decoded in uemu by the
very readers the trap path uses (``argspec.make_reader``), fed the recorded words and
bytes instead of the stopped thread's, so both paths give the same values for the same
spec (sizes, signs, floats, i386 register pairs, globals through the load bias).

Kernel: kernel/trace/trace_probe.c compiles fetch args into ``fetch_insn`` programs
(FETCH_OP_REG, FETCH_OP_DEREF, FETCH_OP_ST_STRING, ...) run at the hit with a fault-safe
copy; here the program is split the same way, with process_vm_readv for the copy.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from uemu import argspec
from uemu.arch import Arch
from uemu.arch.jump import HitFrame

from .runtime import layout
from .runtime.layout import FetchFlags, FetchKind, FetchOp

Strings = dict[int, bytes]
"""Pointer -> the string copied there at the hit."""
Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class FetchProgram:
    """What the runtime fetches at one site, and how uemu reads it back."""

    ops: tuple[FetchOp, ...]
    record_size: int
    """Bytes of one record: header and every op's slot, a multiple of 8."""
    decode: Callable[[Buffer, int], tuple[list[argspec.Value], Strings]]
    """(buffer, offset of the record) -> the arguments and the strings copied."""


class NotFetchable(Exception):
    """A spec the jump path cannot fetch at the hit (the site keeps the trap)."""


class _Values:
    """The readers' view of one record: registers by name, one memory read."""

    __slots__ = ("memory", "regs")

    def __init__(self) -> None:
        self.regs: dict[str, int] = {}
        self.memory: bytes | None = None

    def reg(self, name: str) -> int:
        return self.regs.get(name, 0)

    def read(self, address: int, size: int) -> bytes:
        if self.memory is None:
            raise OSError("unreadable at the hit")
        return self.memory


Step = Callable[[Buffer, int, "_Values", list[argspec.Value], Strings], None]
"""Decodes one argument (or copies one string) of a record into the lists."""
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def compile_args(args: str, arch: Arch, frame: HitFrame, resolve: argspec.SymbolAddress | None,
                 little_endian: bool | None, strings: Sequence[int] = (), strsize: int = 0) -> FetchProgram:
    """The program for a note's argument string; ``strings``: indexes of arguments that are
    pointers to strings to copy (``--format``'s %s), at most ``strsize`` bytes."""
    if strings and not 0 < strsize <= layout.STR_MAX:
        raise NotFetchable(f"--strsize {strsize} is more than the jump path copies ({layout.STR_MAX})")
    ops: list[FetchOp] = []
    steps: list[Step] = []
    fields: list[_Field | None] = []
    offset = layout.RECORD_HEADER.size
    little = arch.little_endian if little_endian is None else little_endian
    for number, spec in enumerate(argspec.parse_all(args, arch)):
        reader = argspec.make_reader(spec, arch, resolve, little_endian=little_endian)
        added, pointer_at, step = _arg_ops(spec, arch, frame, resolve, reader, offset, little_endian)
        ops += added
        offset += sum(_slot_size(op) for op in added)
        steps.append(step)
        fields.append(_field(spec, arch, added, reader) if little else None)
        if number in strings:
            if pointer_at is None:
                constant = reader(lambda name: 0, _unreadable)
                if not isinstance(constant, int):
                    continue  # no pointer to read from: the trap path's reader says None too
                ops.append(FetchOp(kind=FetchKind.CONST, disp=constant & (1 << 64) - 1))
                pointer_at = offset
                offset += 8
            ops.append(FetchOp(kind=FetchKind.STR, base=pointer_at & 0xFF, index=pointer_at >> 8,
                               size=min(spec.size, arch.word_size), disp=strsize))
            steps.append(_string_step(offset, number))
            offset += _slot_size(ops[-1])
    if offset > layout.RECORD_MAX:
        raise NotFetchable(f"a record of {offset} bytes is more than a ring's stamp can say ({layout.RECORD_MAX})")
    if len(steps) == len(fields) and all(fields):  # and so no string to copy
        return FetchProgram(tuple(ops), offset, _unpacking([f for f in fields if f is not None]))
    values = _Values()

    def decode(buffer: Buffer, at: int) -> tuple[list[argspec.Value], Strings]:
        args_out: list[argspec.Value] = []
        strings_out: Strings = {}
        for step in steps:
            step(buffer, at, values, args_out, strings_out)
        return args_out, strings_out

    return FetchProgram(tuple(ops), offset, decode)


class _Kind(enum.Enum):
    REGISTER = 1
    """The value itself is unpacked."""
    CONSTANT = 2
    """Nothing is unpacked: ``_Field.value``."""
    MEMORY = 3
    """A status, then the value: None unless the status says all ``size`` bytes were read."""


@dataclass(frozen=True)
class _Field:
    """An argument ``struct`` can read straight from the record: its slot's format."""

    format: str
    kind: _Kind
    value: argspec.Value = None
    size: int = 0


_INTEGERS = {1: "b", 2: "h", 4: "i", 8: "q"}


def _field(spec: argspec.ArgSpec, arch: Arch, added: list[FetchOp], reader: argspec.Reader) -> _Field | None:
    """How ``struct`` reads an integer argument the readers would give the same value for
    (the low ``size`` bytes of a little-endian slot, sign-extended or not); None: the
    argument's step decodes it (floats, register pairs and parts, strings)."""
    if not added:
        return _Field("", _Kind.CONSTANT, reader(lambda name: 0, _unreadable))
    code = _INTEGERS.get(spec.size)
    if code is None or spec.is_float or len(added) != 1:
        return None
    code = code if spec.signed else code.upper()
    if added[0].kind == FetchKind.REG and spec.kind == "reg" and not spec.reg_shift and spec.size <= arch.word_size:
        return _Field(f"{code}{8 - spec.size}x", _Kind.REGISTER)
    if added[0].kind == FetchKind.MEM:
        return _Field(f"I4x{code}{-spec.size % 8}x", _Kind.MEMORY, size=spec.size)
    return None


def _unpacking(fields: list[_Field]) -> Callable[[Buffer, int], tuple[list[argspec.Value], Strings]]:
    """A decoder of records whose every argument is a ``_Field``: one ``unpack_from`` per
    record, the constants put before what it unpacked and the arguments picked out of
    both by one ``itemgetter``, all in C (a Python step per argument cost a quarter of
    the reader's decode at every event, py-spy)."""
    unpack = struct.Struct("<" + "".join(f.format for f in fields)).unpack_from
    start = layout.RECORD_HEADER.size
    constants = tuple(f.value for f in fields if f.kind == _Kind.CONSTANT)
    picks: list[int] = []
    statuses: list[int] = []
    constant, unpacked = 0, len(constants)  # a record's row: the constants, then what is unpacked
    for f in fields:
        if f.kind == _Kind.CONSTANT:
            picks.append(constant)
            constant += 1
        elif f.kind == _Kind.MEMORY:
            statuses.append(unpacked)
            picks.append(unpacked + 1)
            unpacked += 2
        else:
            picks.append(unpacked)
            unpacked += 1
    if not constants and not statuses:  # registers alone: what is unpacked is the arguments
        return lambda buffer, at: (list(unpack(buffer, at + start)), {})
    pick = _picker(picks)
    if not statuses:
        return lambda buffer, at: (list(pick(constants + unpack(buffer, at + start))), {})
    status_of, sizes = _picker(statuses), tuple(f.size for f in fields if f.kind == _Kind.MEMORY)
    read_at = [n for n, f in enumerate(fields) if f.kind == _Kind.MEMORY]

    def decode(buffer: Buffer, at: int) -> tuple[list[argspec.Value], Strings]:
        row = constants + unpack(buffer, at + start)
        out: list[argspec.Value] = list(pick(row))
        found = status_of(row)
        if found != sizes:  # a memory argument the runtime could not read (all of) is None
            for number, status, size in zip(read_at, found, sizes, strict=True):
                if status != size:
                    out[number] = None
        return out, {}

    return decode


def _picker(indexes: list[int]) -> Callable[[tuple[argspec.Value, ...]], tuple[argspec.Value, ...]]:
    """``itemgetter`` of ``indexes`` that gives a tuple even for one index (a slice)."""
    if len(indexes) == 1:
        return operator.itemgetter(slice(indexes[0], indexes[0] + 1))
    return operator.itemgetter(*indexes)


def _unreadable(address: int, size: int) -> bytes:
    raise OSError("no memory")


def _slot_size(op: FetchOp) -> int:
    if op.kind in (FetchKind.REG, FetchKind.CONST):
        return 8
    length: int = op.size if op.kind == FetchKind.MEM else op.disp
    return 8 + -(-length // 8) * 8


def _register_slot(name: str, arch: Arch, frame: HitFrame) -> int:
    if name == arch.sp_reg:
        return layout.REG_SP
    if name == arch.ip_reg:
        return layout.REG_IP
    slot = frame.slot(name)
    if slot is None:
        raise NotFetchable(f"register {name} is not saved by the trampoline")
    return slot


def _arg_ops(spec: argspec.ArgSpec, arch: Arch, frame: HitFrame, resolve: argspec.SymbolAddress | None,
             reader: argspec.Reader, offset: int, little_endian: bool | None) -> tuple[list[FetchOp], int | None, Step]:
    """The ops of one argument, where its pointer lies in the record (None: nowhere), and
    its decoding step.  What the trap path cannot read either (unparsed, unresolved
    symbol) is fetched as nothing and decodes to the same None."""
    symbol_base = 0
    if spec.symbol is not None:
        found = resolve(spec.symbol) if resolve is not None else None
        if found is None:
            return [], None, _constant_step(reader)
        symbol_base = found
    if not spec.parsed or spec.kind is argspec.OperandKind.IMM:
        return [], None, _constant_step(reader)
    if spec.kind is argspec.OperandKind.REG:
        names = [spec.reg] if spec.reg is not None and spec.reg != argspec.ZERO_REGISTER else []
        high = arch.pair_high.get(spec.reg or "")
        if spec.size > arch.word_size and high is not None:
            names.append(high)
        ops = [FetchOp(kind=FetchKind.REG, base=_register_slot(name, arch, frame)) for name in names]
        return ops, (offset if names else None), _register_step(reader, names, offset)
    base = spec.base
    if base == argspec.ZERO_REGISTER or spec.gotoff or (spec.symbol is not None and base == arch.ip_reg):
        base = None
    index = spec.index if spec.index != argspec.ZERO_REGISTER else None
    disp = symbol_base + spec.offset
    flags = FetchFlags.INDEX_SIGNED if spec.index_signed else FetchFlags(0)
    if base == arch.sp_reg and index is None and spec.symbol is None:
        flags |= FetchFlags.DIRECT
    op = FetchOp(kind=FetchKind.MEM, base=layout.REG_NONE if base is None else _register_slot(base, arch, frame),
                 index=layout.REG_NONE if index is None else _register_slot(index, arch, frame),
                 size=spec.size, index_bytes=spec.index_bytes, flags=flags, scale=spec.scale & 0xFF,
                 disp=disp & (1 << 64) - 1)
    # The record holds the bytes the runtime read: the reader decodes them as if at
    # address 0 (the address itself, which it would check, is not recorded).
    at_zero = dataclasses.replace(spec, base=None, index=None, offset=0, symbol=None, gotoff=False)
    decoder = argspec.make_reader(at_zero, arch, None, little_endian=little_endian)
    return [op], offset + 8, _memory_step(decoder, spec.size, offset)


def _constant_step(reader: argspec.Reader) -> Step:
    value = reader(lambda name: 0, _unreadable)

    def step(buffer: Buffer, at: int, values: _Values, out: list[argspec.Value], strings: Strings) -> None:
        out.append(value)

    return step


def _register_step(reader: argspec.Reader, names: list[str], offset: int) -> Step:
    unpack = _U64.unpack_from

    def step(buffer: Buffer, at: int, values: _Values, out: list[argspec.Value], strings: Strings) -> None:
        regs = values.regs
        for number, name in enumerate(names):
            regs[name] = unpack(buffer, at + offset + 8 * number)[0]
        out.append(reader(values.reg, values.read))

    return step


def _memory_step(reader: argspec.Reader, size: int, offset: int) -> Step:
    unpack = _U32.unpack_from

    def step(buffer: Buffer, at: int, values: _Values, out: list[argspec.Value], strings: Strings) -> None:
        start = at + offset
        values.memory = bytes(buffer[start + 8:start + 8 + size]) if unpack(buffer, start)[0] == size else None
        out.append(reader(values.reg, values.read))

    return step


def _string_step(offset: int, number: int) -> Step:
    unpack = _U32.unpack_from

    def step(buffer: Buffer, at: int, values: _Values, out: list[argspec.Value], strings: Strings) -> None:
        pointer = out[number]
        length = unpack(buffer, at + offset)[0]
        if isinstance(pointer, int) and length != layout.STR_UNREADABLE:
            start = at + offset + 8
            strings[pointer] = bytes(buffer[start:start + length])

    return step
