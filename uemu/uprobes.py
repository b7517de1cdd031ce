"""The core: uprobes, their breakpoints and reference counters in every traced mm.

Mirrors kernel/events/uprobes.c: one ``Uprobe`` per (device, inode, file
offset) with its ``ref_ctr_offset``; breakpoints go into every probe VMA of
the file in every traced ``Mm``; each breakpoint written raises the counter by
one (or records a delayed entry when no counter VMA exists yet), each
breakpoint removed lowers it.  The arch backend decides what to do with the
original instruction; this module never decodes.

Here too, as in the kernel, are the hit (``handle_swbp``: breakpoint address
-> uprobe -> consumers -> emulate or step out of line) and what fork, exec and
exit do to an mm's uprobe state (``dup_mmap``, ``clear_state``).  The XOL
half lives in ``xol.py``, the consumers' reports in ``consumers.py``, what
others changed of ours (found and mended) in ``tampering.py``.

Differs from the kernel, because uemu is a tracer and the tracee must survive
it: a site whose memory differs from the file (another tracer's breakpoint) is
left alone and reported instead of overwritten ("uprobes always wins"), and a
breakpoint is restored even when lowering its counter fails, because an int3
left behind without a tracer would kill the process.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

from uemu import arch as arches
from uemu.arch import Arch
from uemu.arch.base import Backend, Emulate, Plan, Refuse, StepOutOfLine

from . import errors, ptrace, xol
from .maps import Vma, find_counter_vma, is_counter_vma, prot_at
from .net import InjectedCall, Net
from .objects import MappedObject
from .ptrace import Memory
from .runtime.layout import ThreadFlags

if TYPE_CHECKING:
    from . import argspec
    from .tasks import Task

_T = TypeVar("_T")

FileId = tuple[int, int]


@dataclass(frozen=True)
class ProbeInfo:
    """What a consumer reports for its hits: the probe's names and argument specs."""

    object: str
    provider: str
    name: str
    address: int
    """Link-time address of the site."""
    args: str
    """The note's raw argument string ('' for a raw uprobe)."""

    @property
    def full_name(self) -> str:
        return f"{self.provider}:{self.name}"


@dataclass(eq=False)
class Consumer:
    """What a user attached to a uprobe (kernel: ``struct uprobe_consumer``): one
    PROBE word's claim on one site.  Two words selecting one site are two
    consumers of one uprobe: one breakpoint, one counter increment, two reports."""

    probe: ProbeInfo
    word: str
    hits: int = 0


@dataclass(eq=False)
class Uprobe:
    """A breakpoint site of one file (kernel: ``struct uprobe``)."""

    file_id: FileId
    offset: int
    ref_ctr_offset: int
    path: str
    """The object's name, for messages."""
    original: bytes
    """The first bytes of the probed instruction, read from the file (never from memory)."""
    consumers: list[Consumer] = field(default_factory=list)
    internal: bool = False
    """uemu's own breakpoint (the dynamic linker's rendezvous): no consumer, kept all along."""
    _plans: dict[int, Plan] = field(default_factory=dict)

    def plan_at(self, backend: Backend, vaddr: int) -> Plan:
        """The backend's plan for the original instruction at ``vaddr``, decided once."""
        plan = self._plans.get(vaddr)
        if plan is None:
            plan = self._plans[vaddr] = backend.analyze(self.original, vaddr)
        return plan


@dataclass(frozen=True)
class Hit:
    """A trap at one of our breakpoints."""

    uprobe: Uprobe
    site: int
    """The breakpoint's address in this mm."""


