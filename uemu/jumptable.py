"""The jump path's part of a traced process's area, kept by uemu (as net.py keeps the net's).

At ``JUMPS_OFF`` in the area's data part (uemu/runtime/layout.py): a header (state, the
pid records carry, the ring's and the vDSO clock's addresses), the jumped sites by the
index their trampolines pass, each with its fetch program, and the thread-pointer table
that names the thread of a hit without a system call.  The runtime's ``uemu_hit()``
only reads it (but a thread's ``depth``); uemu writes it through /proc/PID/mem, each
entry in one write within a page.

A site's index is never given to another site: its trampoline (which passes it) is
never rewritten either, because a thread may still be inside it, or interrupted there
by a signal whose handler runs for as long as it likes.  The same site armed again
(a library mapped again at the same address) gets its index back.  Fetch ops are
written anew at each arming and never reused: the runtime checks a site's id again once
it holds room in the ring and drops a hit whose site changed under it, but a thread
reading ops must never find another site's.
"""

from __future__ import annotations

from typing import Any

from uemu.arch import Arch

from . import errors
from .fetch import FetchProgram
from .net import Memory
from .runtime import layout
from .runtime.layout import JumpCapacities, JumpsFlags, JumpSite, JumpSiteState, JumpsState, TpSlot


class JumpTable:
    """The jump path's part of the area at ``base`` in ``memory``."""

    def __init__(self, arch: Arch, base: int, memory: Memory,
                 capacities: JumpCapacities = layout.DEFAULT_JUMP_CAPACITIES):
        self.arch = arch
        self.memory = memory
        self.capacities = capacities
        self.address = base + layout.CODE_SIZE + layout.JUMPS_OFF
        self._array = {name: self.address + offset for name, offset in capacities.offsets().items()}
        self._sites_unused = 0
        self._ops_unused = 0
        self._tp_slot: dict[int, int] = {}
        """Thread pointer -> its slot."""
        self._tp_tids: dict[int, set[int]] = {}
        """Thread pointer -> the live threads that have it."""

    # ---- the header --------------------------------------------------------------------

    def install(self, pid: int, ring: int, clock: int, flags: JumpsFlags) -> None:
        """The header, its arrays empty, recording off (``set_state`` turns it on)."""
        offsets = self.capacities.offsets()
        header = layout.JumpsHeader(
            magic=layout.JUMPS_MAGIC, version=layout.JUMPS_VERSION, state=JumpsState.OFF, pid=pid,
            flags=flags, ring=ring, clock=clock,
            jump_sites_off=offsets["jump_sites"], jump_sites_cap=self.capacities.jump_sites,
            fetch_ops_off=offsets["fetch_ops"], fetch_ops_cap=self.capacities.fetch_ops,
            tp_slots_off=offsets["tp_slots"], tp_slots_cap=self.capacities.tp_slots)
        self.memory.write(self.address, layout.JUMPS_HEADER.encode(header))

    def _header_field(self, name: str, value: int, size: int) -> None:
        self.memory.write(self.address + layout.JUMPS_HEADER.offset(name), value.to_bytes(size, "little"))

    def set_state(self, state: JumpsState) -> None:
        self._header_field("state", state, 4)

    def set_pid(self, pid: int) -> None:
        """A forked child's copy still names its parent."""
        self._header_field("pid", pid, 4)

    def clock_by_syscall(self) -> None:
        """Hits take CLOCK_MONOTONIC from the system call from now on: neither the CPU's
        counter nor the vDSO, which reads it too.  One word written: the flags (hits
        already under way may still read the counter)."""
        offset = self.address + layout.JUMPS_HEADER.offset("flags")
        flags = int.from_bytes(self.memory.read(offset, 4), "little")
        self._header_field("flags", (flags & ~JumpsFlags.COUNTER) | JumpsFlags.SYSCALL_CLOCK, 4)

    def forget_clock(self) -> None:
        """A forked child's copy of the clock pairs: a thread of the parent may have been
        taking one (the lock held for good in the child); the child takes its own."""
        start = layout.JUMPS_HEADER.offset("clock_seq")
        end = layout.JUMPS_HEADER.offset("clock_pairs") + 2 * layout.CLOCK_PAIR.size
        self.memory.write(self.address + start, bytes(end - start))

    def set_ring(self, ring: int) -> None:
        self._header_field("ring", ring, 8)

    @property
    def name_address(self) -> int:
        """Scratch room in the header page (after the header): the ring memfd's name."""
        return self.address + layout.JUMPS_HEADER.size

    # ---- sites -------------------------------------------------------------------------

    def take_index(self) -> int | None:
        """A site index never used in this address space; None when the table is full."""
        if self._sites_unused >= self.capacities.jump_sites:
            return None
        self._sites_unused += 1
        return self._sites_unused - 1

    def set_site(self, index: int, addr: int, ident: int, program: FetchProgram, counter: int | None = None) -> None:
        """Write a site's fetch program and its entry, before the jump that leads there;
        ``counter``: the site's hits only add 1 to that counter of the ring (no record)."""
        nops = len(program.ops)
        if self._ops_unused + nops > self.capacities.fetch_ops:
            raise errors.InTargetFailure(f"the jump table is full: {self.capacities.fetch_ops} fetch ops")
        start = self._ops_unused
        self._ops_unused += nops
        for number, op in enumerate(program.ops):
            self._write("fetch_ops", layout.FETCH_OP, start + number, layout.FETCH_OP.encode(op))
        entry = JumpSite(addr=addr, id=ident, state=JumpSiteState.ON if counter is None else JumpSiteState.COUNTED,
                         ops=start, nops=nops, record=program.record_size, counter=counter or 0)
        self._write("jump_sites", layout.JUMP_SITE, index, layout.JUMP_SITE.encode(entry))

    def remove_site(self, index: int) -> None:
        """After the jump that leads to the site is gone: its hits under way are dropped."""
        self._write("jump_sites", layout.JUMP_SITE, index, bytes([JumpSiteState.FREE]),
                    layout.JUMP_SITE.offset("state"))

    def _write(self, array: str, record: layout.Record[Any], index: int, data: bytes, offset: int = 0) -> None:
        self.memory.write(self._array[array] + index * record.size + offset, data)

    # ---- threads ---------------------------------------------------------------------------

    def thread_started(self, tid: int, tp: int) -> None:
        """Thread ``tid`` (stopped) has thread pointer ``tp``: its hits say ``tid``.  A
        pointer another live thread has too is marked shared (those threads ask gettid);
        one a dead thread had is taken over.  0 (no TLS yet): nothing to do."""
        if not tp:
            return
        tids = self._tp_tids.setdefault(tp, set())
        tids.add(tid)
        slot = self._tp_slot.get(tp)
        if slot is None:
            slot = self._free_tp_slot(tp)
            if slot is None:
                return  # no room within the probe window: this thread asks gettid
            self._tp_slot[tp] = slot
        tid_value = tid if len(tids) == 1 else layout.TP_SHARED
        self._write("tp_slots", layout.TP_SLOT, slot, layout.TP_SLOT.encode(TpSlot(tp=tp, tid=tid_value)))

    def thread_exited(self, tid: int) -> None:
        for tp, tids in list(self._tp_tids.items()):
            if tid not in tids:
                continue
            tids.discard(tid)
            slot = self._tp_slot.get(tp)
            if tids or slot is None:
                continue
            del self._tp_tids[tp]
            del self._tp_slot[tp]
            self._write("tp_slots", layout.TP_SLOT, slot,
                        layout.TP_SLOT.encode(TpSlot(tp=layout.TP_TOMBSTONE)))

    def forget_threads(self) -> None:
        """A forked child's copy: every slot names a thread of the parent."""
        for slot in self._tp_slot.values():
            self._write("tp_slots", layout.TP_SLOT, slot, layout.TP_SLOT.encode(TpSlot(tp=layout.TP_TOMBSTONE)))
        self._tp_slot.clear()
        self._tp_tids.clear()

    def _free_tp_slot(self, tp: int) -> int | None:
        mask = self.capacities.tp_slots - 1
        used = set(self._tp_slot.values())
        start = layout.tp_hash(tp) & mask
        for step in range(min(layout.TP_PROBES, mask + 1)):
            slot = (start + step) & mask
            if slot not in used:
                return slot
        return None

    # ---- a forked child's copy ---------------------------------------------------------------

    def copy_for(self, memory: Memory) -> JumpTable:
        """The table of a child forked from this process (its part is a copy of ours)."""
        child = JumpTable(self.arch, self.address - layout.CODE_SIZE - layout.JUMPS_OFF, memory, self.capacities)
        child._sites_unused, child._ops_unused = self._sites_unused, self._ops_unused
        child._tp_slot = dict(self._tp_slot)
        child._tp_tids = {tp: set(tids) for tp, tids in self._tp_tids.items()}
        return child
