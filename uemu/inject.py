"""Making a stopped thread of the tracee run one system call for uemu.

uemu needs the tracee to map memory for it (the XOL area) and to unmap it
again; only the tracee can.  The thread's registers are saved, pointed at a
syscall instruction already in the tracee (the vDSO's first), resumed with
PTRACE_SYSCALL to the call's exit stop, and put back.  This is the one place
besides the session's loop that waits for a stop: it waits for this thread
only, and hands signals that arrive meanwhile to a ``hold`` callback so the
program gets them afterwards.

Only a thread stopped outside any system call's kernel path may be used: in
a signal-delivery, group or interrupt stop (``INJECTABLE``).  At a
PTRACE_EVENT_{CLONE,FORK,EXEC,SECCOMP} stop the thread is still inside its
own syscall, whose result would overwrite ours and whose registers we would
then put back half-done (a parent told clone failed while its thread runs).
A thread interrupted inside a blocking call is fine, but its registers hold
the kernel-internal ERESTART* code the kernel would have turned into a
restart on its way back to user space; put back as they were after our call,
that code would reach the program (read() returning -1 with errno 512).  So
the call is restarted as the kernel restarts it when no handler runs
(``Arch.restarted_syscall``).
"""

from __future__ import annotations

import errno
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from uemu.arch import Arch
from uemu.arch.base import NoWayBack, SigreturnWayBack

from . import errors, process, ptrace
from .maps import Vma
from .stops import StopKind, classify, is_step_trap

if TYPE_CHECKING:
    from .tasks import Task
    from .uprobes import Mm

INJECTABLE = frozenset({StopKind.SIGNAL, StopKind.GROUP, StopKind.INTERRUPT})
"""Stops of a thread outside any syscall's kernel path (ptrace-stops inside get_signal).
A syscall-exit stop is one too, but only the stop's handler knows it is an exit."""

HoldSignal = Callable[[int, bytes], None]

_SCAN = 8 << 20
"""Bytes of each executable mapping searched for the instructions uemu calls through."""


def _first_addresses(wanted: Sequence[bytes], align: int, vmas: Sequence[Vma],
                     memory: ptrace.Memory) -> dict[bytes, int]:
    """Where each of ``wanted`` first is, at an ``align``-multiple address: one pass over
    the process's executable mappings, the vDSO first (the kernel's own code, in every
    process), then ld.so, then the C library, then the rest, until all are found (only
    the first 8 MiB of each mapping is read)."""
    found: dict[bytes, int] = {}
    ordered = sorted((v for v in vmas if v.executable),
                     key=lambda v: (v.path != "[vdso]", "ld-linux" not in v.path, "libc" not in v.path))
    for vma in ordered:
        try:
            data = memory.read(vma.start, min(vma.end - vma.start, _SCAN))
        except OSError:
            continue
        for pattern in [p for p in wanted if p not in found]:
            pos = data.find(pattern)
            while pos >= 0 and pos % align:
                pos = data.find(pattern, pos + 1)
            if pos >= 0:
                found[pattern] = vma.start + pos
        if len(found) == len(wanted):
            break
    return found


def _insn_align(arch: Arch) -> int:
    return 1 if len(arch.syscall_insn) < 4 else len(arch.syscall_insn)


def find_syscall_insn(arch: Arch, vmas: Sequence[Vma], memory: ptrace.Memory) -> int:
    """An address holding the arch's syscall instruction, the vDSO's where it has one."""
    found = _first_addresses((arch.syscall_insn,), _insn_align(arch), vmas, memory)
    if not found:
        raise errors.InTargetFailure(f"process {memory.pid}: no {arch.name} syscall instruction found "
                                     "to map the XOL area")
    return found[arch.syscall_insn]


_FRAME_GAP = 4096
"""Bytes left alone below a thread's stack pointer when uemu writes a sigreturn frame
there: the x86-64 red zone and the scratch strings of ``arming._scratch_string``."""
_FPSTATE_ROOM = 16384
"""Enough for the largest XSAVE layout of a thread (AMX's is about 11 KiB)."""
_FRAME_ROOM = _FPSTATE_ROOM + 4096
"""The most a frame takes below the gap: the XSAVE image with i386's FSAVE image (108
bytes), the frame and its alignment (a few hundred); arm64's whole frame is 4.6 KiB."""


