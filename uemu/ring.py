"""uemu's end of the event ring: a memfd the jump path's trampolines write hits into.

One ring per traced image: created in the target at setup (memfd_create, ftruncate and a
MAP_SHARED mmap injected there, then the descriptor closed again), opened by uemu
through /proc/PID/fd/N before that close and mapped here too.  A fork shares it (the
mapping is inherited, the records carry the pid); an exec gets a new one.

Producers (threads at a hit, uemu/runtime/src/runtime.c) reserve a record by a
compare-and-swap of ``head`` and commit it by its stamps; uemu is the one consumer: it
takes the records whose stamps say they are of this lap, from ``tail`` on, and moves
``tail``, writing nothing the producers write (layout.RingHeader says how).  Losses are
counted by producers (a u32 that wraps; differences are summed here) and by the reader
(records nobody finished), and reported exactly.

Kernel: none of the kernel's uprobes; the shape is that of the BPF ring buffer
(kernel/bpf/ringbuf.c: a busy record until it is committed, records that never wrap, a
consumer position only the consumer moves), made lock-free for producers in several
processes, and a consumer that sleeps on a futex the first producer after it wakes.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import mmap
import os
import platform
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator

from uemu.arch import Arch, by_name

from . import errors
from .maps import PROT_READ, PROT_WRITE
from .runtime import layout
from .runtime.layout import RingFlags, RingHeader

DEFAULT_SIZE = 16 << 20
"""Data bytes of a ring (``--ring-size``, whose help says this default): a few hundred
thousand records, CPython's all-probes burst of a small script (146 000 records, 6.5 MB)
without a wait.  Memory of the target, taken as hits first reach each page (shared with
uemu, which maps the same pages)."""
MIN_SIZE = 64 << 10
"""The largest record a site can have (12 strings of STR_MAX bytes) fits."""
MAX_SIZE = 1 << 30
"""Positions are 32-bit and wrap: a ring of at most half their range."""
TAKE_MAX = 4096
"""Records per take: the reader hands them on in batches."""
STALL_NS = 1_000_000_000
"""A record left unfinished this long at ``tail``: its thread left the hit midway."""
MFD_CLOEXEC = 1
MAP_SHARED, MAP_POPULATE = 1, 0x8000
FUTEX_WAIT, FUTEX_WAKE = 0, 1
MEMBARRIER_CMD_PRIVATE_EXPEDITED, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED = 8, 16
_MEMBARRIER = {"aarch64": 283, "riscv64": 283}
"""Hosts whose stores and loads may be reordered (not x86): membarrier orders them."""

InjectedCall = Callable[..., int]
_HEADER = struct.Struct("<4xIIIQ")
"""A record's header after its length word: id, pid, tid, ts_ns."""
_U32 = struct.Struct("<I")
_BUSY_LAP = layout.STAMP_BUSY >> layout.STAMP_LAP_SHIFT
_OFF = {name: layout.RING_HEADER.offset(name) for name, _, _ in layout.RING_HEADER.members}


Header = tuple[int, int, int, int]
"""A record's header: id, pid, tid, ts_ns."""


