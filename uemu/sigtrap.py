"""The program's own SIGTRAP action, while uemu's safety net holds the kernel's.

While uemu is attached, the kernel's SIGTRAP action is the net's handler (net.py) and
the program's own action is kept in the net's table, to chain to and to put back.  A
program that sets or reads its SIGTRAP action meanwhile must neither replace the net
(an orphaned breakpoint would then reach the program's handler, or kill it) nor see
it.  Where uemu stops at system calls (the seccomp filter stops rt_sigaction on
SIGTRAP; ``--mappings syscall``; every mode before its breakpoints are armed),
``at_entry`` takes the program's new action into the table and hands the kernel the
net's action built from it (the program's mask and flags, the net's handler), and
``at_exit`` writes the program's previous action where it asked for the old one.

Differs: the kernel reads the new action and writes the old one itself; it also
clears unknown ``sa_flags`` bits in what it stores, which the table keeps as given.
i386's old ``sigaction``/``signal`` system calls (glibc uses rt_sigaction) are not
seen, nor is anything in modes that do not stop system calls: there, uemu leaves at
detach whatever action the program set (``Net.uninstall``), but until then an
orphaned breakpoint reaches the program's action.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import process, ptrace
from .net import SIGSET_SIZE

if TYPE_CHECKING:
    from .tasks import Task


@dataclass(frozen=True)
class SigactionCall:
    """An rt_sigaction on SIGTRAP between its entry and exit stops."""

    old_pointer: int
    """Where the program wants the old action (0: nowhere)."""
    previous: bytes
    """The program's action before this call, which the kernel would have written there."""


def at_entry(task: Task, info: ptrace.SyscallInfo) -> None:
    """At the entry (or seccomp) stop of a system call: an rt_sigaction on SIGTRAP of a
    process with a net is kept away from the kernel's action, and noted for its exit.
    A call the kernel would refuse (bad size, unreadable action) is left to refuse it."""
    mm = task.mm
    if mm is None or mm.net is None or info.nr != mm.arch.syscall_numbers.get("rt_sigaction"):
        return
    if task.pid != mm.pid:
        return  # a vfork child: the table is its parent's, its actions are its own (posix_spawn resets them)
    sig, new_pointer, old_pointer, size = info.args[:4]
    if sig != signal.SIGTRAP or size != SIGSET_SIZE:
        return
    net = mm.net
    previous = net.program_action()
    if new_pointer:
        try:
            action = mm.memory.read(new_pointer, len(previous))
        except OSError:
            return  # EFAULT, from the kernel
        net.take_program_action(action)
        regs = task.registers(mm.arch)
        regs.fetch(task.tid)
        regs[mm.arch.syscall_regs[2]] = net.our_action_address
        regs.store(task.tid)
    task.sigaction = SigactionCall(old_pointer, previous)


def at_exit(task: Task, info: ptrace.SyscallInfo) -> None:
    """At the exit stop of a call ``at_entry`` noted: the old action the program asked
    for is its own previous one, not the net's."""
    call, task.sigaction = task.sigaction, None
    mm = task.mm
    if call is None or mm is None or not call.old_pointer or info.rval != 0:
        return
    with suppress(OSError):  # the kernel wrote there a moment ago: the program unmapped it meanwhile (another thread)
        mm.memory.write(call.old_pointer, call.previous)


def warn_blocking(tids: list[int], pid: int, warn: Callable[[str], None]) -> None:
    """What the kernel leaves no way around: a thread that blocks SIGTRAP when it
    meets a breakpoint of a tracer that is gone is killed (force_sig_fault() resets
    the action to the default), whatever the net inside the process could do."""
    blocking = [tid for tid in tids if process.blocks_sigtrap(tid)]
    if blocking:
        warn(f"process {pid}: thread{'s' if len(blocking) > 1 else ''} "
             f"{', '.join(map(str, blocking))} block{'' if len(blocking) > 1 else 's'} SIGTRAP: "
             "if uemu dies, such a thread meeting one of its breakpoints is killed by the kernel")
