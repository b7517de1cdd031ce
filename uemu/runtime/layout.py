"""The in-target area and its table, defined once for Python and for the C runtime.

The area uemu maps in every traced address space is ``CODE_SIZE`` bytes of
read+exec code (the runtime blob, then XOL slots, then the jump path's trampolines)
followed by ``DATA_SIZE`` bytes of read+write data: the table below, which says
everything uemu wrote into the process so that the runtime's trap handler can undo it
when uemu is gone, then the jump path's own part (``JUMPS_OFF``: its header, the
jumped sites with their fetch programs, the thread-pointer table).  The event ring
the jump path writes is not in the area: it is a memfd shared with uemu (``Ring*``
records below).  Never W+X: a program under memory-deny-write-execute still runs,
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
CODE_SIZE = 2 << 20
"""Read+exec part: the blob at 0, XOL slots at ``SLOTS_OFF``, trampolines at ``TRAMP_OFF``."""
TABLE_SIZE = 2 << 20
"""The net's table, at the start of the read+write part."""
JUMPS_OFF = TABLE_SIZE
"""The jump path's part of the read+write part, from the table's start."""
JUMPS_SIZE = 2 << 20
DATA_SIZE = TABLE_SIZE + JUMPS_SIZE
"""Read+write part, right after the code: the table, then the jump path's part."""
AREA_SIZE = CODE_SIZE + DATA_SIZE
BLOB_MAX = 64 << 10
"""Room for the runtime blob at the start of the code part."""
SLOTS_OFF = BLOB_MAX
TRAMP_OFF = 512 << 10
"""Trampolines of the jump path (issue 12) fill the code part from here to its end."""

BLOB_MAGIC = b"UEMURT1\0"
BLOB_VERSION = 2
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


def u16() -> int:
    return field(default=0, metadata={"ctype": "u16"})


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
    """What a trampoline calls with a jumped site's index: saves every register, records
    the hit into the ring, restores them (the jump path, uemu/jumps.py)."""
    read_counter: int = u32()
    """Reads the CPU's counter (JumpsFlags.COUNTER); 0 where the ABI's runtime has none."""
    reserved: bytes = pad(4)


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


# --------------------------------------------------------------------------
# The jump path (issue 12): the part at JUMPS_OFF, and the ring's memfd.
# --------------------------------------------------------------------------

JUMPS_MAGIC = b"UEMUJMP1"
JUMPS_VERSION = 5
RING_MAGIC = b"UEMURNG1"
RING_VERSION = 7


class JumpsState(enum.IntEnum):
    OFF = 0
    """Trampolines record nothing (uemu is leaving, or has not set the ring up yet)."""
    ON = 1


class JumpsFlags(enum.IntFlag):
    THREAD_POINTER = 1
    """The thread pointer can be read without a fault (x86_64: rdfsbase is enabled,
    HWCAP2_FSGSBASE); without it every hit asks gettid."""
    COUNTER = 2
    """The kernel keeps time by the CPU's counter (the arch's ``Counter.clocksource``), so
    a record's time is read through it (the header's clock pair) instead of the vDSO."""
    SYSCALL_CLOCK = 4
    """The clock is the system call's, not the vDSO's: a thread turned the counter off,
    which makes the vDSO's clock fault too (``JumpPath.counter_refused``)."""


class FetchKind(enum.IntEnum):
    """One step of a site's fetch program; each leaves a fixed-size slot in the record."""

    REG = 1
    """A register's full word (8 bytes in the record on every ABI)."""
    MEM = 2
    """``size`` bytes at base + index * scale + disp: a u32 status (``size``, or 0 when
    unreadable), 4 bytes of padding, the bytes rounded up to 8."""
    CONST = 4
    """``disp`` as 8 bytes: a constant pointer a STR op reads from (a string literal the
    compiler passed as an immediate)."""
    STR = 3
    """A NUL-terminated string at the pointer stored ``ptr_slot`` bytes into the record (a
    ``size``-byte word): u32 length (bytes before the NUL, ``STR_UNREADABLE`` when not even
    its first byte is readable), 4 bytes of padding, ``disp`` bytes rounded up to 8."""