class _Host:
    """uemu's own system calls for the ring: futex, and a full barrier where the host's
    memory model needs one (Python's stores through the mapping are plain)."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.syscall.restype = ctypes.c_long
        machine = platform.machine()
        host: Arch = by_name("x86_64" if machine in ("x86_64", "AMD64") else machine)
        self.futex_nr = host.syscall_numbers["futex"]
        self.robust_nr = host.syscall_numbers["set_robust_list"]
        self.membarrier = _MEMBARRIER.get(host.name)
        if self.membarrier is not None:
            self.libc.syscall(self.membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0)

    def set_robust_list(self, head: int, size: int) -> bool:
        return bool(self.libc.syscall(self.robust_nr, ctypes.c_void_p(head), ctypes.c_size_t(size)) == 0)

    def futex(self, address: int, op: int, value: int, timeout_ns: int | None = None) -> None:
        spec = None
        if timeout_ns is not None:
            spec = (ctypes.c_long * 2)(*divmod(timeout_ns, 1_000_000_000))
        self.libc.syscall(self.futex_nr, ctypes.c_void_p(address), op, value, spec, 0, 0)

    def fence(self) -> None:
        if self.membarrier is not None:
            self.libc.syscall(self.membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0)


class _RobustListHead(ctypes.Structure):
    """Kernel: ``struct robust_list_head`` (include/uapi/linux/futex.h)."""

    _fields_ = [("next", ctypes.c_void_p), ("futex_offset", ctypes.c_long), ("list_op_pending", ctypes.c_void_p)]


class Sentinel:
    """A thread of uemu that lives as long as uemu, whose robust futex list holds the
    ``owner`` word of every ring: however uemu dies (SIGKILL too), the kernel sets
    FUTEX_OWNER_DIED in each word (kernel: ``exit_robust_list()`` ->
    ``handle_futex_death()``, for a word holding the dying thread's tid), and the next hit
    in the target sees it with one load, and restores everything (the runtime's
    ``uemu_gone``).  Without it a hit would learn of uemu's death from TracerPid, which is
    too slow to read at every hit: hits of the first second or so would miss it.

    The list is this module's alone (the thread runs no code that uses glibc's robust
    mutexes); each ring's entry is its ``owner_next`` word, ``owner`` at -8 from it.  The
    kernel reads the list only when the thread exits, so other threads change it freely,
    each change one pointer store that leaves the list whole."""

    def __init__(self) -> None:
        self._head = _RobustListHead()
        self._head.next = ctypes.addressof(self._head)  # empty: the list points at its head
        self._head.futex_offset = _OFF["owner"] - _OFF["owner_next"]
        self._entries: list[int] = []
        self._lock = threading.Lock()
        self.tid = 0
        """The thread's tid once its list is registered; 0: it could not be."""
        self.pid = os.getpid()
        ready = threading.Event()
        threading.Thread(target=self._live, args=(ready,), name="uemu-sentinel", daemon=True).start()
        ready.wait()

    def _live(self, ready: threading.Event) -> None:
        if host().set_robust_list(ctypes.addressof(self._head), ctypes.sizeof(self._head)):
            self.tid = threading.get_native_id()
        ready.set()
        threading.Event().wait()  # until uemu ends

    def watch(self, events: Ring) -> None:
        """``events``'s owner word is held by the sentinel from now on."""
        if not self.tid:
            return
        entry = events.address() + _OFF["owner_next"]
        with self._lock:
            events.set_owner(self.tid)
            _set_pointer(entry, self._head.next or 0)
            self._head.next = entry
            self._entries.insert(0, entry)

    def unwatch(self, events: Ring) -> None:
        """Out of the list before the ring's mapping may go."""
        entry = events.address() + _OFF["owner_next"]
        with self._lock:
            if entry not in self._entries:
                return
            at = self._entries.index(entry)
            after = self._entries[at + 1] if at + 1 < len(self._entries) else ctypes.addressof(self._head)
            if at == 0:
                self._head.next = after
            else:
                _set_pointer(self._entries[at - 1], after)
            del self._entries[at]


def _set_pointer(address: int, value: int) -> None:
    ctypes.c_void_p.from_address(address).value = value


_sentinel: Sentinel | None = None


def sentinel() -> Sentinel:
    """This process's sentinel (a process forked from uemu has no thread of its parent's)."""
    global _sentinel
    if _sentinel is None or _sentinel.pid != os.getpid():
        _sentinel = Sentinel()
    return _sentinel


_host: _Host | None = None


def host() -> _Host:
    global _host
    if _host is None:
        _host = _Host()
    return _host


