"""The in-target area and its table, defined once for Python and for the C runtime.

The area uemu maps in every traced address space is ``CODE_SIZE`` bytes of
read+exec code (the runtime blob, then XOL slots, later trampolines) followed by
``DATA_SIZE`` bytes of read+write data: the table below, which says everything
uemu wrote into the process so that the runtime's trap handler can undo it when
uemu is gone.  Never W+X: a program under memory-deny-write-execute still runs,
and uemu writes code through /proc/PID/mem.

Every record is little-endian with every field at its natural alignment and
explicit padding, so the same bytes mean the same on all four ABIs (an i386
``uint64_t`` is 4-aligned inside a struct; no field relies on that).
``uemu.runtime.build`` turns these records into the C header the runtime is
compiled with, with a ``_Static_assert`` per offset, so the two cannot drift.
Untouched pages of the area cost nothing: the sizes are generous.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

PAGE = 4096
CODE_SIZE = 1 << 20
"""Read+exec part: the blob at 0, XOL slots at ``SLOTS_OFF``, trampolines at ``TRAMP_OFF``."""
DATA_SIZE = 2 << 20
"""Read+write part, right after the code: the table."""
AREA_SIZE = CODE_SIZE + DATA_SIZE
BLOB_MAX = 64 << 10
"""Room for the runtime blob at the start of the code part."""
SLOTS_OFF = BLOB_MAX
TRAMP_OFF = 512 << 10
"""Trampolines of issue 12 (jumps instead of traps) start here."""

BLOB_MAGIC = b"UEMURT1\0"
BLOB_VERSION = 1
TABLE_MAGIC = b"UEMUTBL1"
TABLE_VERSION = 1
HEADER_SIZE = PAGE
"""The table header's room; the arrays start after it."""
INJECT_REGS = 48
"""Registers an inject record can give back (every one of ``Arch.ucontext_regs``)."""
ACTION_SIZE = 64
"""Room for a kernel ``struct sigaction`` (20 to 32 bytes on the ABIs here)."""


class TableState(enum.IntEnum):
    """The table's life.  Kernel: none; the closest is MMF_HAS_UPROBES being cleared."""

    ARMED = 0
    """uemu's writes may be in the process; a trap of ours undoes them all."""
    RESTORING = 1
    """The handler is undoing them (a fork that copied this state redoes it)."""
    RESTORED = 2
    """Every site and counter is back; the program's SIGTRAP action is not, yet."""
    DETACHED = 3
    """Nothing of uemu left to undo; the program's action is (or is being put) back."""


class SiteState(enum.IntEnum):
    FREE = 0
    ARMED = 1


class SlotFlags(enum.IntFlag):
    """How to finish a step left in a slot.  Kernel: the UPROBE_FIX_* flags of
    arch/x86/kernel/uprobes.c's default_post_xol_op()."""

    VALID = 1
    FIX_IP = 2
    """ip = site + (ip - slot) when ip lies in [slot, slot + insn_len]."""
    FIX_CALL = 4
    """The return address at [sp], slot + insn_len, becomes site + insn_len."""
    SCRATCH = 8
    """Put ``scratch_value`` back into the ucontext at ``scratch_off``."""


class ThreadFlags(enum.IntFlag):
    SWALLOW = 1
    """uemu changed this stopped thread's registers to (swallow_ip, swallow_sp): a SIGTRAP
    the kernel delivers there when uemu dies before resuming it is not the program's."""
    STEP = 2
    """The thread single-steps the instruction of slot record ``step_slot``."""


class InjectState(enum.IntEnum):
    IDLE = 0
    ACTIVE = 1


# --------------------------------------------------------------------------
# Records: a dataclass per record, its fields' C types in field metadata.
# --------------------------------------------------------------------------

_FORMATS = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q"}
_CTYPES = {"u8": "uint8_t", "u16": "uint16_t", "u32": "uint32_t", "u64": "uint64_t"}


def u8() -> int:
    return field(default=0, metadata={"ctype": "u8"})


def u32() -> int:
    return field(default=0, metadata={"ctype": "u32"})


def u64() -> int:
    return field(default=0, metadata={"ctype": "u64"})


