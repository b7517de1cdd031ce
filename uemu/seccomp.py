"""A seccomp filter that stops only the syscalls that change file mappings.

``uemu run`` installs it in the child before exec: each mmap, munmap,
mprotect or mremap then gives the tracer a PTRACE_EVENT_SECCOMP stop (and one
more at its exit), and every other syscall runs at full speed.  So does an
rt_sigaction on SIGTRAP, whose action uemu's safety net holds (``sigtrap.py``).  The price: a
filter cannot be removed, and SECCOMP_RET_TRACE with no tracer makes the
syscall fail with ENOSYS, so a process under this filter must keep a tracer
until it exits (uemu stays attached, doing nothing, after it has removed its
probes) -- see the README.
"""

from __future__ import annotations

import ctypes
import signal
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from uemu.arch import Arch

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_TRACE = 0x7FF00000

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_RET_K = 0x06
_NR_OFFSET = 0  # offsetof(struct seccomp_data, nr)
_ARCH_OFFSET = 4  # offsetof(struct seccomp_data, arch)
_ARG0_LOW_OFFSET = 16  # offsetof(struct seccomp_data, args[0]), its low half on a little-endian ABI


@dataclass(frozen=True)
class _Insn:
    """One classic-BPF instruction, its jumps by label."""

    opcode: int
    k: int
    if_true: str | None = None
    if_false: str | None = None


def mapping_filter(arches: Iterable[Arch]) -> bytes:
    """A classic-BPF program: RET_TRACE for each arch's mapping syscalls and its
    rt_sigaction(SIGTRAP, ...), ALLOW for everything else (other syscalls, other
    signals, other ABIs such as x32)::

        ld arch; jeq A1 ? next : L1; ld nr; jeq n.. -> trace;
            jeq rt_sigaction ? next : allow; ld args[0]; jeq SIGTRAP -> trace; ret allow
        L1: ld arch; jeq A2 ...;  ret allow;  trace: ret trace
    """
    code: list[_Insn | str] = []  # a str is a label: the position of the next instruction
    for index, arch in enumerate(arches):
        assert arch.little_endian, "the low half of args[0] is read at its little-endian place"
        other = f"arch{index + 1}"
        code += [_Insn(_BPF_LD_W_ABS, _ARCH_OFFSET), _Insn(_BPF_JEQ_K, arch.audit_arch, None, other),
                 _Insn(_BPF_LD_W_ABS, _NR_OFFSET)]
        code += [_Insn(_BPF_JEQ_K, number, "trace") for number in sorted(arch.mapping_syscalls)]
        code += [_Insn(_BPF_JEQ_K, arch.syscall_numbers["rt_sigaction"], None, "allow"),
                 _Insn(_BPF_LD_W_ABS, _ARG0_LOW_OFFSET), _Insn(_BPF_JEQ_K, signal.SIGTRAP, "trace"),
                 _Insn(_BPF_RET_K, SECCOMP_RET_ALLOW), other]
    code += ["allow", _Insn(_BPF_RET_K, SECCOMP_RET_ALLOW), "trace", _Insn(_BPF_RET_K, SECCOMP_RET_TRACE)]
    return _assemble(code)


def _assemble(code: list[_Insn | str]) -> bytes:
    labels: dict[str, int] = {}
    insns: list[_Insn] = []
    for item in code:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)
    out = []
    for pos, insn in enumerate(insns):
        jt = labels[insn.if_true] - pos - 1 if insn.if_true else 0
        jf = labels[insn.if_false] - pos - 1 if insn.if_false else 0
        out.append(struct.pack("=HBBI", insn.opcode, jt, jf, insn.k))
    return b"".join(out)


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def install(program: bytes) -> None:
    """Install ``program`` as a seccomp filter of the calling process.

    Without CAP_SYS_ADMIN the kernel demands no_new_privs first; under ptrace a
    set-uid program gains no privileges anyway, so setting it costs nothing.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0:
        return
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or (
        libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0
    ):
        err = ctypes.get_errno()
        raise OSError(err, "cannot install the seccomp filter")