class Ring:
    """The ring as uemu sees it: ``buffer`` is the whole memfd (header, then data)."""

    def __init__(self, buffer: mmap.mmap | bytearray, target_address: int, fd: int = -1,
                 sync: Callable[[], None] | None = None):
        self.buffer = buffer
        self.view = memoryview(buffer)
        self.target_address = target_address
        self.fd = fd
        self._sync = sync
        """For a buffer that is a copy (tests: unicorn memory): called after each write."""
        header = self.header()
        if header.magic != layout.RING_MAGIC or header.version != layout.RING_VERSION:
            raise errors.InTargetFailure(f"not a uemu event ring (version {header.version}) at {target_address:#x}")
        self.data_size = header.size
        """Bytes of records."""
        self.size = mapped_size(header.size)
        """Bytes mapped after the header page: the data and its stamps (what to unmap)."""
        self.data = header.data_off
        stamps = header.data_off + header.size
        self._stamp_words = self.view[stamps:stamps + header.size // 4].cast("H")
        """The stamps, a u16 per 8 data bytes, read by index (no tuple per record; the
        host's order, which is the target's: the ring is shared memory)."""
        self.tail = header.tail
        self._lost_seen = header.lost
        self.lost = 0
        """Events producers dropped (full ring under --drop, re-entrant hits, uemu leaving)."""
        self.unfinished = 0
        """Records a thread never finished (it left a hit midway), skipped at the end."""
        self._stalled_since: int | None = None
        self._address: int | None = None
        self._counters_cap = header.counters_cap
        self._counters_off = header.counters_off
        self._counters_used = 0

    @staticmethod
    def initial(size: int, drop: bool) -> bytes:
        """A fresh ring's header page (data and stamps: zeroes)."""
        if size & (size - 1) or size < 4 * layout.PAGE:
            raise ValueError("a ring's size is a power of two of at least four pages")
        now = time.monotonic_ns() >> 20
        counters = -(-layout.RING_HEADER.size // 8) * 8
        header = RingHeader(magic=layout.RING_MAGIC, version=layout.RING_VERSION,
                            flags=RingFlags.DROP if drop else RingFlags(0), size=size, data_off=layout.PAGE,
                            heartbeat=now, checked=now & 0xFFFFFFFF, counters_off=counters,
                            counters_cap=(layout.PAGE - counters) // 8)
        return layout.RING_HEADER.encode(header).ljust(layout.PAGE, b"\0")

    def header(self) -> RingHeader:
        return layout.RING_HEADER.decode(bytes(self.view[:layout.RING_HEADER.size]))

    def _u32(self, name: str) -> int:
        value: int = _U32.unpack_from(self.view, _OFF[name])[0]
        return value

    def _set_u32(self, name: str, value: int) -> None:
        _U32.pack_into(self.view, _OFF[name], value & 0xFFFFFFFF)

    # ---- counters ------------------------------------------------------------------

    def take_counter(self) -> int | None:
        """A hit counter never used in this ring (counts only grow: a site armed again
        gets a new one); None: none left, the site writes records."""
        if self._counters_used >= self._counters_cap:
            return None
        self._counters_used += 1
        return self._counters_used - 1

    def counts(self) -> tuple[int, ...]:
        """Every counter taken so far, by index: the hits of counted sites until now."""
        return struct.unpack_from(f"<{self._counters_used}Q", self.view, self._counters_off)

    # ---- taking records ------------------------------------------------------------

    def take(self, final: bool = False) -> list[int]:
        """Where the finished records from ``tail`` on are in ``view``, in ring order
        (``headers`` reads what they say).  Their bytes stay there until the next call,
        which gives their room back.
        ``final``: uemu is done with this ring; a record nobody finished is skipped."""
        self._give_back()
        self._set_u32("heartbeat", time.monotonic_ns() >> 20)
        mask, stamps, data = self.data_size - 1, self._stamp_words, self.data
        length_of, pad_bit, lap_bit, shift = layout.STAMP_LEN, layout.STAMP_PAD, self.data_size, layout.STAMP_LAP_SHIFT
        offsets: list[int] = []
        append = offsets.append
        position, head, busy = self.tail, self.head(), False  # later records: the next take
        while position != head and len(offsets) < TAKE_MAX:
            at = position & mask
            stamp = stamps[at >> 3]
            if stamp >> shift != (2 if position & lap_bit else 1) or not stamp & length_of:
                if not final:
                    busy = True
                    break
                self.unfinished += 1
                position = self._past_unfinished(position, head, stamp)
                continue
            if not stamp & pad_bit:
                append(data + at)
            position = (position + ((stamp & length_of) << 3)) & 0xFFFFFFFF
        self._note_stall(busy)
        if position != self.tail:
            host().fence()  # the records' bytes are read after their stamps (a system call: not for nothing)
        self._taken = position
        lost = self._u32("lost")
        self.lost += (lost - self._lost_seen) & 0xFFFFFFFF
        self._lost_seen = lost
        return offsets

    def headers(self, offsets: list[int]) -> Iterator[Header]:
        """The headers of the records at ``offsets``, unpacked by one loop in C (a Python
        step per record cost a tenth of the reader's time, py-spy)."""
        return map(_HEADER.unpack_from, itertools.repeat(self.view), offsets)

    _taken: int | None = None

    def _past_unfinished(self, position: int, head: int, stamp: int) -> int:
        """Where the next record starts after one a thread left unfinished at ``position``
        (uemu's last read): a busy stamp says its length; without one (the thread stopped
        right after it reserved), the next first stamp of this lap, or busy, ends it."""
        if stamp >> layout.STAMP_LAP_SHIFT == _BUSY_LAP:
            return (position + ((stamp & layout.STAMP_LEN) << 3)) & 0xFFFFFFFF
        while True:
            position = (position + 8) & 0xFFFFFFFF
            if position == head or position & (self.data_size - 1) == 0 or self._committed(position, busy=True):
                return position

    def head(self) -> int:
        """Where producers reserve next, now."""
        return self._u32("head")

    def reached(self, position: int) -> bool:
        """The last ``take`` went as far as ``position`` (a ``head`` read before it)."""
        taken = self.tail if self._taken is None else self._taken
        return (taken - position) & 0xFFFFFFFF < 1 << 31

    def _give_back(self) -> None:
        """Move ``tail`` past what the last ``take`` returned (its records read first)."""
        end = self._taken
        if end is None or end == self.tail:
            return
        host().fence()
        self.tail = end & 0xFFFFFFFF
        self._set_u32("tail", self.tail)
        self._set_u32("tail_seq", self._u32("tail_seq") + 1)
        self._taken = None
        if self._sync is not None:
            self._sync()
        if self._u32("waiters") and self._address is not None:
            host().futex(self._address + _OFF["tail_seq"], FUTEX_WAKE, 0x7FFFFFFF)

    def release(self) -> None:
        """Give back what the last ``take`` returned, now (the reader is about to sleep)."""
        self._give_back()

    def _note_stall(self, busy: bool) -> None:
        now = time.monotonic_ns()
        if not busy:
            if self._stalled_since is not None:
                self._stalled_since = None
                self._set_u32("stalled", 0)
            return
        if self._stalled_since is None:
            self._stalled_since = now
        elif now - self._stalled_since > STALL_NS and not self._u32("stalled"):
            self._set_u32("stalled", 1)

    @property
    def stalled(self) -> bool:
        return bool(self._u32("stalled"))

    # ---- sleeping until a producer writes ---------------------------------------------

    def address(self) -> int:
        """The mapping's address in uemu (for futexes)."""
        if self._address is None:
            self._address = ctypes.addressof(ctypes.c_char.from_buffer(self.buffer))
        return self._address

    def sleep(self, timeout_ns: int) -> None:
        """Wait until a producer finishes a record (it wakes us), or ``timeout_ns``.  Writes
        nothing but ``reader_wait``: a take under way in another thread is safe."""
        self._set_u32("reader_wait", 1)
        host().fence()
        if not self._committed(self.tail):
            host().futex(self.address() + _OFF["reader_wait"], FUTEX_WAIT, 1, timeout_ns)
        self._set_u32("reader_wait", 0)

    def _committed(self, position: int, busy: bool = False) -> bool:
        """A record (or padding) of this lap was committed at ``position`` (``busy``: or
        reserved, and said so)."""
        stamp: int = self._stamp_words[(position & (self.data_size - 1)) >> 3]
        lap = stamp >> layout.STAMP_LAP_SHIFT
        fresh = lap == (2 if position & self.data_size else 1) or (busy and lap == _BUSY_LAP)
        return fresh and bool(stamp & layout.STAMP_LEN)

    def wake_reader(self) -> None:
        """End the reader's ``sleep`` now, as a producer does (uemu is leaving: its
        reader need not wait out the poll)."""
        self._set_u32("reader_wait", 0)
        host().futex(self.address() + _OFF["reader_wait"], FUTEX_WAKE, 1)

    def set_owner(self, tid: int) -> None:
        self._set_u32("owner", tid)

    def close(self) -> None:
        if _sentinel is not None and self.fd >= 0:
            _sentinel.unwatch(self)
        self._stamp_words.release()
        self.view.release()
        if isinstance(self.buffer, mmap.mmap):
            with contextlib.suppress(BufferError):  # a futex address is still exported: the mapping goes with uemu
                self.buffer.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def parse_size(text: str) -> int:
    """``--ring-size``'s value: bytes, or a number with K, M or G (powers of 1024)."""
    match = re.fullmatch(r"([0-9]{1,12})([KMG]?)", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"not a size: {text!r} (bytes, or a number with K, M or G)")
    return checked_size(int(match[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[match[2].upper()], text)


def checked_size(size: int, text: str | None = None) -> int:
    """``size``, a power of two from MIN_SIZE to MAX_SIZE, or ValueError."""
    if size & (size - 1) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"{text or size!r}: a ring's size is a power of two from 64K to 1G")
    return size


def mapped_size(size: int) -> int:
    """Bytes after the header page of a ring of ``size`` data bytes: the data, then its
    stamps (a u16 per 8 bytes)."""
    return size + size // 4


def create(pid: int, arch: Arch, call: InjectedCall, name_address: int, size: int = DEFAULT_SIZE,
           drop: bool = False, populate: bool = True) -> Ring:
    """Create a ring in process ``pid`` (a thread of it stopped, ``call`` injecting its
    system calls; ``name_address``: the memfd's name, written there already) and map it
    in uemu too.  The descriptor uemu made in the target is closed again before this
    returns; if uemu dies in between, the target keeps one more open file.
    ``populate``: every page of it is made and mapped in the target now (MAP_POPULATE,
    best effort): a hit that is first to write a page would take a page fault, a new
    shared page zeroed and mapped, which costs more than the rest of the hit; not for a
    ring that only counts (``--count``: the header page alone is written)."""
    total = layout.PAGE + mapped_size(size)
    fd = call("memfd_create", name_address, MFD_CLOEXEC)
    if fd < 0:
        raise errors.InTargetFailure(f"memfd_create in process {pid} failed: {os.strerror(-fd)}")
    own = -1
    try:
        result = call("ftruncate", fd, total)
        if result < 0:
            raise errors.InTargetFailure(f"ftruncate of the ring in process {pid} failed: {os.strerror(-result)}")
        own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
        buffer = mmap.mmap(own, total, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        buffer[:layout.PAGE] = Ring.initial(size, drop)
        flags = MAP_SHARED | (MAP_POPULATE if populate else 0)
        address = call("mmap", 0, total, PROT_READ | PROT_WRITE, flags, fd, 0)
        if address < 0 or (arch.word_size == 4 and address >= 1 << 32):
            buffer.close()
            raise errors.InTargetFailure(f"mmap of the ring in process {pid} failed: {os.strerror(-address)}")
    except BaseException:
        if own >= 0:
            os.close(own)
        call("close", fd)
        raise
    call("close", fd)
    events = Ring(buffer, address, own)
    sentinel().watch(events)
    return events