@dataclass(frozen=True)
class WayBack:
    """A process's way back (``Arch.way_back``): where its gadget and its sigreturn
    restorer are."""

    facts: SigreturnWayBack
    gadget: int
    restorer: int
    memory: ptrace.Memory
    vmas: Sequence[Vma]
    """The process's mappings when it was found: a frame goes only where the thread's own
    stack mapping holds all of it (a stack grown since only makes this the safer)."""

    def enter(self, tid: int, regs: ptrace.Regset, arch: Arch, back: Mapping[str, int]) -> None:
        """Write below the thread's stack a signal frame that gives it ``back`` (every
        register, its floating-point state and its blocked mask) and point its stack
        pointer at the words the gadget pops, then at the frame's return address, the
        restorer (or put that in the register the gadget returns through).  The room is
        checked first, for the largest frame, before anything is fetched."""
        facts, word, sp = self.facts, arch.word_size, back[arch.sp_reg]
        top = (sp - _FRAME_GAP) & ~63
        lowest = top - _FRAME_ROOM
        if not any(v.start <= lowest and sp <= v.end and v.writable and not v.file_backed for v in self.vmas):
            raise OSError(f"no room for a sigreturn frame below thread {tid}'s stack pointer")
        images = [ptrace.regset_bytes(tid, note, _FPSTATE_ROOM) for note in facts.fpstate_notes]
        images += [_feature_regset(tid, note) for note in facts.feature_notes]
        at, frame = facts.frame(back, ptrace.blocked_signals(tid), images, top)
        returns = bytes(word * facts.gadget_pops)
        if not arch.link_reg:
            returns += self.restorer.to_bytes(word, "little")
        start = at - len(returns)
        if start < lowest:
            raise OSError(f"a sigreturn frame of {top - start} bytes for thread {tid}: more than its room")
        self.memory.write(start, returns + frame)
        regs[arch.sp_reg] = start
        if arch.link_reg:
            regs[arch.link_reg] = self.restorer


def _feature_regset(tid: int, note: int) -> bytes:
    """A regset of a CPU feature, b"" where the CPU lacks it or the thread does not use it
    (EINVAL; ENODATA from newer riscv kernels for the vector state)."""
    try:
        return ptrace.regset_bytes(tid, note, _FPSTATE_ROOM)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENODATA):
            raise
        return b""


def find_way_back(arch: Arch, tid: int, vmas: Sequence[Vma], memory: ptrace.Memory) -> WayBack | None:
    """The process's way back, or None: the arch has none here, the process has no such
    gadget or restorer, or the thread keeps a shadow stack (whose check a return to the
    restorer would fail)."""
    facts = arch.way_back
    if facts is None or _shadow_stack(memory.pid, tid):
        return None
    found = _first_addresses((facts.gadget, facts.restorer), _insn_align(arch), vmas, memory)
    if len(found) < 2:
        return None
    return WayBack(facts, found[facts.gadget], found[facts.restorer], memory, tuple(vmas))


def _shadow_stack(pid: int, tid: int) -> bool:
    try:
        with open(f"/proc/{pid}/task/{tid}/status", "rb") as status:  # Name: is the program's bytes
            return any(line.startswith(b"x86_Thread_features:") and b"shstk" in line for line in status)
    except OSError:
        return False


def inject_syscall(tid: int, regs: ptrace.Regset, arch: Arch, at: int, number: int,
                   args: Sequence[int], hold: HoldSignal, way_back: WayBack | None = None) -> int:
    """Run one system call in a stopped thread and give it its registers back.

    The thread must be stopped in one of the ``INJECTABLE`` stops.  ``regs``
    holds its registers, already fetched; it holds them again on return, with
    an interrupted syscall of its own made ready to restart.  Our own seccomp
    stop, if any, is passed; signals that arrive meanwhile go to ``hold``, owed
    to the program.  Returns the call's result (a negative errno on failure).
    With ``way_back``, the call is made at its gadget over a sigreturn frame
    instead of at ``at``, so a death of uemu's within it costs the thread nothing.
    """
    saved = regs.snapshot()
    if way_back is not None:
        try:
            way_back.enter(tid, regs, arch, {**saved, **arch.restarted_syscall(saved)})
            at = way_back.gadget
        except (OSError, NoWayBack):
            regs.update(saved)  # no room, no such regset, a state no frame carries: the plain way
    regs[arch.ip_reg] = at
    mask = (1 << (8 * arch.regset_word)) - 1
    for name, value in zip(arch.syscall_regs, (number, *args), strict=False):
        regs[name] = value & mask
    regs.store(tid)
    try:
        return _run_to_exit(tid, hold)
    finally:
        regs.update(saved)
        regs.update(arch.restarted_syscall(saved))
        regs.store(tid)


