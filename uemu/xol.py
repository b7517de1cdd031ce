"""Out-of-line steps: the XOL area in each mm, its slots, and a thread's step.

Kernel: the XOL half of kernel/events/uprobes.c: ``xol_area`` (one
``[uprobes]`` page per mm, a slot handed to a thread for one hit),
``pre_ssout()`` (start a step), ``handle_singlestep()`` with
``uprobe_deny_signal()`` (the step's own trap finishes it, a fault aborts it,
other signals wait), ``arch_uprobe_post_xol``/``abort_xol`` through the backend.

Differs: the kernel installs a special mapping itself; uemu makes the tracee
call mmap (through the net's stub, ``inject.caller``) at the first step, near
the stepped code so x86_64 rip-relative displacements still reach, and marks
it MADV_DONTFORK so a forked child does not inherit it (the kernel's area is
VM_DONTCOPY).  A slot belongs to one thread: the same thread cannot be in two
places, so rewriting its slot at its next hit is safe even when its last slot
returned by itself (``JUMP``).  A slot stepped one instruction at a time
ends in a trap after that instruction, and the net's table says how to finish
the step, so a thread left there when uemu dies reaches the runtime's handler.
"""


from __future__ import annotations

import ctypes
import itertools
import os
import signal
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from uemu.arch.base import Effects, Finish, Regs, StepEnd, StepOutOfLine, XolSetup

from . import errors, inject, process, ptrace
from .maps import Vma, heap_growth, read_maps
from .runtime.layout import SlotFlags, ThreadFlags
from .stops import ResumeOp

if TYPE_CHECKING:
    from .tasks import Task
    from .uprobes import Mm

PAGE = 4096
AREA_SIZE = 256 * PAGE
"""Room for thousands of slots; untouched pages cost nothing."""
PROT_READ_EXEC = 0x1 | 0x4
MAP_PRIVATE_ANONYMOUS = 0x02 | 0x20
MAP_FIXED_NOREPLACE = 0x100000
MADV_DONTFORK = 10
NEAR = 1 << 30
"""Look for a gap this close to the probed code (rip-relative disp32 reaches ±2 GiB)."""

Fixup = Callable[[StepOutOfLine, int, Regs], Effects]
"""A backend's ``finish_xol`` or ``abort_xol``."""


@dataclass
class ActiveStep:
    """One thread executing a displaced instruction (kernel: ``utask`` in UTASK_SSTEP)."""

    plan: StepOutOfLine
    slot: int
    setup: XolSetup


@dataclass
class XolArea:
    start: int
    size: int
    slot_size: int
    free: list[int] = field(default_factory=list)
    slots: dict[int, int] = field(default_factory=dict)
    """tid -> its slot."""
    code: dict[int, bytes] = field(default_factory=dict)
    """slot -> what we last wrote there (skip rewriting the same bytes)."""
    plans: dict[int, tuple[StepOutOfLine, XolSetup]] = field(default_factory=dict)
    """slot -> the plan and setup last run there, to fix a thread found inside it."""

    def __post_init__(self) -> None:
        self.free = list(range(self.start + self.size - self.slot_size, self.start - 1, -self.slot_size))

    def contains(self, address: int) -> bool:
        return self.start <= address < self.start + self.size

    def take_slot(self, tid: int) -> int | None:
        """The thread's slot, or a new one; None when the area is full."""
        slot = self.slots.get(tid)
        if slot is None and self.free:
            slot = self.slots[tid] = self.free.pop()
        return slot

    def free_slot(self, tid: int) -> None:
        slot = self.slots.pop(tid, None)
        if slot is not None:
            self.free.append(slot)

    def slot_at(self, address: int) -> int:
        return address - (address - self.start) % self.slot_size

    def step_at(self, address: int) -> ActiveStep:
        """The step last set up in the slot holding ``address``."""
        slot = self.slot_at(address)
        plan, setup = self.plans[slot]
        return ActiveStep(plan, slot, setup)


# ---- the area ----------------------------------------------------------------------