class FetchFlags(enum.IntFlag):
    INDEX_SIGNED = 1
    """The index register's ``index_bytes`` view is sign-extended (aarch64 sxtw)."""
    DIRECT = 2
    """Read with a plain load: an operand the compiler addressed from the stack pointer,
    inside the probed function's own frame.  Every other read is fault-safe
    (process_vm_readv on the process itself)."""


REG_NONE = 0xFF
REG_SP = 0xFE
"""The stack pointer at the site (the trampoline moved it: the runtime computes it)."""
REG_IP = 0xFD
"""The site's address (what the trap path gives a spec naming the instruction pointer)."""
STR_UNREADABLE = 0xFFFFFFFF
STR_MAX = 4096
"""Longest string the jump path copies at a hit (--strsize above it: the trap path)."""
TP_TOMBSTONE = 1
"""A thread-pointer slot whose thread is gone (probing goes on past it)."""
TP_SHARED = 0xFFFFFFFF
"""The tid of a slot whose thread pointer several live threads share (raw clone without
CLONE_SETTLS): those threads ask gettid."""
TP_PROBES = 16
"""Slots looked at from a thread pointer's hash before giving up (then gettid)."""


def tp_hash(tp: int) -> int:
    """Where a thread pointer's slot search starts, before masking (the C runtime's
    ``tp_hash()`` computes the same, a unicorn test checks it)."""
    return (((tp >> 4) ^ (tp >> 20) ^ (tp >> 36)) * 0x9E3779B1) & 0xFFFFFFFF


@dataclass
class JumpsHeader:
    """The jump path's part of one address space (private: a forked child has a copy,
    which uemu corrects at the fork)."""

    magic: bytes = raw(8)
    version: int = u32()
    state: int = u32()
    pid: int = u32()
    """Put into every record: this process's pid (uemu sets it at setup and at fork)."""
    flags: int = u32()
    ring: int = u64()
    """The ring's address in this process."""
    clock: int = u64()
    """The vDSO's clock_gettime in this process; 0: the system call."""
    jump_sites_off: int = u32()
    jump_sites_cap: int = u32()
    fetch_ops_off: int = u32()
    fetch_ops_cap: int = u32()
    tp_slots_off: int = u32()
    tp_slots_cap: int = u32()
    clock_seq: int = u32()
    """The clock pairs' latch (JumpsFlags.COUNTER): hits read ``clock_pairs[clock_seq &
    1]``, which the hit taking a new pair never writes (Kernel: the seqcount latch of
    ``raw_write_seqcount_latch()``): no hit ever waits for another, nor for one uemu
    parked or the scheduler left in the middle of a new pair."""
    clock_lock: int = u32()
    """1 while a hit takes a new pair (0: free).  Per process, like the pairs, not in the
    ring its forked children share; uemu clears a forked child's copy."""
    pad_clock: bytes = pad(56)
    clock_pairs: bytes = raw(128)
    """Two ``ClockPair`` records."""


class JumpSiteState(enum.IntEnum):
    FREE = 0
    ON = 1
    """A hit writes a record into the ring."""
    COUNTED = 2
    """A hit adds 1 to the ring's counter ``JumpSite.counter`` (uemu --count: nothing
    but the number is wanted)."""


@dataclass
class JumpSite:
    """One jumped site, by the index its trampoline passes to hit_entry."""

    addr: int = u64()
    """The probe's address: reported, and what a spec naming the instruction pointer reads."""
    id: int = u32()
    """uemu's name for the site in its records (never reused while records may name it)."""
    state: int = u8()
    reserved: bytes = pad(3)
    ops: int = u32()
    """Index of the first fetch op in the ops array."""
    nops: int = u32()
    record: int = u32()
    """Bytes of each record of this site (header included, a multiple of 8)."""
    counter: int = u32()
    """COUNTED: the index of this site's counter in the ring."""


@dataclass
class FetchOp:
    kind: int = u8()
    base: int = u8()
    """Frame slot of the base register, or REG_NONE, REG_SP, REG_IP.  STR: low byte of
    ``ptr_slot``."""
    index: int = u8()
    """Frame slot of the index register, or REG_NONE.  STR: high byte of ``ptr_slot``."""
    size: int = u8()
    index_bytes: int = u8()
    flags: int = u8()
    scale: int = u8()
    """Two's complement (negative: arm's subtracted index)."""
    reserved: bytes = pad(1)
    disp: int = u64()
    """Two's complement displacement (globals: their runtime address); STR: the most bytes."""