def raw(size: int) -> bytes:
    """A byte array of ``size`` bytes (zero-padded when shorter)."""
    return field(default=b"", metadata={"ctype": "bytes", "size": size})


def pad(size: int) -> bytes:
    """Explicit padding, so that every field is naturally aligned on every ABI."""
    return field(default=b"", metadata={"ctype": "pad", "size": size}, repr=False, compare=False)


R = TypeVar("R", bound="DataclassInstance")


class Record(Generic[R]):
    """A fixed little-endian layout bound to its dataclass: encoding, decoding, offsets."""

    def __init__(self, cls: type[R], cname: str):
        self.cls = cls
        self.cname = cname
        self.members = [(f.name, f.metadata["ctype"], f.metadata.get("size", 1)) for f in fields(cls)]

    @cached_property
    def struct(self) -> struct.Struct:
        return struct.Struct("<" + "".join(
            f"{size}x" if ctype == "pad" else f"{size}s" if ctype == "bytes" else _FORMATS[ctype]
            for _, ctype, size in self.members))

    @property
    def size(self) -> int:
        return self.struct.size

    @cached_property
    def offsets(self) -> dict[str, int]:
        out, offset = {}, 0
        for name, ctype, size in self.members:
            width = size if ctype in ("pad", "bytes") else struct.calcsize(_FORMATS[ctype])
            assert ctype in ("pad", "bytes") or offset % width == 0, f"{self.cname}.{name} misaligned"
            out[name] = offset
            offset += width
        return out

    def offset(self, name: str) -> int:
        return self.offsets[name]

    def encode(self, record: R) -> bytes:
        return self.struct.pack(*(getattr(record, name) for name, ctype, _ in self.members if ctype != "pad"))

    def decode(self, data: bytes) -> R:
        values = iter(self.struct.unpack(data[:self.size]))
        return self.cls(**{name: next(values) for name, ctype, _ in self.members if ctype != "pad"})

    def c_definition(self) -> str:
        """The C struct, with a static assertion per offset and of the size."""
        lines = [f"struct {self.cname} {{"]
        for name, ctype, size in self.members:
            if ctype in ("pad", "bytes"):
                lines.append(f"    uint8_t {name}[{size}];")
            else:
                lines.append(f"    {_CTYPES[ctype]} {name};")
        lines.append("};")
        lines.append(f"_Static_assert(sizeof(struct {self.cname}) == {self.size}, \"{self.cname} size\");")
        for name, offset in self.offsets.items():
            lines.append(f"_Static_assert(__builtin_offsetof(struct {self.cname}, {name}) == {offset}, "
                         f"\"{self.cname}.{name}\");")
        return "\n".join(lines)


@dataclass
class BlobHeader:
    """Offset 0 of the runtime blob: what it is and where its entry points are."""

    magic: bytes = raw(8)
    version: int = u32()
    size: int = u32()
    trap_handler: int = u32()
    """An SA_SIGINFO handler for SIGTRAP."""
    restorer: int = u32()
    """rt_sigreturn, for SA_RESTORER."""
    inject_syscall: int = u32()
    """The arch's syscall instruction followed by its trap instruction."""
    hit_entry: int = u32()
    """Reserved for the jump trampolines of issue 12; 0 for now."""
    reserved: bytes = pad(8)


@dataclass
class TableHeader:
    magic: bytes = raw(8)
    version: int = u32()
    state: int = u32()
    lock: int = u32()
    """0 or the tid of the thread restoring (a waiter takes it over from a tid that is gone)."""
    restore_delay_ms: int = u32()
    tracer_pid: int = u64()
    action_back: int = u32()
    """Set to 1 by the thread that put the program's SIGTRAP action back."""
    action_size: int = u32()
    """Bytes of the kernel's ``struct sigaction`` on this ABI."""
    sites_off: int = u32()
    sites_cap: int = u32()
    counters_off: int = u32()
    counters_cap: int = u32()
    slots_off: int = u32()
    slots_cap: int = u32()
    threads_off: int = u32()
    threads_cap: int = u32()
    saved_action: bytes = raw(ACTION_SIZE)
    """The program's own SIGTRAP action, as rt_sigaction returned it."""
    our_action: bytes = raw(ACTION_SIZE)
    """The action uemu installs: the runtime's handler with the program's flags and mask."""
    mem_path: bytes = raw(16)
    """"/proc/self/mem": the runtime has no read-only data of its own."""
    reserved: bytes = pad(56)