def gap_near(vmas: list[Vma], near: int, size: int, start_brk: int | None) -> int | None:
    """The start of an unmapped range of ``size`` bytes closest to ``near`` (within
    ``NEAR``), leaving a page free on both sides and meeting no byte of where the heap
    may grow from ``start_brk`` (``maps.heap_growth``)."""
    keep_off = heap_growth(vmas, start_brk)
    ordered = sorted(vmas, key=lambda v: v.start)
    best = None
    for before, after in itertools.pairwise(ordered):
        for low, high in _starts_clear_of(before.end + PAGE, after.start - PAGE - size, size, keep_off):
            start = min(max(near & ~(PAGE - 1), low), high)
            if abs(start - near) <= NEAR and (best is None or abs(start - near) < abs(best - near)):
                best = start
    return best


def _starts_clear_of(low: int, high: int, size: int, keep_off: tuple[int, int] | None) -> list[tuple[int, int]]:
    """The ranges of starts in [low, high] whose ``size`` bytes stay clear of ``keep_off``."""
    if keep_off is None:
        return [(low, high)] if low <= high else []
    below, above = (low, min(high, (keep_off[0] - size) & ~(PAGE - 1))), (max(low, _page_up(keep_off[1])), high)
    return [(a, b) for a, b in (below, above) if a <= b]


def _page_up(address: int) -> int:
    return (address + PAGE - 1) & ~(PAGE - 1)


