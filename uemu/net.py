"""The safety net inside a traced process: the in-target runtime's table, kept true by uemu.

Before its first breakpoint goes into an address space, uemu maps an area there
(``map_area``: code, then data), writes the runtime blob and the table header, and
installs the runtime's SIGTRAP handler with the program's own action saved in the table
(``Net.install``).  While uemu lives, ptrace takes every SIGTRAP first and the handler
runs only for traps that are not uemu's (it chains to the program's action).  When uemu
dies, a thread meeting one of its breakpoints runs the handler, which undoes everything
the table lists and resumes the thread where the kernel would have (uemu/runtime/src/
runtime.c).  So the table must be true at every instant uemu could die: an entry is
written before the write it describes and cleared after that write is undone.

Every method here is one write to the process's memory where it can be (a write within
one page is all or nothing even if uemu is killed during it; no entry straddles a page),
and the free lists make adding and removing O(1).

Every write is also told to the net's journal (``journal.py``), outside the process:
before the table on the way in, after it on the way out, so that both always claim at
least what the process holds; ``uemu repair`` reads both (``repair.py``).

Kernel: none; the kernel's uprobes cannot outlive themselves.  Differs from the kernel's
xol_area (VM_DONTCOPY): the area is inherited by fork, because a forked child inherits
uemu's breakpoints, raised counters and SIGTRAP action, so it must inherit the net that
undoes them (uemu cleans unfollowed children itself).
"""

from __future__ import annotations

import copy
import functools
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from uemu.arch import Arch
from uemu.arch.base import KernelSigaction