@dataclass(eq=False)
class Mm:
    """One traced address space (kernel: ``mm_struct`` with ``MMF_HAS_UPROBES``).

    ``installed`` maps each breakpoint address to its uprobe; ``delayed`` holds
    the uprobes whose counter VMA was not mapped when their breakpoint was
    written (kernel: ``delayed_uprobe_list`` entries of this mm).
    """

    pid: int
    arch: Arch
    memory: Memory
    vmas: list[Vma]
    objects: dict[FileId, MappedObject] = field(default_factory=dict)
    installed: dict[int, Uprobe] = field(default_factory=dict)
    jumped: dict[int, Uprobe] = field(default_factory=dict)
    """Sites whose hits take the jump path (``Uprobes.jumps``) instead of a breakpoint;
    their counters are raised and lowered as a breakpoint's."""
    delayed: set[Uprobe] = field(default_factory=set)
    readers: dict[Consumer, list[argspec.Reader]] = field(default_factory=dict)
    """Argument readers per consumer, built on first hit by ``consumers.py``."""
    net: Net | None = None
    """The in-target runtime and its table (``net.py``): present before the first
    breakpoint goes in, and told of every byte and count before it changes."""
    xol_area: xol.XolArea | None = None
    """Where this mm's displaced instructions run (kernel: ``mm->uprobes_state.xol_area``)."""
    rendezvous_armed: bool = False
    """Whether the dynamic linker's rendezvous breakpoint watches this mm's dlopens
    (or there is no dynamic linker to watch)."""
    raised: dict[int, int] = field(default_factory=dict)
    """Counter address -> how many times uemu raised it and has not lowered it since:
    what to undo, and what a counter lowered behind our back is compared with."""
    reported: set[tuple[int, str]] = field(default_factory=set)
    """(address, what) already said about sites and counters changed behind our back."""

    backend: Backend = field(init=False)
    """The arch's tracing backend, kept at hand: it is needed at every hit."""

    def __post_init__(self) -> None:
        self.backend = self.arch.tracing_backend()

    @property
    def has_uprobes(self) -> bool:
        return bool(self.installed or self.jumped or self.delayed)

    def object_of(self, path: str) -> MappedObject | None:
        return next((o for o in self.objects.values() if o.elf.path == path), None)

    def trap_site(self, regs: ptrace.Regset) -> int:
        """Where the trap instruction is that a thread stopped with ``regs`` met (x86
        reports the ip after its int3)."""
        return self.backend.trap_address(regs[self.arch.ip_reg])


def check_offset(path: str, source: str, offset: int) -> None:
    """Kernel: ``__uprobe_register()`` refuses an offset past the file's end (-EINVAL)."""
    size = os.stat(source).st_size
    if offset > size:
        raise errors.UprobeError(f"{path}: offset {offset:#x} is beyond the file's {size:#x} bytes")


class JumpSites(Protocol):
    """What the core asks of the jump path (``uemu/jumps.py``): a site's bytes other
    than a breakpoint, behind the same counters and the same life cycle."""

    def install(self, mm: Mm, uprobe: Uprobe, vaddr: int) -> bool | None:
        """Write a jump at the site (the counter raised already): True; None: no jump
        fits there (nothing done); False: one fits but the process refused it."""

    def remove(self, mm: Mm, vaddr: int) -> None:
        """The file's bytes back at a jumped site."""

    def unmapped(self, mm: Mm, vaddr: int) -> None:
        """The site's page went (munmap): forget it, write nothing."""

    def holds(self, mm: Mm, vaddr: int) -> bool:
        """Whether the site's jump is still in memory."""

    def moved(self, mm: Mm, vaddr: int, new_vaddr: int) -> None:
        """mremap moved the site's text: the old place forgotten, the file's bytes back
        at ``new_vaddr`` (a jump's displacement does not move with it)."""

    def dup(self, parent: Mm, child: Mm) -> None:
        """A fork's child (stopped) has copies of the parent's jumps."""

    def forget(self, mm: Mm) -> None:
        """The mm is gone (exit, exec) or no longer ours."""

    def thread_seen(self, mm: Mm, tid: int) -> None:
        """A new thread of ``mm``, stopped (its hits are named by its thread pointer)."""

    def thread_exited(self, mm: Mm, tid: int) -> None:
        """A thread of ``mm`` is gone."""

    def leave(self, mm: Mm) -> None:
        """Detaching: nothing is recorded any more; the sites are removed next."""

    def keeps_area(self, mm: Mm, tids: Iterable[int], call: InjectedCall) -> bool:
        """Detaching, the sites removed: whether the net's area must stay mapped (a
        thread of ``tids`` is inside the jump path's code); else its parts are unmapped."""