@dataclass
class Site:
    """What uemu wrote over the program's bytes at ``addr``."""

    addr: int = u64()
    len: int = u8()
    state: int = u8()
    prot: int = u8()
    """PROT_* of the page, for the mprotect fallback."""
    reserved: bytes = pad(5)
    orig: bytes = raw(16)
    trap: bytes = raw(16)
    padding: bytes = pad(16)


@dataclass
class Counter:
    """A 16-bit signed semaphore at ``addr`` that uemu raised ``raised`` times."""

    addr: int = u64()
    raised: int = u32()
    reserved: bytes = pad(4)


@dataclass
class Slot:
    """How to finish a step whose thread was left in an XOL slot."""

    slot: int = u64()
    trap_addr: int = u64()
    """The trap instruction right after the displaced instruction in the slot."""
    site: int = u64()
    insn_len: int = u32()
    flags: int = u32()
    scratch_off: int = u32()
    """Byte offset in the arch's ucontext of the register a SCRATCH step borrowed."""
    word: int = u32()
    """Size of a return address (FIX_CALL)."""
    scratch_value: int = u64()
    padding: bytes = pad(16)


@dataclass
class Thread:
    tid: int = u32()
    flags: int = u32()
    swallow_ip: int = u64()
    swallow_sp: int = u64()
    step_slot: int = u32()
    """Index of the slot record of a STEP."""
    reserved: bytes = pad(4)


@dataclass
class InjectReg:
    offset: int = u32()
    """Byte offset in the arch's ucontext."""
    reserved: bytes = pad(4)
    value: int = u64()


@dataclass
class InjectHeader:
    state: int = u32()
    tid: int = u32()
    count: int = u32()
    reserved: bytes = pad(4)


BLOB_HEADER = Record(BlobHeader, "blob_header")
TABLE_HEADER = Record(TableHeader, "table_header")
SITE = Record(Site, "site")
COUNTER = Record(Counter, "counter")
SLOT = Record(Slot, "slot")
THREAD = Record(Thread, "thread")
INJECT_HEADER = Record(InjectHeader, "inject_header")
INJECT_REG = Record(InjectReg, "inject_reg")
# Any: records of several types in one sequence (Record is invariant in its type)
RECORDS: Sequence[Record[Any]] = (BLOB_HEADER, TABLE_HEADER, SITE, COUNTER, SLOT, THREAD,
                                  INJECT_HEADER, INJECT_REG)

for _record in (SITE, COUNTER, SLOT, THREAD):
    # A write within one page is all or nothing even when uemu is killed during it (GUP
    # stops between pages on a fatal signal): no entry may straddle a page.
    assert PAGE % _record.size == 0, f"{_record.cname}: {_record.size} bytes"

INJECT_OFF = TABLE_HEADER.size
"""The inject record follows the table header's fields."""
INJECT_REGS_OFF = INJECT_OFF + INJECT_HEADER.size
assert INJECT_REGS_OFF + INJECT_REGS * INJECT_REG.size <= HEADER_SIZE
MEM_PATH = b"/proc/self/mem"


@dataclass(frozen=True)
class Capacities:
    """How many entries each array of the table holds."""

    sites: int = 20480
    counters: int = 4096
    slots: int = 4096
    threads: int = 8192

    ARRAYS: ClassVar[tuple[tuple[str, Record[Any]], ...]] = (
        ("sites", SITE), ("counters", COUNTER), ("slots", SLOT), ("threads", THREAD))

    def offsets(self) -> dict[str, int]:
        """Byte offset of each array from the table's start, in ``ARRAYS`` order, each on a
        page of its own."""
        out, offset = {}, HEADER_SIZE
        for name, record in self.ARRAYS:
            out[name] = offset
            offset += -(-getattr(self, name) * record.size // PAGE) * PAGE
        if offset > DATA_SIZE:
            raise ValueError(f"a table of {offset} bytes does not fit in {DATA_SIZE}")
        return out


DEFAULT_CAPACITIES = Capacities()
DEFAULT_CAPACITIES.offsets()  # fits, or fail at import