@dataclass
class ClockPair:
    """The CPU's counter and CLOCK_MONOTONIC at one moment, and the line through them that
    hits read their time from (uemu/runtime/src/runtime.c, now_ns)."""

    at: int = u64()
    """The counter when the pair was taken."""
    truth: int = u64()
    """CLOCK_MONOTONIC then, from the vDSO."""
    base: int = u64()
    """Where the line stands at ``at``: ``truth``, or where the line before it had come."""
    mult: int = u64()
    """ns per count, 32.32 fixed point; 0 until measured."""
    span: int = u64()
    """Counts after ``at`` the pair is meant for (a hit past it takes a new pair)."""
    pad_end: bytes = pad(24)


@dataclass
class TpSlot:
    """Thread pointer -> tid, written by uemu only, while the thread is stopped."""

    tp: int = u64()
    tid: int = u32()
    depth: int = u32()
    """Hits of this thread under way (a second one is a signal handler's, re-entrant):
    written by the runtime only."""
    last_ns: int = u64()
    """The time of this thread's last record: the next is later (runtime.c, uemu_hit);
    written by the runtime only."""
    pad_end: bytes = pad(8)


class RingFlags(enum.IntFlag):
    DROP = 1
    """A full ring drops the event (counted in ``lost``) instead of waiting for room."""


@dataclass
class RingHeader:
    """The start of the ring's memfd: this page, the data (``size`` bytes at ``data_off``),
    then a u16 stamp per 8 bytes of data (``STAMP_*``).  Producers (threads at a hit, in
    every process sharing the ring) reserve by one compare-and-swap of ``head`` (a 32-bit
    position, wrapping), write the record, then stamp every 8 bytes of it with the lap of
    its position, its first stamp last (with its length): the commit.  The consumer (uemu)
    takes records from ``tail`` while their first stamp is of this lap, and writes nothing
    but ``tail`` (and its own words: heartbeat, stalled, reader_wait): the data and the
    stamps producers write next are never written by another CPU.  A stale stamp is always
    of the lap before (every 8 bytes are stamped each lap, padding too) or 0 (never
    written), so it never reads as fresh; the data holds whatever earlier laps left.

    Kernel: kernel/bpf/ringbuf.c writes a BUSY header before it moves the producer
    position under a spinlock; here the stamps, kept apart from the data so that no
    argument value can look like one, let the reservation be a bare compare-and-swap."""

    magic: bytes = raw(8)
    version: int = u32()
    flags: int = u32()
    size: int = u32()
    """Bytes of data, a power of two; the stamps follow the data."""
    data_off: int = u32()
    lost: int = u32()
    """Events dropped (full ring under DROP, a re-entrant hit finding it full, uemu gone or
    leaving); wraps, the reader counts the differences."""
    stalled: int = u32()
    """Set by the reader while the record at ``tail`` stays unfinished (its thread left the
    hit midway): producers finding the ring full drop instead of waiting."""
    heartbeat: int = u32()
    """The reader's last look, in units of 2**20 ns of CLOCK_MONOTONIC."""
    checked: int = u32()
    """When a producer last asked whether uemu still traces (same units)."""
    owner: int = u32()
    """The tid of uemu's sentinel thread, whose robust futex list holds this word: the
    kernel sets FUTEX_OWNER_DIED in it when uemu dies, however (``ring.Sentinel``); 0:
    no sentinel (producers then ask TracerPid now and then)."""
    reserved: bytes = pad(4)
    owner_next: int = u64()
    """The sentinel's robust list entry (a pointer in uemu); ``owner`` is at -8 from it."""
    counters_off: int = u32()
    """Where the hit counters start (u64 each, in this header's page): sites that are
    only counted (``JumpSiteState.COUNTED``) add 1 there and write no record."""
    counters_cap: int = u32()
    head: int = u32()
    pad_head: bytes = pad(60)
    tail: int = u32()
    """Written by the reader alone, after it is done with the records below it."""
    tail_seq: int = u32()
    """Bumped by the reader at each move of ``tail``: the futex producers wait on."""
    waiters: int = u32()
    pad_tail: bytes = pad(52)
    reader_wait: int = u32()
    """Set by the reader before it sleeps on this futex; the producer that clears it wakes it."""
    pad_reader: bytes = pad(60)