class Uprobes:
    """The registry and the life-cycle hooks (kernel: uprobes_tree and its callers)."""

    def __init__(self, warn: Callable[[str], None]):
        self.by_site: dict[tuple[int, int, int], Uprobe] = {}
        self.by_file: dict[FileId, list[Uprobe]] = {}
        self.offsets_by_file: dict[FileId, list[int]] = {}
        """Each file's uprobe offsets, sorted: the jump path asks which sites lie near
        one, a bisection rather than a walk over every site of the file."""
        self.warn = warn
        self.jumps: JumpSites | None = None
        """The jump path, where the session uses it: sites where a jump fits take it."""

    # ---- registration ------------------------------------------------------

    def register(
        self, mapped: MappedObject, offset: int, ref_ctr_offset: int, probe: ProbeInfo | None, word: str = ""
    ) -> Uprobe:
        """Find or create the uprobe at (file, offset) and add the consumer of
        (``probe``, ``word``); ``probe`` None makes it one of uemu's own.

        Kernel: ``uprobe_register()`` checks and ``alloc_uprobe()``; a second
        registration with another ``ref_ctr_offset`` is refused in its words.
        """
        key = (*mapped.file_id, offset)
        uprobe = self.by_site.get(key)
        if uprobe is None:
            uprobe = self._new_uprobe(mapped, offset, ref_ctr_offset)
            self.by_site[key] = uprobe
            self.by_file.setdefault(mapped.file_id, []).append(uprobe)
            bisect.insort(self.offsets_by_file.setdefault(mapped.file_id, []), offset)
        elif uprobe.ref_ctr_offset != ref_ctr_offset:
            raise errors.UprobeError(
                f"{mapped.elf.path}: ref_ctr_offset mismatch. inode: {mapped.file_id[1]:#x} "
                f"offset: {offset:#x} ref_ctr_offset(old): {uprobe.ref_ctr_offset:#x} "
                f"ref_ctr_offset(new): {ref_ctr_offset:#x}"
            )
        if probe is None:
            uprobe.internal = True
        elif not any(c.probe == probe and c.word == word for c in uprobe.consumers):
            uprobe.consumers.append(Consumer(probe, word))
        return uprobe

    def unregister(self, word: str) -> list[Uprobe]:
        """Drop the consumers of a PROBE word; the uprobes left with none, whose
        breakpoints must now go (kernel: ``uprobe_unregister()``)."""
        emptied = []
        for uprobe in self.by_site.values():
            before = len(uprobe.consumers)
            uprobe.consumers = [c for c in uprobe.consumers if c.word != word]
            if before and not uprobe.consumers and not uprobe.internal:
                emptied.append(uprobe)
        return emptied

    def remove_uprobe(self, mm: Mm, uprobe: Uprobe) -> None:
        """Take one uprobe out of one mm: its breakpoints (each lowering the counter)
        and its delayed entry."""
        for vaddr in [v for v, u in (*mm.installed.items(), *mm.jumped.items()) if u is uprobe]:
            self.remove_breakpoint(mm, vaddr)
        mm.delayed.discard(uprobe)

    def _new_uprobe(self, mapped: MappedObject, offset: int, ref_ctr_offset: int) -> Uprobe:
        path = mapped.elf.path
        elf = mapped.elf
        backend = arches.for_elf(elf.e_machine, elf.elf_class, elf.little_endian).tracing_backend()
        source = mapped.elf.source
        check_offset(path, source, offset)
        if ref_ctr_offset % 2:
            raise errors.UprobeError(f"{path}: ref_ctr_offset {ref_ctr_offset:#x} is not 2-byte aligned")
        with open(source, "rb") as stream:
            stream.seek(offset)
            original = stream.read(backend.max_insn_len)
        if not original:
            raise errors.UprobeError(f"{path}: cannot read the instruction at offset {offset:#x}")
        if backend.is_trap(original):
            # Kernel: prepare_uprobe() -> -ENOTSUPP when the file itself holds a trap.
            raise errors.UprobeError(f"{path}: offset {offset:#x} holds a trap instruction in the file")
        return Uprobe(mapped.file_id, offset, ref_ctr_offset, path, original)

    # ---- breakpoints ---------------------------------------------------------

    def install_breakpoint(self, mm: Mm, uprobe: Uprobe, vaddr: int) -> None:
        """Kernel: ``install_breakpoint()`` -> ``set_swbp()`` -> ``uprobe_write_opcode()``.

        Differs: the kernel raises the counter before it writes the opcode; uemu after
        (and a jump's too), so that a death of uemu's between the two leaves a
        breakpoint, whose first hit brings the net's handler that lowers every count,
        not a raised counter that no hit will ever lower.  A hit in between is reported
        as any other; it could only come from a thread that read the counter before."""
        if vaddr in mm.installed or vaddr in mm.jumped:
            return  # verify_opcode(): already a breakpoint of ours, nothing to do
        backend = mm.backend
        plan = uprobe.plan_at(backend, vaddr)
        if isinstance(plan, Refuse):
            # Kernel: the registration fails for this probe; the others stay.
            self.warn(f"cannot probe {plan.text!r} at {vaddr:#x} ({uprobe.path}+{uprobe.offset:#x}): {plan.reason}")
            return
        if self.jumps is not None and self._install_jump(mm, uprobe, vaddr):
            return
        trap = backend.trap_bytes(uprobe.original)
        expected = uprobe.original[: len(trap)]
        current = self._read_site(mm, uprobe, vaddr, len(trap))
        if current is None:
            return
        if current != expected:
            what = "another tracer's breakpoint" if backend.is_trap(current) else "bytes that differ from the file"
            self.warn(
                f"process {mm.pid}: {vaddr:#x} ({uprobe.path}+{uprobe.offset:#x}) holds {what} "
                f"({current.hex()}, file has {expected.hex()}); left alone"
            )
            return
        if mm.net is not None:
            mm.net.add_site(vaddr, expected, trap, prot_at(mm.vmas, vaddr))
        try:
            mm.memory.write(vaddr, trap)
        except OSError:
            if mm.net is not None:
                mm.net.remove_site(vaddr)
            raise
        if not self.update_ref_ctr(mm, uprobe, +1):
            mm.memory.write(vaddr, expected)  # kernel: no opcode where the counter cannot be raised
            if mm.net is not None:
                mm.net.remove_site(vaddr)
            return
        mm.installed[vaddr] = uprobe

    def _install_jump(self, mm: Mm, uprobe: Uprobe, vaddr: int) -> bool:
        """The jump path's take on the site, the counter raised after it as for a
        breakpoint; False: the site takes a breakpoint."""
        assert self.jumps is not None
        if not self.jumps.install(mm, uprobe, vaddr):
            return False
        if not self.update_ref_ctr(mm, uprobe, +1):
            self.jumps.remove(mm, vaddr)  # as a breakpoint: nothing left where the counter cannot be raised
            return True
        mm.jumped[vaddr] = uprobe
        return True

    def remove_breakpoint(self, mm: Mm, vaddr: int) -> None:
        """Kernel: ``remove_breakpoint()`` -> ``set_orig_insn()``; bytes come from the file."""
        jumped = mm.jumped.pop(vaddr, None)
        if jumped is not None:
            assert self.jumps is not None
            self.jumps.remove(mm, vaddr)
            self.update_ref_ctr(mm, jumped, -1)
            return
        uprobe = mm.installed.pop(vaddr)
        backend = mm.backend
        trap = backend.trap_bytes(uprobe.original)
        original = uprobe.original[: len(trap)]
        current = self._read_site(mm, uprobe, vaddr, len(trap))
        if current != trap:
            if current is not None:  # an unreadable page was said already
                self.warn(f"process {mm.pid}: breakpoint at {vaddr:#x} was overwritten by someone else; left as is")
            mm.delayed.discard(uprobe)
            if mm.net is not None:
                mm.net.remove_site(vaddr)
            return
        self.update_ref_ctr(mm, uprobe, -1)
        mm.memory.write(vaddr, original)
        if mm.net is not None:
            mm.net.remove_site(vaddr)
        if mm.memory.read(vaddr, len(original)) != original:
            self.warn(f"process {mm.pid}: could not restore the original bytes at {vaddr:#x}")

    def _read_site(self, mm: Mm, uprobe: Uprobe, vaddr: int, length: int) -> bytes | None:
        """The bytes at a site, or None (said) where its page cannot be read: a
        mapping past the end of a file cut short.  Kernel: ``verify_opcode()``
        fails, and nothing is written or counted."""
        try:
            return mm.memory.read(vaddr, length)
        except OSError as err:
            self.warn(f"process {mm.pid}: cannot read {vaddr:#x} ({uprobe.path}+{uprobe.offset:#x}): {err}; "
                      "left alone")
            return None

    def remove_all(self, mm: Mm) -> None:
        for vaddr in [*mm.installed, *mm.jumped]:
            self.remove_breakpoint(mm, vaddr)
        mm.delayed.clear()

    # ---- the hit ---------------------------------------------------------------

    def find_active_uprobe(self, mm: Mm, regs: ptrace.Regset) -> Hit | None:
        """Kernel: ``find_active_uprobe()``: the breakpoint of ours this trap is
        from, or None (the program's own int3, raise(SIGTRAP), a debugger)."""
        site = mm.trap_site(regs)
        uprobe = mm.installed.get(site)
        return None if uprobe is None else Hit(uprobe, site)

    def handle_swbp(self, task: Task, mm: Mm, hit: Hit, regs: ptrace.Regset,
                    report: Callable[[Task, Mm, Hit, ptrace.RegsView], None] | None) -> bool:
        """Kernel: ``handle_swbp()``: the original instruction, emulated (an SDT nop:
        no second stop) or stepped out of line (``pre_ssout()``), and the consumers
        (``report``, None for a task we only keep safe), which see the registers as
        at the site.  False when no XOL slot is free: nothing was done, the thread
        waits (kernel: ``xol_get_insn_slot()`` sleeps) and the hit is handled again.

        Differs in order: the kernel runs the consumers first.  uemu first sets the
        registers the hit leaves, so that a thread whose tracer dies while the
        consumers run (Python work, the longest part of a hit) goes on right: the
        kernel drops the SIGTRAP of a thread whose tracer dies in its signal-delivery
        stop and resumes it as its registers say (uemu/runtime/README: R3).
        """
        plan = hit.uprobe.plan_at(mm.backend, hit.site)
        before = self._carry_out(task, mm, hit, plan, regs)
        if before is None:
            return False
        if report is not None:
            report(task, mm, hit, regs.at(mm.arch.ip_reg, hit.site, before))
        return True

    def _carry_out(self, task: Task, mm: Mm, hit: Hit, plan: Plan, regs: ptrace.Regset) -> dict[str, int] | None:
        """Emulate or start the step; the registers it changed, with their values at
        the site (None: no slot, nothing changed)."""
        if isinstance(plan, StepOutOfLine):
            return xol.start_step(task, mm, plan, hit.site, regs)
        assert isinstance(plan, Emulate)  # a refused plan never got a breakpoint
        effects = mm.backend.emulate(plan, regs.at(mm.arch.ip_reg, hit.site))
        try:
            for address, data in effects.writes:
                mm.memory.write(address, data)
        except OSError:
            # A push onto a stack that is not there: step it, so the CPU faults (or
            # the kernel grows the stack) as without us.  Kernel: emulation fails,
            # the instruction is single-stepped.
            stand_in = mm.backend.step_instead(plan)
            if stand_in is None:
                raise
            return xol.start_step(task, mm, stand_in, hit.site, regs)
        changed = {name: value for name, value in effects.regs.items() if regs[name] != value}
        before = {name: regs[name] for name in changed}
        if changed:
            if mm.net is not None:
                ip, sp = mm.arch.ip_reg, mm.arch.sp_reg
                task.net_record(mm.net, ThreadFlags.SWALLOW, changed.get(ip, regs[ip]), changed.get(sp, regs[sp]),
                                None)
            regs.update(changed)
            regs.store(task.tid, recorded=mm.net is not None)
        return before

    @staticmethod
    def restart_at_site(task: Task, mm: Mm, hit: Hit, regs: ptrace.Regset) -> None:
        """Leaving: the breakpoint is about to be restored; the thread runs the
        original instruction again (kernel: a hit racing unregister restarts)."""
        regs[mm.arch.ip_reg] = hit.site
        regs.store(task.tid)

    # ---- reference counters -------------------------------------------------

    def update_ref_ctr(self, mm: Mm, uprobe: Uprobe, delta: int) -> bool:
        """Kernel: ``update_ref_ctr()``: change the counter in the first counter VMA,
        or (for +1 with none mapped) record a delayed entry; -1 always drops the
        (uprobe, mm) delayed entry.  False when a counter VMA's write failed."""
        if not uprobe.ref_ctr_offset:
            return True
        changed = True
        vma = find_counter_vma(mm.vmas, uprobe.file_id, uprobe.ref_ctr_offset)
        if vma is not None:
            changed = self.change_counter(mm, uprobe, vma.offset_to_vaddr(uprobe.ref_ctr_offset), delta)
            if delta > 0:
                return changed
        elif delta > 0:
            mm.delayed.add(uprobe)  # a set: at most one pending increment per (uprobe, mm)
            return True
        mm.delayed.discard(uprobe)
        return changed

    def change_counter(self, mm: Mm, uprobe: Uprobe, vaddr: int, delta: int) -> bool:
        """Kernel: ``__update_ref_ctr()``: a signed 16-bit counter at exactly ``vaddr``,
        never driven below zero, with no overflow check."""
        fmt = _counter_format(mm)
        try:
            (value,) = struct.unpack(fmt, mm.memory.read(vaddr, 2))
            if value + delta < 0:
                self.warn(f"ref_ctr going negative. vaddr: {vaddr:#x}, curr val: {value}, delta: {delta}")
                return False
            new = struct.pack(fmt, ((value + delta + 0x8000) & 0xFFFF) - 0x8000)
            self._counted(mm, vaddr, delta, before=True)
            try:
                mm.memory.write(vaddr, new)
                if mm.memory.read(vaddr, 2) != new:
                    raise OSError(f"counter at {vaddr:#x} did not keep the written value")
            except OSError:
                self._counted(mm, vaddr, -delta, before=delta < 0)  # the table is true again
                raise
            self._counted(mm, vaddr, delta, before=False)
            count = mm.raised.get(vaddr, 0) + delta
            if count > 0:
                mm.raised[vaddr] = count
            else:
                mm.raised.pop(vaddr, None)
        except OSError as err:
            what = "increment" if delta > 0 else "decrement"
            self.warn(
                f"ref_ctr {what} failed for inode: {uprobe.file_id[1]:#x} offset: {uprobe.offset:#x} "
                f"ref_ctr_offset: {uprobe.ref_ctr_offset:#x} of process {mm.pid}: {err}"
            )
            return False
        return True

    @staticmethod
    def _counted(mm: Mm, vaddr: int, delta: int, before: bool) -> None:
        """Tell the net of a counter change: an increment before it is written, a
        decrement after, so the table never claims less than uemu raised."""
        if mm.net is None or (delta > 0) != before:
            return
        if delta > 0:
            mm.net.raise_counter(vaddr)
        else:
            mm.net.lower_counter(vaddr)

    # ---- life cycle -----------------------------------------------------------

    def mmap(self, mm: Mm, new_vmas: list[Vma]) -> None:
        """Kernel: ``uprobe_mmap()`` for each new VMA: delayed counters first, then
        breakpoints of the uprobes whose offsets the VMA maps."""
        for vma in new_vmas:
            if vma.file_backed and vma.writable and vma.private and mm.has_uprobes:
                self.delayed_ref_ctr_inc(mm, vma)
            if vma.file_backed and vma.private and not vma.writable:
                for uprobe in self.by_file.get(vma.file_id, ()):
                    if (uprobe.consumers or uprobe.internal) and vma.covers_offset(uprobe.offset):
                        self.install_breakpoint(mm, uprobe, vma.offset_to_vaddr(uprobe.offset))

    def delayed_ref_ctr_inc(self, mm: Mm, vma: Vma) -> None:
        """Kernel: ``delayed_ref_ctr_inc()``: apply and delete each matching entry,
        deleting it even when the increment fails."""
        for uprobe in list(mm.delayed):
            if is_counter_vma(vma, uprobe.file_id, uprobe.ref_ctr_offset):
                mm.delayed.discard(uprobe)
                self.change_counter(mm, uprobe, vma.offset_to_vaddr(uprobe.ref_ctr_offset), +1)

    def munmap(self, mm: Mm, start: int, end: int) -> None:
        """Kernel: ``uprobe_munmap()``: the breakpoints went with the pages; no write,
        no counter change, delayed entries stay.  Counters we raised in the range
        went too: nothing to undo there any more."""
        for vaddr in [v for v in mm.installed if start <= v < end]:
            del mm.installed[vaddr]
            if mm.net is not None:
                mm.net.remove_site(vaddr)
        for vaddr in [v for v in mm.jumped if start <= v < end]:
            del mm.jumped[vaddr]
            assert self.jumps is not None
            self.jumps.unmapped(mm, vaddr)
        for vaddr in [v for v in mm.raised if start <= v < end]:
            del mm.raised[vaddr]
            if mm.net is not None:
                mm.net.forget_counter(vaddr)

    def dup_mmap(self, parent: Mm, memory: Memory) -> Mm:
        """Kernel: ``uprobe_dup_mmap()``: the child (whose ``memory`` this is) has our
        breakpoints and the counter values in its copied pages; delayed entries are
        not copied."""
        mm = Mm(memory.pid, parent.arch, memory, list(parent.vmas), dict(parent.objects))
        mm.installed = dict(parent.installed)
        mm.raised = dict(parent.raised)
        mm.rendezvous_armed = parent.rendezvous_armed
        if parent.net is not None:
            mm.net = parent.net.fork(memory, mm.pid)  # the area and its table were copied with the pages
        if self.jumps is not None:
            mm.jumped = dict(parent.jumped)
            self.jumps.dup(parent, mm)
        return mm

    def clear_state(self, mm: Mm) -> None:
        """Kernel: ``uprobe_clear_state()``: the mm is gone (exit, exec) or no longer
        ours; delayed entries dropped, nothing written."""
        mm.delayed.clear()
        mm.installed.clear()
        mm.jumped.clear()
        mm.raised.clear()
        if self.jumps is not None:
            self.jumps.forget(mm)
        mm.memory.close()
        if mm.net is not None:
            mm.net.journal.remove()  # gone with the image: nothing left to repair

    def mremap(self, mm: Mm, old_start: int, old_size: int, new_start: int) -> None:
        """Pages moved by mremap carry our breakpoints with them (the kernel's
        ``copy_vma`` does not reinstall): move the bookkeeping the same way.  A jump
        does not work at another place: the file's bytes go back there, and the mmap
        hook (the moved VMA is a new one to it) probes the site afresh."""
        jumped = [(vaddr, uprobe) for vaddr, uprobe in mm.jumped.items() if old_start <= vaddr < old_start + old_size]
        for vaddr, uprobe in jumped:
            assert self.jumps is not None
            self.jumps.moved(mm, vaddr, vaddr - old_start + new_start)
            del mm.jumped[vaddr]
            self.update_ref_ctr(mm, uprobe, -1)  # raised again by the mmap hook's install
        net = mm.net
        if net is not None:
            for vaddr, uprobe in mm.installed.items():
                if old_start <= vaddr < old_start + old_size:
                    trap = mm.backend.trap_bytes(uprobe.original)
                    net.add_site(vaddr - old_start + new_start, uprobe.original, trap, prot_at(mm.vmas, vaddr))
                    net.remove_site(vaddr)
            for vaddr in mm.raised:
                if old_start <= vaddr < old_start + old_size:
                    net.move_counter(vaddr, vaddr - old_start + new_start)
        _move(mm.installed, old_start, old_size, new_start)
        _move(mm.raised, old_start, old_size, new_start)


def _move(table: dict[int, _T], old_start: int, old_size: int, new_start: int) -> None:
    """Re-key the entries of ``table`` in the moved range."""
    moved = {vaddr: x for vaddr, x in table.items() if old_start <= vaddr < old_start + old_size}
    for vaddr in moved:
        del table[vaddr]
    table.update((vaddr - old_start + new_start, x) for vaddr, x in moved.items())


def _counter_format(mm: Mm) -> str:
    """A signed 16-bit counter in the tracee's byte order."""
    return "<h" if mm.arch.little_endian in (True, None) else ">h"


def read_counter(mm: Mm, vaddr: int) -> int | None:
    """The 16-bit counter at ``vaddr``, or None where it cannot be read."""
    try:
        return int(struct.unpack(_counter_format(mm), mm.memory.read(vaddr, 2))[0])
    except OSError:
        return None


def write_counter(mm: Mm, vaddr: int, value: int) -> None:
    mm.memory.write(vaddr, struct.pack(_counter_format(mm), value))
