"""The XOL area: executable slots in the tracee where displaced instructions run.

Kernel: ``xol_area`` (one ``[uprobes]`` page per mm, slots handed to a thread
for one hit).  Differs: the kernel installs a special mapping itself; uemu
makes the tracee call mmap (a syscall injected at a syscall instruction found
in the vDSO), near the probed code so x86_64 rip-relative displacements still
reach, and marks it MADV_DONTFORK so a forked child does not inherit it (the
kernel's area is VM_DONTCOPY).  A slot belongs to one thread: the same thread
cannot be in two places, so rewriting its slot at its next hit is safe even
when its last slot returned by itself ("jump").
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from uemu.arch import Arch
from uemu.arch.base import StepOutOfLine, XolSetup

from . import errors, ptrace
from .maps import Vma

PAGE = 4096
AREA_SIZE = 16 * PAGE
PROT_READ_EXEC = 0x1 | 0x4
MAP_PRIVATE_ANONYMOUS = 0x02 | 0x20
MAP_FIXED_NOREPLACE = 0x100000
MADV_DONTFORK = 10
NEAR = 1 << 30
"""Look for a gap this close to the probed code (rip-relative disp32 reaches ±2 GiB)."""

HoldSignal = Callable[[int, bytes], None]


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


def find_syscall_insn(arch: Arch, vmas: Sequence[Vma], memory: ptrace.Memory) -> int:
    """An address holding the arch's syscall instruction: in the vDSO first, else in
    any executable mapping (only its first 64 KiB are read)."""
    insn = arch.syscall_insn
    align = 1 if len(insn) < 4 else len(insn)
    candidates = sorted((v for v in vmas if v.executable), key=lambda v: v.path != "[vdso]")
    for vma in candidates:
        try:
            data = memory.read(vma.start, min(vma.end - vma.start, 16 * PAGE))
        except OSError:
            continue
        pos = data.find(insn)
        while pos >= 0:
            if pos % align == 0:
                return vma.start + pos
            pos = data.find(insn, pos + 1)
    raise errors.UemuError(f"process {memory.pid}: no {arch.name} syscall instruction found to map the XOL area")


def gap_near(vmas: Sequence[Vma], near: int, size: int) -> int | None:
    """The start of an unmapped range of ``size`` bytes closest to ``near`` (within
    ``NEAR``), leaving a page free on both sides."""
    ordered = sorted(vmas, key=lambda v: v.start)
    best = None
    for before, after in zip(ordered, ordered[1:]):
        low, high = before.end + PAGE, after.start - PAGE - size
        if high < low:
            continue
        start = min(max(near & ~(PAGE - 1), low), high)
        if abs(start - near) <= NEAR and (best is None or abs(start - near) < abs(best - near)):
            best = start
    return best


def inject_syscall(tid: int, regs: ptrace.Regset, arch: Arch, at: int, number: int,
                   args: Sequence[int], hold: HoldSignal) -> int:
    """Make a stopped thread execute one system call and come back unchanged.

    The thread's registers (already fetched into ``regs``) are saved, pointed at
    the syscall instruction ``at`` with the call's registers, and resumed with
    PTRACE_SYSCALL to its exit stop (passing our own seccomp stop, if any).
    Signals that arrive meanwhile are handed to ``hold`` and owed to the program.
    """
    saved = regs.snapshot()
    regs[arch.ip_reg] = at
    for name, value in zip(arch.syscall_regs, (number, *args)):
        regs[name] = value & ((1 << (8 * arch.regset_word)) - 1)
    regs.store(tid)
    try:
        ptrace.syscall(tid)
        while True:
            _, status = os.waitpid(tid, ptrace.WALL)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise errors.TraceeGone(tid)
            sig = os.WSTOPSIG(status)
            event = ptrace.stop_event(status)
            if event == 0 and sig == signal.SIGTRAP | 0x80:
                info = ptrace.syscall_info(tid)
                if info.op == ptrace.SYSCALL_INFO_EXIT:
                    result = info.rval
                    break
            elif event == 0 and sig != signal.SIGTRAP:
                hold(sig, ptrace.signal_info_bytes(tid))
            ptrace.syscall(tid)
    finally:
        for name, value in saved.items():
            regs[name] = value
        regs.store(tid)
    return result


def create_area(tid: int, regs: ptrace.Regset, arch: Arch, vmas: Sequence[Vma],
                memory: ptrace.Memory, near: int, slot_size: int, hold: HoldSignal) -> XolArea:
    """Map an XOL area in the thread's process, as close to ``near`` as a gap allows."""
    at = find_syscall_insn(arch, vmas, memory)
    numbers = arch.xol_syscalls

    def call(name: str, *args: int) -> int:
        return inject_syscall(tid, regs, arch, at, numbers[name], args, hold)

    start = -1
    hint = gap_near(vmas, near, AREA_SIZE)
    if hint is not None:
        start = call("mmap", hint, AREA_SIZE, PROT_READ_EXEC, MAP_PRIVATE_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
    if start < 0 or (hint is not None and start != hint):
        if start >= 0:
            call("munmap", start, AREA_SIZE)  # an old kernel took NOREPLACE as a mere hint
        start = call("mmap", 0, AREA_SIZE, PROT_READ_EXEC, MAP_PRIVATE_ANONYMOUS, -1, 0)
    if start < 0:
        raise errors.UemuError(f"process {memory.pid}: mmap of the XOL area failed: {os.strerror(-start)}")
    call("madvise", start, AREA_SIZE, MADV_DONTFORK)
    return XolArea(start, AREA_SIZE, slot_size)


def remove_area(tid: int, regs: ptrace.Regset, arch: Arch, vmas: Sequence[Vma],
                memory: ptrace.Memory, area: XolArea, hold: HoldSignal) -> None:
    at = find_syscall_insn(arch, vmas, memory)
    inject_syscall(tid, regs, arch, at, arch.xol_syscalls["munmap"], (area.start, area.size), hold)
