"""Signal and interrupt stops, as uprobes sees them: our breakpoint, a step's
trap or fault, or the program's own signal.

Kernel: ``uprobe_notify_resume()`` and the die notifier send a trap to
``handle_swbp()`` or ``handle_singlestep()``; here a signal-delivery stop comes
to ``on_signal``, which asks ``xol.py`` about a thread in the middle of a step
and ``uprobes.py`` whose breakpoint a SIGTRAP is from.  Also here: threads that
wait, stopped, for a free XOL slot (kernel: ``xol_get_insn_slot()`` sleeps),
and an interrupt stop that came before a SIGTRAP still queued.  Waiting for
stops and resuming are ``tracer.py``'s; the reports, ``consumers.py``'s.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from uemu.arch.base import StepEnd

from . import process, ptrace, xol
from .consumers import Reporter
from .stops import GO_ON, KEEP, Resume, ResumeOp, Stop, deliver
from .tasks import Task
from .tracer import Tracer
from .uprobes import Hit, Mm, Uprobes

if TYPE_CHECKING:
    from .jumps import JumpPath


class Hits:
    """``on_signal`` and ``on_interrupt`` are stop handlers; ``serve_waiting``
    runs between stops.  ``mapping_hit(task, mm, hit)`` is told of every hit
    first (a mapping mode's own breakpoint, ld.so's rendezvous, means new objects)."""

    def __init__(self, tracer: Tracer, uprobes: Uprobes, reporter: Reporter,
                 mapping_hit: Callable[[Task, Mm, Hit], None], jumps: JumpPath | None = None):
        self.tracer = tracer
        self.jumps = jumps
        self.uprobes = uprobes
        self.reporter = reporter
        self._mapping_hit = mapping_hit
        self.waiting: list[tuple[Task, Hit]] = []
        """Threads stopped at a hit until an XOL slot is free."""

    def on_signal(self, task: Task, stop: Stop) -> Resume:
        """A signal-delivery stop: a step's trap or fault, our breakpoint, or the
        program's own signal (delivered unchanged)."""
        mm = task.mm
        fetched = False
        if mm is not None and mm.xol_area is not None:
            handled = xol.on_signal(task, mm, stop.sig)
            if handled is not None:
                return deliver(handled)
            fetched = True  # on_signal read the registers, nothing changed them
        if stop.sig == signal.SIGTRAP:
            return self._on_sigtrap(task, fetched)
        return self._programs(task, stop.sig, fetched)

    def _programs(self, task: Task, sig: int, fetched: bool) -> Resume:
        """The program's own signal, delivered unchanged; the jump path is told of one
        that a thread inside its code is given (its handler's frame returns there), and
        takes back the one its runtime caused (``counter_refused``)."""
        mm = task.mm
        if self.jumps is not None and mm is not None and self.jumps.has_code(mm):
            regs = task.registers(mm.arch)
            if not fetched:
                regs.fetch(task.tid)
            if self.jumps.counter_refused(mm, task.tid, sig, regs):
                return GO_ON
            self.jumps.signal_delivered(mm, task.tid, regs)
        return deliver(sig)

    def _on_sigtrap(self, task: Task, fetched: bool) -> Resume:
        """Our breakpoint, or the program's own trap."""
        mm = task.mm
        if mm is None:
            return deliver(signal.SIGTRAP)
        regs = task.registers(mm.arch)
        if not fetched:
            regs.fetch(task.tid)
        hit = self.uprobes.find_active_uprobe(mm, regs)
        if hit is None:
            if self._jump_being_written(task, mm, regs):
                return GO_ON
            return self._programs(task, signal.SIGTRAP, True)  # the program's int3, raise(SIGTRAP), a debugger
        if self.tracer.stopping:
            self.uprobes.restart_at_site(task, mm, hit, regs)
            return GO_ON
        self._mapping_hit(task, mm, hit)
        return self._handle_hit(task, mm, hit, regs)

    def _jump_being_written(self, task: Task, mm: Mm, regs: ptrace.Regset) -> bool:
        """The int3 in front of a jump uemu was writing or removing (jumps.py): the
        thread goes back to run what is whole there now."""
        if self.jumps is None:
            return False
        resume = self.jumps.trap_at(mm, mm.trap_site(regs))
        if resume is None:
            return False
        regs[mm.arch.ip_reg] = resume
        regs.store(task.tid)
        return True

    def _handle_hit(self, task: Task, mm: Mm, hit: Hit, regs: ptrace.Regset) -> Resume:
        """The hit proper; a thread that finds every XOL slot taken waits, stopped,
        for one and is handled again."""
        report = self.reporter.report if task.report else None
        if self.uprobes.handle_swbp(task, mm, hit, regs, report):
            return GO_ON
        assert mm.xol_area is not None
        if self._reclaim_slots(mm) and self.uprobes.handle_swbp(task, mm, hit, regs, report):
            return GO_ON
        self.waiting.append((task, hit))
        return KEEP

    def _reclaim_slots(self, mm: Mm) -> bool:
        """Slots of JUMP steps (which need no second stop) stay with their threads, which
        may still be inside; a stopped thread whose ip is elsewhere gives its slot back."""
        area = mm.xol_area
        assert area is not None
        freed = False
        for tid, slot in list(area.slots.items()):
            task = self.tracer.tracees.tasks.get(tid)
            if task is None or not task.stopped or task.xol is not None:
                continue
            regs = task.registers(mm.arch)
            regs.fetch(tid)
            if not slot <= regs[mm.arch.ip_reg] < slot + area.slot_size:
                area.free_slot(tid)
                freed = True
        return freed

    def serve_waiting(self) -> None:
        """Threads waiting for an XOL slot try again (one may have been freed); while
        everything is being stopped, each goes back to its site, the hit not taken."""
        waiting, self.waiting = self.waiting, []
        for task, hit in waiting:
            if task.tid not in self.tracer.tracees.tasks or task.mm is None:
                continue
            if self.tracer.stopping:
                self.uprobes.restart_at_site(task, task.mm, hit, task.registers(task.mm.arch))
                continue
            resume = self._handle_hit(task, task.mm, hit, task.registers(task.mm.arch))
            if resume is GO_ON:
                self.tracer.resume(task, resume)

    def on_interrupt(self, task: Task, stop: Stop) -> Resume:
        """An interrupt stop (one we asked for, a new task's first stop, SIGCONT after
        LISTEN) reported before a SIGTRAP already queued: a thread may stop there
        right after our int3 or its out-of-line step.  Parked and detached so, it
        would die of it (and stand mid-instruction after an int3).  Let it run to
        its trap stop first, which handles that SIGTRAP, even while everything is
        being stopped."""
        mm = task.mm
        if mm is None or not process.sigtrap_pending(task.tid):
            return GO_ON
        step = task.xol
        if step is not None and step.setup.ends is not StepEnd.JUMP:
            return Resume(xol.resume_op(step, self.tracer.sees_syscalls(task)), urgent=True)
        regs = task.registers(mm.arch)
        regs.fetch(task.tid)
        if self.uprobes.find_active_uprobe(mm, regs) is None:
            return GO_ON
        return Resume(ResumeOp.CONT, urgent=True)
