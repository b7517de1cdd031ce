"""System call stops: what uemu follows of the program's system calls.

strace keeps its entering and exiting halves in syscall.c; here the calls that
matter are the mapping calls (``mappings.py`` notes them at entry; at exit the
mappings are read again and what is new is armed, ``arming.py``), rt_sigaction
on SIGTRAP (``sigtrap.py``), execve's exit (the new image is armed before its
first instruction), and a system call a thread made from an XOL slot
(``xol.py`` ends that step).  Under ``run``'s seccomp filter the entry comes as
a seccomp stop, which asks for the exit stop.
"""

from __future__ import annotations

from . import mappings, ptrace, sigtrap, xol
from .arming import Arming
from .stops import GO_ON, Resume, Stop
from .tasks import Task
from .tracer import Tracer
from .uprobes import Uprobes


class SyscallStops:
    """The handlers of syscall and seccomp stops.  In passthrough (``tracer.py``)
    nothing is noted or armed any more; the program's SIGTRAP action still is."""

    def __init__(self, tracer: Tracer, uprobes: Uprobes, arming: Arming):
        self.tracer = tracer
        self.uprobes = uprobes
        self.arming = arming

    def on_syscall(self, task: Task, stop: Stop) -> Resume:
        """Syscall entry or exit (PTRACE_SYSCALL): mapping syscalls refresh at exit."""
        info = ptrace.syscall_info(task.tid)
        if info.op == ptrace.SYSCALL_INFO_ENTRY:
            mappings.note_syscall(task, info, self.uprobes)
            sigtrap.at_entry(task, info)
            return GO_ON
        if task.sigaction is not None:
            sigtrap.at_exit(task, info)
        call, task.syscall = task.syscall, None
        mm = task.mm
        if info.op != ptrace.SYSCALL_INFO_EXIT or mm is None:
            return GO_ON
        if task.arm_pending:
            task.arm_pending = False  # execve's exit: the new image before its first instruction
            self.arming.arm(mm, mm.vmas, task)
            return GO_ON
        if call is not None and not self.tracer.passthrough:
            self.arming.refresh(task, mm, call, info.rval)
        if task.xol is not None:
            xol.finish_syscall_step(task, mm)
        return GO_ON

    def on_seccomp(self, task: Task, stop: Stop) -> Resume:
        """A mapping syscall (or rt_sigaction on SIGTRAP) is about to run: remember it
        and stop again at its exit."""
        info = ptrace.syscall_info(task.tid)
        if not self.tracer.passthrough:
            mappings.note_syscall(task, info, self.uprobes)
        sigtrap.at_entry(task, info)
        return GO_ON