from . import errors, runtime
from .journal import Journal
from .maps import PROT_EXEC, PROT_READ, PROT_WRITE
from .runtime import layout
from .runtime.layout import (
    Capacities,
    Counter,
    InjectHeader,
    InjectReg,
    InjectState,
    Site,
    SiteState,
    Slot,
    SlotFlags,
    TableHeader,
    TableState,
    Thread,
    ThreadFlags,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_R = TypeVar("_R", bound="DataclassInstance")
"""One record type of the table (``layout.Record``'s own)."""

MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x02, 0x20, 0x100000
SA_SIGINFO, SA_RESTORER, SA_RESETHAND = 0x4, 0x04000000, 0x80000000
SIGSET_SIZE = 8
"""sizeof(sigset_t) as rt_sigaction wants it, on every ABI here."""
DEFAULT_RESTORE_DELAY_MS = 100
"""How long the handler keeps its action after restoring, for threads that trapped on a
breakpoint just before it went away and are still on their way to signal delivery."""


class Memory(Protocol):
    """What the net needs of a process's memory (``uemu.ptrace.Memory`` is one)."""

    def read(self, address: int, size: int) -> bytes: ...

    def write(self, address: int, data: bytes) -> None: ...


InjectedCall = Callable[..., int]
"""``call(name, *args)``: one system call (an ``Arch.syscall_numbers`` name) made by a
stopped thread of the process, returning its result (-errno on failure)."""


@dataclass(frozen=True)
class MappedArea:
    """Where ``map_area`` put the area, and the memfd behind it, still open in the process
    (-1: anonymous): ``Net.install`` closes it once the handler is in."""

    start: int
    fd: int = -1


def map_area(arch: Arch, call: InjectedCall, hint: int = 0, name: int = 0, pid: int = 0) -> MappedArea:
    """Map the area in the process: read+exec code, then read+write data, never both.

    With ``hint``, the area goes exactly there or, if that fails (taken, or a kernel that
    takes MAP_FIXED_NOREPLACE as a mere hint), anywhere.  The data part is made writable
    by an mprotect, so no page is ever W+X (memory-deny-write-execute permits this).

    With ``name`` (the address of a NUL-terminated name in the process), the area is a
    private mapping of a memfd of that name, so /proc/PID/maps shows it for what it is
    (``/memfd:uemu-net (deleted)``; the kernel names its own area ``[uprobes]``, and
    anonymous areas can only be named where CONFIG_ANON_VMA_NAME is on), and it is
    not counted among the program's anonymous executable mappings.  Where a memfd
    cannot be had, the area is anonymous.

    Every call here runs before the area's own stub exists, so uemu's death within one
    leaves its thread with the call's registers: they are as few as can be.  The memfd
    is sized by uemu through ``/proc/PID/fd`` (``pid``), not by an injected ftruncate,
    and it is closed after the handler is in (``MappedArea.fd``).
    """
    rx = PROT_READ | PROT_EXEC
    fd, flags = _area_file(call, name, pid)
    start = -1
    if hint:
        start = call("mmap", hint, layout.AREA_SIZE, rx, flags | MAP_FIXED_NOREPLACE, fd, 0)
        if start >= 0 and start != hint:
            call("munmap", start, layout.AREA_SIZE)
            start = -1
    if start < 0:
        start = call("mmap", 0, layout.AREA_SIZE, rx, flags, fd, 0)
    if start < 0:
        if fd >= 0:
            call("close", fd)
        raise errors.InTargetFailure(f"mmap of the in-target runtime's area failed: {os.strerror(-start)}")
    result = call("mprotect", start + layout.CODE_SIZE, layout.DATA_SIZE, PROT_READ | PROT_WRITE)
    if result < 0:
        call("munmap", start, layout.AREA_SIZE)
        if fd >= 0:
            call("close", fd)
        raise errors.InTargetFailure(f"mprotect of the in-target runtime's table failed: {os.strerror(-result)}")
    return MappedArea(start, fd)


MFD_CLOEXEC, MFD_EXEC = 0x1, 0x10
AREA_NAME = b"uemu-net"
AREA_PATH = "/memfd:uemu-net (deleted)"
"""How /proc/PID/maps names an area mapped with ``name`` pointing at ``AREA_NAME``."""


@functools.cache
def _memfd_flags() -> int:
    """MFD_EXEC where this kernel knows it (6.3 on; memfds were executable before), asked
    of the kernel in uemu's own process, so the target makes one call, not a refused one
    and another."""
    try:
        os.close(os.memfd_create("uemu-probe", MFD_CLOEXEC | MFD_EXEC))
    except OSError:
        return MFD_CLOEXEC
    return MFD_CLOEXEC | MFD_EXEC


def _area_file(call: InjectedCall, name: int, pid: int) -> tuple[int, int]:
    """(fd, mmap flags) for the area: a memfd of ``name`` AREA_SIZE long, or anonymous."""
    if not name:
        return -1, MAP_PRIVATE | MAP_ANONYMOUS
    fd = call("memfd_create", name, _memfd_flags())
    if fd < 0:
        return -1, MAP_PRIVATE | MAP_ANONYMOUS
    if not _resize(pid, fd) and call("ftruncate", fd, layout.AREA_SIZE) < 0:
        call("close", fd)
        return -1, MAP_PRIVATE | MAP_ANONYMOUS
    return fd, MAP_PRIVATE


def _resize(pid: int, fd: int) -> bool:
    """Size the process's memfd ``fd`` from here (its inode is 0777; /proc/PID/fd opens it
    for a tracer of the process), which no death of uemu's can leave half done."""
    if not pid:
        return False
    try:
        os.truncate(f"/proc/{pid}/fd/{fd}", layout.AREA_SIZE)
    except OSError:
        return False
    return True


class _Entries:
    """Indices of one table array: in use by key, and a free list."""

    def __init__(self, capacity: int, what: str):
        self.capacity = capacity
        self.what = what
        self.by_key: dict[int, int] = {}
        self.free: list[int] = []
        self.unused = 0
        """Every index from here on has never been used."""

    def take(self, key: int) -> tuple[int, bool]:
        """The key's index, and whether it is new."""
        index = self.by_key.get(key)
        if index is not None:
            return index, False
        if self.free:
            index = self.free.pop()
        elif self.unused < self.capacity:
            index = self.unused
            self.unused += 1
        else:
            raise errors.InTargetFailure(f"the in-target runtime's table is full: {self.capacity} {self.what}")
        self.by_key[key] = index
        return index, True

    def release(self, key: int) -> int | None:
        index = self.by_key.pop(key, None)
        if index is not None:
            self.free.append(index)
        return index

    def adopt(self, key: int, index: int) -> None:
        self.by_key[key] = index
        self.unused = max(self.unused, index + 1)

    def seal(self) -> None:
        """After adopting: every index below ``unused`` not in use is free."""
        used = set(self.by_key.values())
        self.free = [i for i in range(self.unused - 1, -1, -1) if i not in used]


class Net:
    """The table of one address space, at ``base`` (the area's start) in ``memory``."""

    def __init__(self, arch: Arch, base: int, memory: Memory, capacities: Capacities = layout.DEFAULT_CAPACITIES,
                 journal: Journal | None = None):
        self.arch = arch
        self.base = base
        self.memory = memory
        self.blob = runtime.load_blob(arch.name)
        self.capacities = capacities
        self.table = base + layout.CODE_SIZE
        offsets = capacities.offsets()
        self._array = {name: self.table + offset for name, offset in offsets.items()}
        self._sites = _Entries(capacities.sites, "sites")
        self._counters = _Entries(capacities.counters, "counters")
        self._raised: dict[int, int] = {}
        self._slots = _Entries(capacities.slots, "slot records")
        self._threads = _Entries(capacities.threads, "thread records")
        self.journal = journal or Journal.disabled()
        """The same writes, kept outside the process (``journal.py``)."""

    # ----- addresses in the area ------------------------------------------------------

    @property
    def trap_handler(self) -> int:
        return self.base + self.blob.trap_handler

    @property
    def restorer(self) -> int:
        return self.base + self.blob.restorer

    @property
    def inject_syscall(self) -> int:
        """Point a thread here to make it run one system call: the syscall instruction is
        followed by a trap, which the handler recognises (R5) if uemu dies meanwhile."""
        return self.base + self.blob.inject_syscall

    @property
    def inject_trap(self) -> int:
        return self.inject_syscall + len(self.arch.syscall_insn)

    @property
    def slots_area(self) -> tuple[int, int]:
        """(start, size) of the code part's room for XOL slots."""
        return self.base + layout.SLOTS_OFF, layout.TRAMP_OFF - layout.SLOTS_OFF

    @property
    def saved_action_address(self) -> int:
        return self.table + layout.TABLE_HEADER.offset("saved_action")

    @property
    def our_action_address(self) -> int:
        return self.table + layout.TABLE_HEADER.offset("our_action")

    # ----- setting up -----------------------------------------------------------------

    def install(self, call: InjectedCall, tracer_pid: int, restore_delay_ms: int = DEFAULT_RESTORE_DELAY_MS,
                area_fd: int = -1) -> None:
        """Write the blob and the table, then install the handler.

        The program's action goes straight from the kernel into the table (the old-action
        pointer of the same rt_sigaction that installs ours), so the table holds it from
        the instant ours is in, and that call is the first made through the area's stub:
        if uemu dies within it, its trap finds the handler in.  Ours carries the
        program's flags and mask (``our_action``), not known before that call: it is
        made for the action of a program that set none, and set again if the program's
        differs.  Differs from keeping them exact at every instant: a trap that is not
        ours, in that window of a program with a SIGTRAP action of its own and of a uemu
        killed there, reaches the program's handler with the default flags and mask.
        ``area_fd`` (``MappedArea.fd``) is closed once the handler is in.
        Call with every thread of the process stopped, before any breakpoint.
        """
        self.journal.note_area(self.base, layout.AREA_SIZE, self.arch.name)
        self.memory.write(self.base, self.blob.code)
        offsets, capacities = self.capacities.offsets(), self.capacities
        header = TableHeader(
            magic=layout.TABLE_MAGIC, version=layout.TABLE_VERSION, state=TableState.ARMED,
            restore_delay_ms=restore_delay_ms, tracer_pid=tracer_pid, action_size=self._sigaction.size,
            sites_off=offsets["sites"], sites_cap=capacities.sites,
            counters_off=offsets["counters"], counters_cap=capacities.counters,
            slots_off=offsets["slots"], slots_cap=capacities.slots,
            threads_off=offsets["threads"], threads_cap=capacities.threads,
            mem_path=layout.MEM_PATH,
        )
        self.memory.write(self.table, layout.TABLE_HEADER.encode(header))
        first = self.our_action(bytes(self._sigaction.size))
        self.memory.write(self.our_action_address, first)
        self._rt_sigaction(call, self.our_action_address, self.saved_action_address)
        saved = self.program_action()
        self.journal.note_action(saved)
        ours = self.our_action(saved)
        if ours != first:
            self.memory.write(self.our_action_address, ours)
            self._rt_sigaction(call, self.our_action_address, 0)
        if area_fd >= 0:
            call("close", area_fd)

    def uninstall(self, call: InjectedCall, last: InjectedCall, keep_area: bool = False) -> None:
        """Put the program's action back (unless it set one itself meanwhile) and unmap
        the area, once uemu has undone every write the table lists and no thread is
        inside the area.  The action is read through ``call`` (the area's stub: a uemu
        dying within it is undone by the handler), put back and the area unmapped
        through ``last``, which must not use the stub: after the first the stub's trap
        would reach the program's action, after the second the stub is gone.
        ``keep_area``: it stays mapped, inert (the jump path's trampolines are in it: a
        thread may still be inside one)."""
        layout_ = self._sigaction
        self._rt_sigaction(call, 0, self.our_action_address)
        current = self.memory.read(self.our_action_address, layout_.size)
        handler = int.from_bytes(current[layout_.handler:layout_.handler + layout_.word], "little")
        if handler == self.trap_handler:
            self._rt_sigaction(last, self.saved_action_address, 0)
        # else the program set its action where uemu could not see it (sigtrap.py): it stays
        if keep_area:
            return
        result = last("munmap", self.base, layout.AREA_SIZE)
        if result < 0:
            raise errors.InTargetFailure(f"munmap of the in-target runtime's area failed: {os.strerror(-result)}")
        self.journal.remove()  # nothing of uemu is left in the process

    def fork(self, memory: Memory, pid: int) -> Net:
        """The net of forked child ``pid``, whose area and table are copies of this one's
        (its journal too: ``Journal.fork``)."""
        child = Net(self.arch, self.base, memory, self.capacities, self.journal.fork(pid))
        child._sites, child._counters = copy.deepcopy(self._sites), copy.deepcopy(self._counters)
        child._slots, child._threads = copy.deepcopy(self._slots), copy.deepcopy(self._threads)
        child._raised = dict(self._raised)
        return child

    def _rt_sigaction(self, call: InjectedCall, new: int, old: int) -> None:
        result = call("rt_sigaction", signal.SIGTRAP, new, old, SIGSET_SIZE)
        if result < 0:
            raise errors.InTargetFailure(f"rt_sigaction(SIGTRAP) in the target failed: {os.strerror(-result)}")

    @property
    def _sigaction(self) -> KernelSigaction:
        sigaction = self.arch.sigaction
        if sigaction is None:
            raise errors.UnsupportedArch(self.arch.name, what="no in-target runtime for it")
        return sigaction

    def our_action(self, saved: bytes) -> bytes:
        """The action uemu installs for a program whose own is ``saved`` (raw kernel bytes).

        The program's flags and mask are kept, so a trap that is not ours reaches the
        program's handler with the mask it expects; SA_SIGINFO and SA_RESTORER (where the
        ABI has it) are added.  Differs from a plain copy: SA_RESETHAND is left out and
        carried out by the handler when it chains, else the kernel would reset the
        action at one of our own traps and the program's could not be put back.
        """
        layout_ = self._sigaction
        word = layout_.word
        out = bytearray(saved[:layout_.size].ljust(layout_.size, b"\0"))
        flags = int.from_bytes(out[layout_.flags:layout_.flags + word], "little")
        flags = (flags | SA_SIGINFO) & ~SA_RESETHAND
        out[layout_.handler:layout_.handler + word] = self.trap_handler.to_bytes(word, "little")
        if layout_.restorer is not None:
            flags |= SA_RESTORER
            out[layout_.restorer:layout_.restorer + word] = self.restorer.to_bytes(word, "little")
        out[layout_.flags:layout_.flags + word] = flags.to_bytes(word, "little")
        return bytes(out)

    def program_action(self) -> bytes:
        """The program's own SIGTRAP action, as the table keeps it (raw kernel bytes)."""
        return self.memory.read(self.saved_action_address, self._sigaction.size)

    def take_program_action(self, action: bytes) -> None:
        """The program sets its SIGTRAP action while traced (uemu saw its rt_sigaction
        at entry, ``sigtrap.py``): the table keeps it to chain to and to put back, and
        the kernel is to be given ``our_action_address``, the net's action with the
        program's new mask and flags.  The saved action is written first: if uemu dies
        between the two writes, the handler chains to the program's new action."""
        self.journal.note_action(action[:self._sigaction.size])
        self.memory.write(self.saved_action_address, action[:self._sigaction.size])
        self.memory.write(self.our_action_address, self.our_action(action))

    # ----- what uemu writes -----------------------------------------------------------

    def add_site(self, addr: int, orig: bytes, trap: bytes, prot: int) -> None:
        """Before writing ``trap`` over ``orig`` at ``addr`` (``prot``: the page's PROT_*)."""
        self.journal.note_site(addr, orig[:len(trap)], trap)
        index, _ = self._sites.take(addr)
        entry = Site(addr=addr, len=len(trap), state=SiteState.ARMED, prot=prot, orig=orig[:len(trap)], trap=trap)
        self._write_entry("sites", layout.SITE, index, entry)

    def remove_site(self, addr: int) -> None:
        """After the program's bytes are back at ``addr``."""
        index = self._sites.release(addr)
        if index is not None:
            self._write_field("sites", layout.SITE, index, "state", bytes([SiteState.FREE]))
        self.journal.note_site_gone(addr)

    def raise_counter(self, addr: int) -> None:
        """Before raising the semaphore at ``addr`` by one.  If uemu dies between the two
        writes, the handler lowers it once too often, but never below 0."""
        self._set_raised(addr, self._raised.get(addr, 0) + 1)

    def lower_counter(self, addr: int) -> None:
        """After lowering the semaphore at ``addr`` by one."""
        raised = self._raised.get(addr, 0)
        if raised:
            self._set_raised(addr, raised - 1)

    def forget_counter(self, addr: int) -> None:
        """The counter's page went (munmap): nothing there to lower any more."""
        self._set_raised(addr, 0)

    def move_counter(self, old: int, new: int) -> None:
        """The counter's page moved (mremap) with the count uemu raised in it: the new
        entry first, so the table never claims less than uemu raised."""
        raised = self._raised.get(old, 0)
        if raised:
            self._set_raised(new, raised)
            self._set_raised(old, 0)

    def _set_raised(self, addr: int, raised: int) -> None:
        """The journal is told before a raise and after a lowering: it claims at least
        what the process holds."""
        up = raised > self._raised.get(addr, 0)
        if up:
            self.journal.note_counter(addr, raised)
        self._set_table_raised(addr, raised)
        if not up:
            self.journal.note_counter(addr, raised)

    def _set_table_raised(self, addr: int, raised: int) -> None:
        if raised == 0:
            self._raised.pop(addr, None)
            index = self._counters.release(addr)
            if index is not None:
                self._write_field("counters", layout.COUNTER, index, "raised", (0).to_bytes(4, "little"))
            return
        self._raised[addr] = raised
        index, new = self._counters.take(addr)
        if new:
            self._write_entry("counters", layout.COUNTER, index, Counter(addr=addr, raised=raised))
        else:
            self._write_field("counters", layout.COUNTER, index, "raised", raised.to_bytes(4, "little"))

    def set_slot(self, slot: int, trap_addr: int, site: int, insn_len: int, flags: SlotFlags,
                 scratch: tuple[str, int] | None = None) -> None:
        """Before a thread can be left in the XOL slot at ``slot``: how to finish its step.

        ``trap_addr`` is the trap right after the displaced instruction (every slot must
        end in a trap or jump back, so that a thread left there reaches the handler);
        ``scratch`` is (register, value at the site) for a step that borrows a register.
        """
        flags |= SlotFlags.VALID
        scratch_off = scratch_value = 0
        if scratch is not None:
            flags |= SlotFlags.SCRATCH
            scratch_off, scratch_value = self.arch.ucontext_regs[scratch[0]], scratch[1]
        index, _ = self._slots.take(slot)
        entry = Slot(slot=slot, trap_addr=trap_addr, site=site, insn_len=insn_len, flags=flags,
                     scratch_off=scratch_off, word=self.arch.word_size, scratch_value=scratch_value)
        self._write_entry("slots", layout.SLOT, index, entry)

    def clear_slot(self, slot: int) -> None:
        """After no thread can be in the slot any more (freed, or rewritten for another plan:
        then ``set_slot`` again instead)."""
        index = self._slots.release(slot)
        if index is not None:
            self._write_field("slots", layout.SLOT, index, "flags", (0).to_bytes(4, "little"))

    def set_thread(self, tid: int, flags: ThreadFlags, swallow_ip: int = 0, swallow_sp: int = 0,
                   step_slot: int | None = None) -> None:
        """Before uemu changes a stopped thread's registers to (``swallow_ip``, ``swallow_sp``)
        (SWALLOW) or starts a single-step of the slot at ``step_slot`` (STEP)."""
        index, _ = self._threads.take(tid)
        slot_index = self._slots.by_key[step_slot] if step_slot is not None else 0
        entry = Thread(tid=tid, flags=flags, swallow_ip=swallow_ip, swallow_sp=swallow_sp, step_slot=slot_index)
        self._write_entry("threads", layout.THREAD, index, entry)

    def clear_thread(self, tid: int) -> None:
        """After the thread was resumed as set (or exited)."""
        index = self._threads.release(tid)
        if index is not None:
            self._write_field("threads", layout.THREAD, index, "flags", (0).to_bytes(4, "little"))

    def begin_inject(self, tid: int, regs: Mapping[str, int]) -> None:
        """Before pointing thread ``tid`` at ``inject_syscall``: the registers to give it back
        (by regset name; those a signal frame does not hold are skipped)."""
        offsets = self.arch.ucontext_regs
        mask = (1 << (8 * self.arch.word_size)) - 1
        pairs = [InjectReg(offset=offsets[name], value=value & mask) for name, value in regs.items() if name in offsets]
        header = InjectHeader(state=InjectState.ACTIVE, tid=tid, count=len(pairs))
        data = layout.INJECT_HEADER.encode(header) + b"".join(layout.INJECT_REG.encode(pair) for pair in pairs)
        self.memory.write(self.table + layout.INJECT_OFF, data)

    def end_inject(self) -> None:
        """After the thread's registers are back."""
        self.memory.write(self.table + layout.INJECT_OFF, InjectState.IDLE.to_bytes(4, "little"))

    def set_state(self, state: TableState) -> None:
        """DETACHED once uemu has itself undone every write the table lists, before asking
        the handler (a SIGTRAP sent by uemu, R6) to put the program's action back."""
        self.memory.write(self.table + layout.TABLE_HEADER.offset("state"), state.to_bytes(4, "little"))

    def action_back(self) -> bool:
        """Whether the handler has put the program's SIGTRAP action back."""
        offset = layout.TABLE_HEADER.offset("action_back")
        return self.memory.read(self.table + offset, 4) != b"\0\0\0\0"

    def _write_entry(self, array: str, record: layout.Record[_R], index: int, entry: _R) -> None:
        self.memory.write(self._array[array] + index * record.size, record.encode(entry))

    def _write_field(self, array: str, record: layout.Record[_R], index: int, name: str, data: bytes) -> None:
        self.memory.write(self._array[array] + index * record.size + record.offset(name), data)

    # ----- reading a table back -------------------------------------------------------

    @classmethod
    def adopt(cls, arch: Arch, base: int, memory: Memory) -> Net:
        """The net of an address space that already has one (a forked child: its table is
        a copy of its parent's), with its entries in use."""
        view = read_table(base, memory)
        header = view.header
        capacities = Capacities(sites=header.sites_cap, counters=header.counters_cap,
                                slots=header.slots_cap, threads=header.threads_cap)
        net = cls(arch, base, memory, capacities)
        for index, site in view.sites:
            net._sites.adopt(site.addr, index)
        for index, counter in view.counters:
            net._counters.adopt(counter.addr, index)
            net._raised[counter.addr] = counter.raised
        for index, slot in view.slots:
            net._slots.adopt(slot.slot, index)
        for index, thread in view.threads:
            net._threads.adopt(thread.tid, index)
        for entries in (net._sites, net._counters, net._slots, net._threads):
            entries.seal()
        return net


@dataclass(frozen=True)
class TableView:
    """A table as it is in memory: the header and the entries in use, with their indices."""

    header: TableHeader
    sites: list[tuple[int, Site]]
    counters: list[tuple[int, Counter]]
    slots: list[tuple[int, Slot]]
    threads: list[tuple[int, Thread]]
    inject: InjectHeader
    inject_regs: list[InjectReg]


def read_table(base: int, memory: Memory) -> TableView:
    """Decode the table of the area at ``base`` (for ``uemu repair`` and tests)."""
    table = base + layout.CODE_SIZE
    header = layout.TABLE_HEADER.decode(memory.read(table, layout.TABLE_HEADER.size))
    if header.magic != layout.TABLE_MAGIC or header.version != layout.TABLE_VERSION:
        raise errors.InTargetFailure(f"no uemu table of version {layout.TABLE_VERSION} at {table:#x}")

    def in_use(record: layout.Record[_R], offset: int, capacity: int,
               used: Callable[[_R], object]) -> list[tuple[int, _R]]:
        data = memory.read(table + offset, capacity * record.size)
        entries = (record.decode(data[i * record.size:(i + 1) * record.size]) for i in range(capacity))
        return [(index, entry) for index, entry in enumerate(entries) if used(entry)]

    inject = layout.INJECT_HEADER.decode(memory.read(table + layout.INJECT_OFF, layout.INJECT_HEADER.size))
    count = min(inject.count, layout.INJECT_REGS)
    regs_data = memory.read(table + layout.INJECT_REGS_OFF, count * layout.INJECT_REG.size)
    return TableView(
        header=header,
        sites=in_use(layout.SITE, header.sites_off, header.sites_cap, lambda e: e.state == SiteState.ARMED),
        counters=in_use(layout.COUNTER, header.counters_off, header.counters_cap, lambda e: e.raised),
        slots=in_use(layout.SLOT, header.slots_off, header.slots_cap, lambda e: e.flags & SlotFlags.VALID),
        threads=in_use(layout.THREAD, header.threads_off, header.threads_cap, lambda e: e.flags),
        inject=inject,
        inject_regs=[layout.INJECT_REG.decode(regs_data[i * layout.INJECT_REG.size:]) for i in range(count)],
    )