def create_area(task: Task, mm: Mm, near: int) -> XolArea:
    """Map an XOL area in the thread's process, as close to ``near`` as a gap allows."""
    call = inject.caller(task, mm)
    start = -1
    # Fresh maps: mm.vmas may lack anonymous mappings (mappings.py lets their calls through).
    vmas = read_maps(mm.pid)
    hint = gap_near(vmas, near, AREA_SIZE, process.start_brk(mm.pid))
    if hint is not None:
        start = call("mmap", hint, AREA_SIZE, PROT_READ_EXEC, MAP_PRIVATE_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
    if start < 0 or (hint is not None and start != hint):
        if start >= 0:
            call("munmap", start, AREA_SIZE)  # an old kernel took NOREPLACE as a mere hint
        start = call("mmap", 0, AREA_SIZE, PROT_READ_EXEC, MAP_PRIVATE_ANONYMOUS, -1, 0)
    if start < 0:
        raise errors.InTargetFailure(f"process {mm.pid}: mmap of the XOL area failed: {os.strerror(-start)}")
    if mm.net is not None:
        mm.net.journal.note_xol_area(start, AREA_SIZE)  # its place is known only now
    call("madvise", start, AREA_SIZE, MADV_DONTFORK)
    mm.vmas = read_maps(mm.pid)
    return XolArea(start, AREA_SIZE, mm.backend.slot_size)


def remove_area(task: Task, mm: Mm) -> None:
    """Unmap the area (every thread out of it), by a call of one of the process's parked threads."""
    area = mm.xol_area
    if area is not None:
        inject.caller(task, mm)("munmap", area.start, area.size)
        mm.xol_area = None
        if mm.net is not None:
            mm.net.journal.note_xol_area_gone()


# ---- a thread's step ------------------------------------------------------------------


def start_step(task: Task, mm: Mm, plan: StepOutOfLine, site: int, regs: ptrace.Regset) -> dict[str, int] | None:
    """Kernel: ``pre_ssout()``: a slot for this thread, the backend's bytes and
    registers; STEP and TRAP endings leave an ActiveStep to finish at the next stop.
    Returns the registers changed, with their values before; None when every slot
    is taken: the thread must wait for one (kernel: ``xol_get_insn_slot()``
    sleeps), its registers untouched."""
    assert mm.net is not None  # it comes before the first breakpoint
    area = mm.xol_area
    if area is None:
        area = mm.xol_area = _create_area_keeping(task, mm, site, regs)
    slot = area.take_slot(task.tid)
    if slot is None:
        return None
    last = area.plans.get(slot)
    if last is not None and last[0] is plan and not last[1].restore:
        setup = last[1]  # it borrows no register: the same bytes, already in the slot
    else:
        setup = mm.backend.prepare_xol(plan, slot, regs.at(mm.arch.ip_reg, site))
        code = setup.code
        mm.net.journal.note_slot(slot, site, plan.size, setup.ends.value)  # how to get a thread out of it
        if setup.ends is StepEnd.STEP:
            code += mm.backend.trap_bytes(code)  # never run while uemu steps; reached if uemu dies
        if setup.ends is not StepEnd.JUMP:
            scratch = next(iter(setup.restore.items()), None)
            mm.net.set_slot(slot, slot + plan.size, site, plan.size, _slot_flags(mm, plan), scratch)
        if area.code.get(slot) != code:
            mm.memory.write(slot, code)
            area.code[slot] = code
        area.plans[slot] = (plan, setup)
    flags = ThreadFlags.SWALLOW if setup.ends is StepEnd.JUMP else ThreadFlags.SWALLOW | ThreadFlags.STEP
    task.net_record(mm.net, flags, slot, regs[mm.arch.sp_reg], None if setup.ends is StepEnd.JUMP else slot)
    before = {name: regs[name] for name in setup.regs}
    if regs.update(setup.regs):
        regs.store(task.tid, recorded=True)
    if setup.ends is not StepEnd.JUMP:
        task.xol = ActiveStep(plan, slot, setup)
    return before


def _create_area_keeping(task: Task, mm: Mm, near: int, regs: ptrace.Regset) -> XolArea:
    """Create the area from a thread stopped at a hit, its registers as they were."""
    before = regs.snapshot()
    area = create_area(task, mm, near)
    regs.fetch(task.tid)
    assert regs.snapshot() == before
    return area


def _slot_flags(mm: Mm, plan: StepOutOfLine) -> SlotFlags:
    """How the runtime finishes a step left in a slot (kernel: the fix-up flags)."""
    finish = mm.backend.finish_kind(plan)
    flags = SlotFlags(0)
    if finish & Finish.IP:
        flags |= SlotFlags.FIX_IP
    if finish & Finish.CALL:
        flags |= SlotFlags.FIX_CALL
    return flags


def on_signal(task: Task, mm: Mm, sig: int) -> int | None:
    """A signal stop of a thread that is stepping out of line or stands in a slot.

    Kernel: ``handle_singlestep()`` and ``uprobe_deny_signal()``: the step's own
    trap finishes it; a fault raised by the displaced instruction aborts it
    (ip back to the site, the signal delivered there); any other signal is held
    until the step is over.  Returns the signal to resume with, or None when
    the stop has nothing to do with XOL (the registers are fetched either way).
    """
    area = mm.xol_area
    assert area is not None
    regs = task.registers(mm.arch)
    regs.fetch(task.tid)
    ip = regs[mm.arch.ip_reg]
    step = task.xol
    if step is None:
        if not area.contains(ip):
            return None
        step = area.step_at(ip)
        if ip != step.slot:
            # A JUMP slot: the instruction ran; only the jump back is left.
            if regs.update({mm.arch.ip_reg: step.plan.vaddr + step.plan.size}):
                regs.store(task.tid)
            return sig
        task.xol = step = ActiveStep(step.plan, step.slot,
                                     XolSetup(step.setup.code, {}, StepEnd.STEP, step.setup.restore))
    if _step_done(mm, step, sig, ip):
        end_step(task, mm, regs, mm.backend.finish_xol)
        return 0
    info = ptrace.signal_info_bytes(task.tid)
    if is_fault(sig, info) and ip == step.slot:
        end_step(task, mm, regs, mm.backend.abort_xol)
        return sig
    task.held.append((sig, info))
    return 0


def _step_done(mm: Mm, step: ActiveStep, sig: int, ip: int) -> bool:
    if sig != signal.SIGTRAP:
        return False
    if step.setup.ends is StepEnd.TRAP:
        return mm.backend.trap_address(ip) == step.slot + step.plan.size
    return ip != step.slot


def end_step(task: Task, mm: Mm, regs: ptrace.Regset, fix: Fixup) -> None:
    """Put back what the setup borrowed, then the backend's finish or abort fix-ups."""
    step = task.xol
    assert step is not None
    task.xol = None
    regs.update(step.setup.restore)
    effects = fix(step.plan, step.slot, regs.at(mm.arch.ip_reg, regs[mm.arch.ip_reg]))
    for address, data in effects.writes:
        mm.memory.write(address, data)
    regs.update(effects.regs)
    regs.store(task.tid)


def finish_syscall_step(task: Task, mm: Mm) -> None:
    """At the exit stop of a system call stepped out of line (resumed with
    PTRACE_SYSCALL, not single-stepped): the instruction is done, ip just
    after it in the slot, so the step ends here."""
    step = task.xol
    if step is None or step.setup.ends is not StepEnd.STEP or not step.plan.syscall:
        return
    regs = task.registers(mm.arch)
    regs.fetch(task.tid)
    if regs[mm.arch.ip_reg] == step.slot + step.plan.size:
        end_step(task, mm, regs, mm.backend.finish_xol)


def leave_slot(task: Task, mm: Mm) -> None:
    """Leaving: a thread inside a slot goes back to its site (instruction not run)
    or past it (it ran), with borrowed registers restored."""
    area = mm.xol_area
    assert area is not None
    regs = task.registers(mm.arch)
    regs.fetch(task.tid)
    ip = regs[mm.arch.ip_reg]
    if task.xol is None:
        if not area.contains(ip):
            return
        task.xol = area.step_at(ip)
    step = task.xol
    if ip == step.slot:
        end_step(task, mm, regs, mm.backend.abort_xol)
    elif step.setup.ends is StepEnd.JUMP:
        task.xol = None
        if regs.update({mm.arch.ip_reg: step.plan.vaddr + step.plan.size}):
            regs.store(task.tid)
    else:
        end_step(task, mm, regs, mm.backend.finish_xol)


def finish_step_in_child(child: int, mm: Mm, step: ActiveStep) -> None:
    """A task created by a system call its creator ran out of line (a probe on
    fork's or clone's ``syscall``) starts in the creator's slot, after the
    instruction: a forked child has no such slot (MADV_DONTFORK), a thread's
    slot has nothing to run after it.  Finish the step in the child as in the
    creator: borrowed registers back, ip after the probed instruction.  (The
    kernel kills parent and child here, Linux 6.18.)"""
    regs = ptrace.Regset(mm.arch.regset, mm.arch.regset_word)
    regs.fetch(child)
    regs.update(step.setup.restore)
    effects = mm.backend.finish_xol(step.plan, step.slot, regs.at(mm.arch.ip_reg, regs[mm.arch.ip_reg]))
    regs.update(effects.regs)
    regs.store(child)


def resume_op(step: ActiveStep, sees_syscalls: bool) -> ResumeOp:
    """How a stepping thread goes on.  A system call stepped so is resumed with
    its syscall stops where they are wanted: mappings are noticed there, and its
    exit stop ends the step (``finish_syscall_step``)."""
    if step.setup.ends is StepEnd.STEP and not (step.plan.syscall and sees_syscalls):
        return ResumeOp.SINGLESTEP
    return ResumeOp.SYSCALL if sees_syscalls else ResumeOp.CONT


def give_back_held(task: Task) -> int:
    """Resume with the first held signal (its own siginfo); re-raise the others."""
    sig, info = task.held.pop(0)
    with suppress(OSError):  # not in a signal-delivery stop: the kernel makes its own siginfo
        ptrace.set_signal_info(task.tid, info)
    raise_held(task)
    return sig


def raise_held(task: Task) -> None:
    """Send the held signals again (tgkill: the kernel gives them a siginfo of its own)."""
    for other, _ in task.held:
        _tgkill(task.pid, task.tid, other)
    task.held.clear()


_FAULT_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP})


def is_fault(sig: int, info: bytes) -> bool:
    """Raised by the instruction itself (the kernel's si_code > 0), not sent by someone."""
    return sig in _FAULT_SIGNALS and ptrace.signal_code(info) > 0


_libc = ctypes.CDLL(None, use_errno=True)


def _tgkill(pid: int, tid: int, sig: int) -> None:
    """Send ``sig`` to one thread of another process (glibc's tgkill)."""
    _libc.tgkill(pid, tid, sig)