def caller(task: Task, mm: Mm, through_net: bool = True) -> Callable[..., int]:
    """``call(name, *args)``: system calls (``Arch.syscall_numbers`` names) made by
    ``task``, stopped where one may be injected, in ``mm``.

    Once the mm has the in-target runtime, a call goes through its stub (syscall
    instruction, then a trap), with the registers to give back written in the
    runtime's table first: if uemu dies meanwhile, the trap brings the thread back
    as it was (the runtime's R5).  That is judged at each call, so the net's own
    set-up moves to the stub as soon as its area exists: the call installing the
    handler is the stub's first, whose trap finds the handler in.  Before the area
    exists, or to remove it (``through_net`` False: the stub goes with the area),
    the call is made over a sigreturn frame where the arch and the process have a way
    back (``WayBack``: x86_64 and arm64 with glibc, i386, riscv64), else at the vDSO's syscall
    instruction, and uemu's death within such a call leaves the thread with the call's
    registers (``net.map_area`` keeps those calls few).
    """
    arch = mm.arch
    regs = task.registers(arch)
    plain: list[tuple[int, WayBack | None]] = []

    def call(name: str, *args: int) -> int:
        net = mm.net if through_net else None
        regs.fetch(task.tid)
        try:
            if net is None:
                if not plain:
                    plain.append((find_syscall_insn(arch, mm.vmas, mm.memory),
                                  find_way_back(arch, task.tid, mm.vmas, mm.memory)))
                at, way_back = plain[0]
                return inject_syscall(task.tid, regs, arch, at, arch.syscall_numbers[name], args, task.hold,
                                      way_back)
            saved = regs.snapshot()
            net.begin_inject(task.tid, {**saved, **arch.restarted_syscall(saved)})
            try:
                return inject_syscall(task.tid, regs, arch, net.inject_syscall, arch.syscall_numbers[name], args,
                                      task.hold)
            finally:
                net.end_inject()
        finally:
            if task.stop_kind is StopKind.GROUP:
                repark(task)

    return call


def repark(task: Task) -> None:
    """A stopped thread restarted and stopped again before it runs a single instruction.

    A thread taken out of its group-stop for a call is put back in it: the call left it
    at a syscall-exit stop, which PTRACE_LISTEN refuses (EIO: only a PTRACE_EVENT_STOP
    may be answered so), and any other restart would let it run in a stopped program.
    And a thread last resumed with PTRACE_SINGLESTEP loses its trap flag, which only a
    restart clears (kernel: ``ptrace_resume()`` -> ``user_disable_single_step()``; a
    tracer's death leaves it, and the thread traps after its next instruction).
    PTRACE_INTERRUPT, then a restart: on its way back to user space it traps again
    before any instruction (kernel: ``do_jobctl_trap()``), as a group-stop while its
    program is stopped, as a plain interrupt stop otherwise.  The trap of that step, if
    one is queued already, is uemu's and dropped; left queued it would reach the program
    at detach and kill it.  x86 raises it when a system call the thread was stepped into
    returns, and an interrupt stop inside the call comes before it, again at each
    interrupt (kernel: ``get_signal()`` runs ``do_jobctl_trap()`` before it dequeues a
    signal): the thread is let on to that trap's stop, then parked.  Seen in the i386
    soak ``parked/attach/600``, a parker in nanosleep stepped by leaving's MoveOut."""
    stepped, taking = task.single_step, False
    breakpoint_code = task.mm.arch.trap_si_code if task.mm is not None else 0
    ptrace.interrupt(task.tid)
    ptrace.cont(task.tid)
    while True:
        stop = classify(task.tid, ptrace.wait_for(task.tid))
        if stop.kind is StopKind.EXITED:
            raise errors.TraceeGone(task.tid)
        if stop.kind is StopKind.INTERRUPT and stepped and _step_trap_queued(task.tid):
            stepped, taking = False, True
            ptrace.cont(task.tid)  # no interrupt asked: its next stop is that trap's
            continue
        if stop.kind in (StopKind.GROUP, StopKind.INTERRUPT):
            task.stop_kind = stop.kind
            task.listening = stop.kind is StopKind.GROUP
            task.single_step = False
            return
        if stop.kind is StopKind.SIGNAL:
            info = ptrace.signal_info_bytes(task.tid)
            if not ((stepped or taking) and is_step_trap(stop.sig, info, breakpoint_code)):
                task.hold(stop.sig, info)
            if taking:
                taking = False
                ptrace.interrupt(task.tid)  # parked again once that trap is taken
        ptrace.cont(task.tid)


def _step_trap_queued(tid: int) -> bool:
    """A SIGTRAP queued and not blocked: a step's is forced, which unblocks it
    (``force_sig_info_to_task()``); one the program blocks is its own and stays queued."""
    return process.sigtrap_pending(tid) and not process.blocks_sigtrap(tid)


def _run_to_exit(tid: int, hold: HoldSignal) -> int:
    ptrace.syscall(tid)
    while True:
        stop = classify(tid, ptrace.wait_for(tid))
        if stop.kind is StopKind.EXITED:
            raise errors.TraceeGone(tid)
        if stop.kind is StopKind.SYSCALL:
            info = ptrace.syscall_info(tid)
            if info.op == ptrace.SYSCALL_INFO_EXIT:
                return info.rval
        elif stop.kind is StopKind.SIGNAL and stop.sig != signal.SIGTRAP:
            hold(stop.sig, ptrace.signal_info_bytes(tid))
        ptrace.syscall(tid)
