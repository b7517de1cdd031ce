"""A seccomp filter that stops only the syscalls that change file mappings.

``uemu run`` installs it in the child before exec: each mmap, munmap,
mprotect or mremap then gives the tracer a PTRACE_EVENT_SECCOMP stop (and one
more at its exit when ``mappings.matters`` says so), and every other syscall
runs at full speed.  So does an rt_sigaction on SIGTRAP, whose action uemu's
safety net holds (``sigtrap.py``).  An mmap the filter can judge by its flags alone, one that
maps anonymous or shared memory and replaces nothing (no MAP_FIXED), runs
without a stop (``maps_file_privately``): thread stacks and heaps, 2000 of
them in a 2000-thread program.  Ranges (munmap, mprotect, MAP_FIXED) are
beyond a filter that cannot be changed once installed: those stop, and uemu
judges them.  The price: a
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
from uemu.arch.base import MappingSyscall

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_TRACE = 0x7FF00000

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JSET_K = 0x45
_BPF_AND_K = 0x54
_BPF_RET_K = 0x06
_NR_OFFSET = 0  # offsetof(struct seccomp_data, nr)
_ARCH_OFFSET = 4  # offsetof(struct seccomp_data, arch)
_ARGS_OFFSET = 16  # offsetof(struct seccomp_data, args): six __u64


# mmap's flags as asm-generic/mman-common.h and mman.h number them, which every arch
# with ``mapping_syscalls`` (x86, arm64, riscv) uses; mips, parisc, sparc and alpha differ.
MAP_SHARED = 0x01
MAP_SHARED_VALIDATE = 0x03
MAP_TYPE = 0x0F
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20


def maps_file_privately(flags: int) -> bool:
    """Whether an mmap with these flags maps a file privately, the only kind of new
    VMA the kernel's uprobe hooks act on.  Kernel: ``valid_vma()`` wants a file,
    VM_MAYEXEC and no VM_MAYSHARE, ``valid_ref_ctr_vma()`` a file, VM_WRITE and
    no VM_SHARED; a new anonymous VMA never merges with a file's."""
    return not flags & MAP_ANONYMOUS and flags & MAP_TYPE not in (MAP_SHARED, MAP_SHARED_VALIDATE)


@dataclass(frozen=True)
class _Insn:
    """One classic-BPF instruction, its jumps by label."""

    opcode: int
    k: int
    if_true: str | None = None
    if_false: str | None = None


def mapping_filter(arches: Iterable[Arch]) -> bytes:
    """A classic-BPF program: RET_TRACE for each arch's mapping syscalls, except an
    mmap without MAP_FIXED that does not ``maps_file_privately``, and for its
    rt_sigaction(SIGTRAP, ...); ALLOW for everything else (other syscalls, other
    signals, other ABIs such as x32)::

        ld arch; jeq A1 ? next : L1; ld nr; jeq mmap -> M1; jeq n.. -> trace;
            jeq rt_sigaction ? next : allow; ld args[0]; jeq SIGTRAP -> trace; ret allow
        M1: ld flags; jset FIXED -> trace; jset ANONYMOUS -> allow; and TYPE;
            jeq SHARED -> allow; jeq SHARED_VALIDATE -> allow; ret trace
        L1: ld arch; jeq A2 ...;  allow: ret allow;  trace: ret trace

    i386's old mmap passes its arguments in memory, out of a filter's reach: it
    always stops.
    """
    code: list[_Insn | str] = []  # a str is a label: the position of the next instruction
    for index, arch in enumerate(arches):
        other, mmap = f"arch{index + 1}", f"mmap{index}"
        mmaps = sorted(n for n, kind in arch.mapping_syscalls.items() if kind is MappingSyscall.MMAP)
        code += [_Insn(_BPF_LD_W_ABS, _ARCH_OFFSET), _Insn(_BPF_JEQ_K, arch.audit_arch, None, other),
                 _Insn(_BPF_LD_W_ABS, _NR_OFFSET)]
        code += [_Insn(_BPF_JEQ_K, number, mmap) for number in mmaps]
        code += [_Insn(_BPF_JEQ_K, number, "trace") for number in sorted(arch.mapping_syscalls) if number not in mmaps]
        code += [_Insn(_BPF_JEQ_K, arch.syscall_numbers["rt_sigaction"], None, "allow"),
                 _Insn(_BPF_LD_W_ABS, _arg_low(arch, 0)), _Insn(_BPF_JEQ_K, signal.SIGTRAP, "trace"),
                 _Insn(_BPF_RET_K, SECCOMP_RET_ALLOW), mmap]
        if mmaps:
            code += [_Insn(_BPF_LD_W_ABS, _arg_low(arch, 3)), _Insn(_BPF_JSET_K, MAP_FIXED, "trace"),
                     _Insn(_BPF_JSET_K, MAP_ANONYMOUS, "allow"), _Insn(_BPF_AND_K, MAP_TYPE),
                     _Insn(_BPF_JEQ_K, MAP_SHARED, "allow"), _Insn(_BPF_JEQ_K, MAP_SHARED_VALIDATE, "allow"),
                     _Insn(_BPF_RET_K, SECCOMP_RET_TRACE)]
        code.append(other)
    code += ["allow", _Insn(_BPF_RET_K, SECCOMP_RET_ALLOW), "trace", _Insn(_BPF_RET_K, SECCOMP_RET_TRACE)]
    return _assemble(code)


def _arg_low(arch: Arch, n: int) -> int:
    """Where ``seccomp_data`` keeps the low half of argument ``n`` (a __u64 in the
    ABI's byte order)."""
    return _ARGS_OFFSET + 8 * n + (4 if arch.byte_order == "big" else 0)


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
