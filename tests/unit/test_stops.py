"""Wait statuses as typed stops (strace's next_event), built as the kernel encodes them."""

from __future__ import annotations

import signal
import struct

import pytest

from uemu import ptrace
from uemu.arch import by_name
from uemu.stops import Resume, ResumeOp, Stop, StopKind, classify, deliver, is_step_trap, shell_status


def stopped(sig: int, event: int = 0) -> int:
    """A ptrace-stop status: 0x7f, the signal, the PTRACE_EVENT_* above."""
    return 0x7F | (sig << 8) | (event << 16)


@pytest.mark.parametrize(("status", "kind", "sig"), [
    (3 << 8, StopKind.EXITED, 0),  # exit(3)
    (signal.SIGKILL, StopKind.EXITED, 0),  # killed
    (stopped(signal.SIGTRAP), StopKind.SIGNAL, signal.SIGTRAP),  # our int3
    (stopped(signal.SIGUSR1), StopKind.SIGNAL, signal.SIGUSR1),
    (stopped(signal.SIGTRAP | 0x80), StopKind.SYSCALL, 0),  # TRACESYSGOOD
    (stopped(signal.SIGSTOP, ptrace.EVENT_STOP), StopKind.GROUP, signal.SIGSTOP),
    (stopped(signal.SIGTTIN, ptrace.EVENT_STOP), StopKind.GROUP, signal.SIGTTIN),
    (stopped(signal.SIGTRAP, ptrace.EVENT_STOP), StopKind.INTERRUPT, 0),  # PTRACE_INTERRUPT
    (stopped(signal.SIGTRAP, ptrace.EVENT_CLONE), StopKind.CLONE, 0),
    (stopped(signal.SIGTRAP, ptrace.EVENT_FORK), StopKind.FORK, 0),
    (stopped(signal.SIGTRAP, ptrace.EVENT_VFORK), StopKind.VFORK, 0),
    (stopped(signal.SIGTRAP, ptrace.EVENT_EXEC), StopKind.EXEC, 0),
    (stopped(signal.SIGTRAP, ptrace.EVENT_SECCOMP), StopKind.SECCOMP, 0),
    (stopped(signal.SIGTRAP, ptrace.EVENT_VFORK_DONE), StopKind.OTHER, 0),
    (stopped(signal.SIGTRAP, ptrace.EVENT_EXIT), StopKind.OTHER, 0),
])
def test_classify(status: int, kind: StopKind, sig: int) -> None:
    stop = classify(42, status)
    assert (stop.tid, stop.kind, stop.sig) == (42, kind, sig)


def test_task_creating_stops() -> None:
    creating = {kind for kind in StopKind if Stop(1, 0, kind).creates_task}
    assert creating == {StopKind.CLONE, StopKind.FORK, StopKind.VFORK}


def test_resumes() -> None:
    assert deliver(0) == Resume() and deliver(signal.SIGUSR1) == Resume(ResumeOp.AUTO, signal.SIGUSR1)
    assert not Resume().urgent


def test_shell_status() -> None:
    assert shell_status(7 << 8) == 7
    assert shell_status(signal.SIGSEGV) == 128 + signal.SIGSEGV


@pytest.mark.parametrize(("arch", "code", "sender", "step"), [
    ("x86_64", ptrace.TRAP_TRACE, 0, True),  # a step (the kernel's #DB with DR_STEP)
    ("x86_64", ptrace.TRAP_BRKPT, 0, True),  # a step over a system call, reported at its exit
    ("x86_64", ptrace.SI_KERNEL, 0, False),  # an int3
    ("i386", ptrace.TRAP_BRKPT, 0, True),
    ("aarch64", ptrace.TRAP_TRACE, 0, True),
    ("aarch64", ptrace.TRAP_BRKPT, 0, False),  # a brk
    ("aarch64", ptrace.SI_USER, 0, True),  # a step over svc: the generic user_single_step_report()
    ("riscv64", ptrace.TRAP_BRKPT, 0, False),  # an ebreak
    ("x86_64", ptrace.SI_USER, 4242, False),  # someone's kill()
    ("aarch64", ptrace.SI_USER, 4242, False),
])
def test_step_traps(arch: str, code: int, sender: int, step: bool) -> None:
    info = _siginfo(signal.SIGTRAP, code, sender)
    assert is_step_trap(signal.SIGTRAP, info, by_name(arch).trap_si_code) is step
    assert not is_step_trap(signal.SIGSEGV, info, by_name(arch).trap_si_code)


def _siginfo(sig: int, code: int, sender: int) -> bytes:
    """A raw siginfo as PTRACE_GETSIGINFO gives it to a 64-bit tracer."""
    return struct.pack("=iii4xi", sig, 0, code, sender).ljust(ptrace.SIGINFO_SIZE, b"\0")
