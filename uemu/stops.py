"""What a wait status means, and how a stopped task goes on: pure values.

strace's split: ``next_event`` turns a raw ``waitpid`` status into an ``enum
trace_event`` (``classify`` here), ``dispatch_event`` decides a restart
operation and a signal (a ``Resume``), and ``ptrace_restart`` applies it once.
Nothing here makes a system call; ``tracer.py`` waits, and
``Tracer.resume`` (``tracer.py``) is the one place a ``Resume`` is carried out.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from enum import Enum, auto

from . import ptrace


class StopKind(Enum):
    """strace's ``enum trace_event``, as ptrace(2) names the stops under SEIZE."""

    EXITED = auto()
    """The task is gone (exit or death by a signal): no resume."""
    SIGNAL = auto()
    """Signal-delivery-stop: ``sig`` is about to be delivered (our int3 comes as SIGTRAP)."""
    SYSCALL = auto()
    """Syscall-entry or -exit stop (PTRACE_O_TRACESYSGOOD: SIGTRAP | 0x80)."""
    GROUP = auto()
    """Group-stop (SIGSTOP and kin stopped the program): answered with LISTEN."""
    INTERRUPT = auto()
    """PTRACE_EVENT_STOP that is no group-stop: our PTRACE_INTERRUPT, a new
    task's first stop, or SIGCONT waking a LISTENing task."""
    CLONE = auto()
    FORK = auto()
    VFORK = auto()
    EXEC = auto()
    SECCOMP = auto()
    """PTRACE_EVENT_SECCOMP: a mapping syscall is entering (our filter's RET_TRACE)."""
    OTHER = auto()
    """Any other event stop (vfork-done, exit): nothing to do but go on."""


_EVENTS = {
    ptrace.EVENT_CLONE: StopKind.CLONE,
    ptrace.EVENT_FORK: StopKind.FORK,
    ptrace.EVENT_VFORK: StopKind.VFORK,
    ptrace.EVENT_EXEC: StopKind.EXEC,
    ptrace.EVENT_SECCOMP: StopKind.SECCOMP,
}
_STOPPING_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
_SYSCALL_TRAP = signal.SIGTRAP | 0x80


@dataclass(frozen=True)
class Stop:
    """One reported stop of one task."""

    tid: int
    status: int
    kind: StopKind
    sig: int = 0
    """The signal of a SIGNAL stop (to deliver unless a handler swallows it) or of a GROUP stop."""

    @property
    def creates_task(self) -> bool:
        return self.kind in (StopKind.CLONE, StopKind.FORK, StopKind.VFORK)


def classify(tid: int, status: int) -> Stop:
    """A raw ``waitpid`` status as a typed stop.

    Under SEIZE a group-stop is PTRACE_EVENT_STOP with a stopping signal; any
    other PTRACE_EVENT_STOP is an interrupt-like stop (ptrace(2)).
    """
    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
        return Stop(tid, status, StopKind.EXITED)
    sig = os.WSTOPSIG(status)
    event = (status >> 16) & 0xFF
    if event == 0:
        if sig == _SYSCALL_TRAP:
            return Stop(tid, status, StopKind.SYSCALL)
        return Stop(tid, status, StopKind.SIGNAL, sig)
    if event == ptrace.EVENT_STOP:
        if sig in _STOPPING_SIGNALS:
            return Stop(tid, status, StopKind.GROUP, sig)
        return Stop(tid, status, StopKind.INTERRUPT)
    return Stop(tid, status, _EVENTS.get(event, StopKind.OTHER))


class ResumeOp(Enum):
    """How a stopped task goes on (the restart request of ptrace(2))."""

    AUTO = auto()
    """As the task's state says: its out-of-line step, LISTEN after a group-stop,
    syscall stops where mappings are watched, else CONT (``Tracer.resume``)."""
    CONT = auto()
    SINGLESTEP = auto()
    SYSCALL = auto()
    LISTEN = auto()
    DETACH = auto()
    """Stop tracing it (it holds none of our bytes)."""
    NONE = auto()
    """Nothing: the task is gone, or its stop is kept for later (a new task whose
    creator's event has not come yet)."""


@dataclass(frozen=True)
class Resume:
    """What a stop handler decided: one restart operation and the signal it delivers."""

    op: ResumeOp = ResumeOp.AUTO
    sig: int = 0
    urgent: bool = False
    """Resume even while everything is being stopped to leave (the task must first
    take a SIGTRAP of ours that is already queued)."""


GO_ON = Resume()
KEEP = Resume(ResumeOp.NONE)


def deliver(sig: int) -> Resume:
    """Resume a signal-delivery stop handing ``sig`` to the program (0: swallow it)."""
    return Resume(sig=sig) if sig else GO_ON


def is_step_trap(sig: int, info: bytes, breakpoint_code: int) -> bool:
    """Whether a SIGTRAP (raw siginfo ``info``) is one a PTRACE_SINGLESTEP raised:
    TRAP_TRACE; or the report of a step over a system call instruction, made at the
    call's exit by ``user_single_step_report()``: x86's says TRAP_BRKPT where a
    breakpoint does not (its int3 is SI_KERNEL), the generic one, arm64's, SI_USER from
    no process (a process that sends one is named in it, but for a sender outside the
    thread's pid namespace: such a kill() of SIGTRAP while uemu steps the thread would be
    dropped).  ``breakpoint_code``: the arch's (``Arch.trap_si_code``)."""
    if sig != signal.SIGTRAP:
        return False
    code = ptrace.signal_code(info)
    if code == ptrace.SI_USER:
        return ptrace.signal_sender(info) == 0
    return code in (ptrace.TRAP_TRACE, ptrace.TRAP_BRKPT) and code != breakpoint_code


def shell_status(status: int) -> int:
    """An exit status as the shell reports it: the code, or 128+N for signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)