STAMP_LEN = 0x1FFF
"""A record's first stamp: its length in 8-byte units (0 in the others)."""
STAMP_PAD = 1 << 13
"""Filler up to the end of the data, no record (records never wrap)."""
STAMP_LAP_SHIFT = 14
"""Bits 14-15: 1 + the parity of the position's lap (position // size): 0 is never written."""
STAMP_BUSY = 3 << STAMP_LAP_SHIFT
"""A first stamp while its record is being written (with its length): a thread that
never finishes it leaves a record the last read can skip and count.  Never stale: the
reader passes a busy record only on its last read."""
RECORD_MAX = STAMP_LEN * 8
"""The longest record a stamp can say."""


@dataclass
class RecordHeader:
    len: int = u32()
    """Bytes of the record (its stamp says it too: the reader goes by the stamp)."""
    id: int = u32()
    pid: int = u32()
    tid: int = u32()
    ts_ns: int = u64()
    """CLOCK_MONOTONIC at the hit."""


@dataclass(frozen=True)
class JumpCapacities:
    """How many entries each array of the jump path's part holds."""

    jump_sites: int = 16384
    fetch_ops: int = 65536
    tp_slots: int = 8192
    """A power of two."""

    def offsets(self) -> dict[str, int]:
        """Byte offset of each array from the jump path's part's start, each on pages of its own."""
        out, offset = {}, PAGE
        for name, record in (("jump_sites", JUMP_SITE), ("fetch_ops", FETCH_OP), ("tp_slots", TP_SLOT)):
            out[name] = offset
            offset += -(-getattr(self, name) * record.size // PAGE) * PAGE
        if offset > JUMPS_SIZE or self.tp_slots & (self.tp_slots - 1):
            raise ValueError(f"jump capacities do not fit in {JUMPS_SIZE} bytes (or tp_slots is no power of two)")
        return out


BLOB_HEADER = Record(BlobHeader, "blob_header")
TABLE_HEADER = Record(TableHeader, "table_header")
SITE = Record(Site, "site")
COUNTER = Record(Counter, "counter")
SLOT = Record(Slot, "slot")
THREAD = Record(Thread, "thread")
INJECT_HEADER = Record(InjectHeader, "inject_header")
INJECT_REG = Record(InjectReg, "inject_reg")
JUMPS_HEADER = Record(JumpsHeader, "jumps_header")
CLOCK_PAIR = Record(ClockPair, "clock_pair")
JUMP_SITE = Record(JumpSite, "jump_site")
FETCH_OP = Record(FetchOp, "fetch_op")
TP_SLOT = Record(TpSlot, "tp_slot")
RING_HEADER = Record(RingHeader, "ring_header")
RECORD_HEADER = Record(RecordHeader, "record_header")
# Any: records of several types in one sequence (Record is invariant in its type)
RECORDS: Sequence[Record[Any]] = (BLOB_HEADER, TABLE_HEADER, SITE, COUNTER, SLOT, THREAD,
                                  INJECT_HEADER, INJECT_REG, JUMPS_HEADER, CLOCK_PAIR, JUMP_SITE, FETCH_OP,
                                  TP_SLOT, RING_HEADER, RECORD_HEADER)

for _record in (SITE, COUNTER, SLOT, THREAD, JUMP_SITE, FETCH_OP, TP_SLOT):
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
        if offset > TABLE_SIZE:
            raise ValueError(f"a table of {offset} bytes does not fit in {TABLE_SIZE}")
        return out


DEFAULT_CAPACITIES = Capacities()
DEFAULT_CAPACITIES.offsets()  # fits, or fail at import
DEFAULT_JUMP_CAPACITIES = JumpCapacities()
DEFAULT_JUMP_CAPACITIES.offsets()
assert RING_HEADER.offset("head") % 64 == 0 and RING_HEADER.offset("tail") % 64 == 0
assert RING_HEADER.offset("reader_wait") % 64 == 0 and RING_HEADER.size <= PAGE
assert JUMPS_HEADER.offset("clock_pairs") % 64 == 0 and CLOCK_PAIR.size == 64
