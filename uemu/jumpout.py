"""Leaving with threads inside a jumped hit: each runs on, alone, out of it (issue 12).

At leaving every thread is parked, and one may be inside the jump path's code: a
trampoline, a pun's landing, the runtime's hit (a wait for room in a full ring among
them), the vDSO's clock called from there.  As ``xol.leave_slot`` does for the XOL
slots, uemu moves it out before the sites go (``Tracees.restore``): a trap over every
trampoline's jump back to the program (``JumpPath.trap_ways_back``), the thread resumed
with recording still on and uemu's reader still draining the ring (a wait for room
ends), its stop at that trap turned into ip = where the jump leads, then the traps taken
away.  Its record is whole, and the area, landing pages and ring go as when no thread
was inside.  A thread in the vDSO is single-stepped out of it first, so that one whose
stack only held stale words of an earlier hit runs no code of the program here; one
whose link register says it was called from the runtime (arm64, riscv64) just runs.

Signals that come meanwhile are held for the program and given back at detach, as an
out-of-line step's are (``Task.held``: never swallowed, the first with its own siginfo).
A fault raised inside, a group-stop, an exit, or the bound (``BOUND_S``: a wait that
uemu cannot end) leave the thread where it stopped: ``JumpPath.keeps_area`` then keeps
the area mapped for it, and its hit is said lost, as before.

Kernel: nothing of the kind: the kernel's trampolines (and XOL area) stay mapped for
good, so a thread inside one at unregister goes on through it.
Differs: uemu unmaps what it mapped in the program, so it first runs such a thread (and
no other) a little further, to the program's own next instruction.  A thread given a
signal inside a trampoline counts as inside while its handler may still run
(``JumpPath.inside``): it runs on through the handler's return into the trampoline.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

from . import errors, ptrace, xol
from .jumpfacts import in_vdso
from .jumps import JumpPath
from .stops import Stop, StopKind, classify, is_step_trap
from .tasks import Task
from .tracer import Tracer
from .uprobes import Mm

BOUND_S = 2.0
"""How long the threads inside may go with none of them coming out and the reader making
no room in the rings: a bound on a wait uemu cannot end, not on a slow machine."""
VDSO_STEPS = 100_000
"""Single steps allowed to leave the vDSO (clock_gettime takes about a hundred)."""
POLL_S = 0.0005
MOVABLE = frozenset({StopKind.SIGNAL, StopKind.INTERRUPT, StopKind.SYSCALL})
"""Parked where resuming the thread changes nothing else: not a group-stop (the program
is stopped), not an event of its own (an exit under way)."""


@dataclass
class _Moving:
    task: Task
    mm: Mm
    ways: dict[int, int]
    """The mm's traps at the trampolines' ways back -> where each jump leads."""
    steps: int = 0
    """Single steps taken in the vDSO; -1: running (PTRACE_CONT)."""


class MoveOut:
    """Threads inside the jump path's code, out of it, while every other stays parked."""

    def __init__(self, tracer: Tracer, path: JumpPath, warn: Callable[[str], None]):
        self.tracer = tracer
        self.path = path
        self.warn = warn
        self.moved = 0
        """Threads brought out of a hit to the program's code."""

    def run(self) -> int:
        """Every thread inside a hit (all parked: ``Tracer.stop_all``) out of it, or left
        where it is with its reason said; how many came out."""
        moving: dict[int, _Moving] = {}
        trapped: list[Mm] = []
        tasks = self.tracer.tracees.tasks
        for mm in self.tracer.tracees.unique_mms():
            inside = [t for t in tasks.values() if t.mm is mm and t.stopped and self.path.inside(mm, t.tid)]
            if not inside:
                continue
            try:
                ways = self.path.trap_ways_back(mm)
            except (OSError, errors.UemuError) as err:
                self.path.untrap_ways_back(mm)
                self.warn(f"process {mm.pid}: threads inside the jump path cannot be moved out: {err}")
                continue
            trapped.append(mm)
            for task in inside:
                if task.listening or task.stop_kind not in MOVABLE:
                    self._left(task, mm, "stopped by the program" if task.listening else
                               f"parked at a stop of kind {task.stop_kind.name.lower()}")
                    continue
                move = _Moving(task, mm, ways)
                if self._start(move):
                    moving[task.tid] = move
        try:
            self._wait(moving)
        finally:
            for mm in trapped:
                with suppress(OSError):
                    self.path.untrap_ways_back(mm)
        return self.moved

    def _start(self, move: _Moving) -> bool:
        """Resume a thread inside (its owed signal held for the program first); False if
        it needs no run (at a way back already: it jumps there now) or is gone."""
        task, mm = move.task, move.mm
        if task.owed_signal and task.stop_kind is StopKind.SIGNAL:
            with suppress(errors.TraceeGone):
                task.hold(task.owed_signal, ptrace.signal_info_bytes(task.tid))
                task.owed_signal = 0
        try:
            regs = task.registers(mm.arch)
            regs.fetch(task.tid)
        except (OSError, errors.TraceeGone):
            return False
        ip = regs[mm.arch.ip_reg]
        # Before any trap is met (x86 reports ip past it): a thread right at a way back.
        if ip in move.ways:
            self._jump(move, ip)
            return False
        # A handler's thread runs (its handler may make system calls through the vDSO).
        move.steps = 0 if in_vdso(mm, ip) and not self.path.in_handler(mm, task.tid) else -1
        link = _return_address(task.tid, mm, regs) if move.steps == 0 and mm.arch.link_reg else None
        if link is not None and self.path.holds_code(mm, link):
            # Called from the runtime, exactly (the call's own return address, no stale
            # word): it runs back there at full speed.  Stepped, the clock's seqlock loop
            # never ends where a step takes longer than the kernel takes to update its
            # data again (every 4 ms tick; a step took about 5 ms in the arm64 TCG guest).
            move.steps = -1
        return self._go(move)

    def _go(self, move: _Moving) -> bool:
        """Step (in the vDSO) or run the thread on; False when it is gone."""
        task = move.task
        try:
            if move.steps >= 0:
                try:
                    ptrace.singlestep(task.tid, 0)
                except OSError:  # EIO: no PTRACE_SINGLESTEP (riscv64): it runs
                    move.steps = -1
            if move.steps < 0:
                ptrace.cont(task.tid, 0)
        except errors.TraceeGone:
            return False
        task.stopped = False
        task.single_step = move.steps >= 0  # its trap flag, cleared before detach (session.py)
        return True

    def _wait(self, moving: dict[int, _Moving]) -> None:
        """Their stops (any other task's to the loop's handlers: it stays parked) until
        each is out or stopped for good; past ``BOUND_S`` without progress the rest are
        interrupted.  Progress is a thread done or records read: threads waiting for room
        come out as the reader drains, which a loaded machine can make slow."""
        deadline = time.monotonic() + BOUND_S
        late = False
        progress = (len(moving), self.path.read)
        while moving:
            if (len(moving), self.path.read) != progress:
                progress = (len(moving), self.path.read)
                deadline = time.monotonic() + BOUND_S
            if not late and time.monotonic() > deadline:
                late = True
                for move in moving.values():
                    with suppress(errors.TraceeGone):
                        ptrace.interrupt(move.task.tid)
            try:
                tid, status = ptrace.wait(block=late)
            except ChildProcessError:
                return
            if tid == 0:
                time.sleep(POLL_S)
                continue
            stop = classify(tid, status)
            mover = moving.get(tid)
            if mover is None:
                self.tracer.dispatch(stop)
            elif self._on_stop(mover, stop, late):
                del moving[tid]

    def _on_stop(self, move: _Moving, stop: Stop, late: bool) -> bool:
        """One stop of a moving thread; True when it is done (out, or left where it is)."""
        task, mm = move.task, move.mm
        if stop.kind is StopKind.EXITED:
            self.tracer.dispatch(stop)
            return True
        task.stopped = True
        task.stop_kind = stop.kind
        task.listening = stop.kind is StopKind.GROUP
        try:
            regs = task.registers(mm.arch)
            regs.fetch(task.tid)
            ip = regs[mm.arch.ip_reg]
            if stop.kind is StopKind.SIGNAL:
                return self._on_signal(move, stop.sig, ip)
            if stop.kind is StopKind.INTERRUPT and mm.backend.trap_address(ip) in move.ways:
                return not self._go(move)  # it met a trap as it was interrupted: take that stop
            if stop.kind is StopKind.INTERRUPT and not late:
                return not self._go(move)
        except (OSError, errors.TraceeGone):
            return True
        self._left(task, mm, "not out in time" if late else "stopped by the program" if task.listening
                   else f"a stop of kind {stop.kind.name.lower()}")
        return True

    def _on_signal(self, move: _Moving, sig: int, ip: int) -> bool:
        task, mm = move.task, move.mm
        info = ptrace.signal_info_bytes(task.tid)
        code = ptrace.signal_code(info)
        if sig == signal.SIGTRAP and code == mm.arch.trap_si_code:
            at = mm.backend.trap_address(ip)
            if at in move.ways:
                self._jump(move, at)
                return True
        if move.steps >= 0 and is_step_trap(sig, info, mm.arch.trap_si_code):
            move.steps += 1
            if in_vdso(mm, ip) and move.steps < VDSO_STEPS:
                return not self._go(move)
            move.steps = -1
            if not self.path.holds_code(mm, ip):
                return True  # out of the vDSO into the program: it was not inside
            return not self._go(move)
        if self._counter_refused(move, sig):
            return not self._go(move)
        if xol.is_fault(sig, info):
            task.owed_signal = sig  # raised inside: the program gets it where it is
            self._left(task, mm, f"signal {sig} raised inside")
            return True
        task.hold(sig, info)
        return not self._go(move)

    def _counter_refused(self, move: _Moving, sig: int) -> bool:
        """The runtime's read of the CPU's counter faulted (a thread that turned it off,
        whose first hit since was under way as uemu began to leave): taken back as at a
        stop of the loop (``JumpPath.counter_refused``), and the thread runs on out."""
        task, mm = move.task, move.mm
        regs = task.registers(mm.arch)
        regs.fetch(task.tid)
        return self.path.counter_refused(mm, task.tid, sig, regs)

    def _jump(self, move: _Moving, at: int) -> None:
        """The thread at a way back ``at``: it takes the jump (ip where it leads)."""
        task, mm = move.task, move.mm
        regs = task.registers(mm.arch)
        if regs.update({mm.arch.ip_reg: move.ways[at]}):
            regs.store(task.tid)
        self.moved += 1

    def _left(self, task: Task, mm: Mm, why: str) -> None:
        self.warn(f"process {mm.pid}: thread {task.tid} stays inside the jump path ({why}): its area stays "
                  "mapped, inert, and its hit is lost")


def _return_address(tid: int, mm: Mm, regs: ptrace.Regset) -> int:
    """The link register without the signature the vDSO's prologue put in it (arm64's
    pointer authentication: x30 read 0x4daaaab73423d4 for a return to 0xaaaab73423d4 in
    the guest), the instruction mask's bits cleared."""
    link = regs[mm.arch.link_reg]
    if mm.arch.pac_mask_note:
        with suppress(OSError, errors.TraceeGone):  # no pointer authentication: nothing signed
            masks = ptrace.regset_bytes(tid, mm.arch.pac_mask_note, 16)
            if len(masks) == 16:
                link &= ~int.from_bytes(masks[8:], "little")
    return link
