"""What every architecture module states about its instruction set.

An arch module exposes module-level ``Arch`` values (one per ABI it covers) and
registers them in ``uemu.arch``.  Facts are fields; the core reads them and
never tests an architecture's name (shared/DESIGN.md §3, kernel's arch split).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Flag, StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

if TYPE_CHECKING:
    from .jump import JumpBackend

_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass(frozen=True)
class SpecRegister:
    """A register name as it may appear in an SDT argument spec.

    ``canonical`` is the full architectural register it is a view of; the view
    is ``width`` bytes wide starting ``shift`` bits up (x86 ``%ah``: width 1,
    shift 8).  The spec's own size, not the view, decides how many bytes count
    (sys/sdt.h comment after gdb PR24541); the view matters only for operands
    written without a size.
    """

    canonical: str
    width: int
    shift: int = 0


@dataclass(frozen=True)
class KernelSigaction:
    """The kernel's ``struct sigaction`` of one ABI, as rt_sigaction reads and writes it
    (include/linux/signal_types.h: handler, flags, restorer where the arch has
    __ARCH_HAS_SA_RESTORER, mask last; i386 tasks get compat_sigaction's 4-byte words)."""

    size: int
    word: int
    """Bytes of the handler, flags and restorer fields."""
    handler: int
    flags: int
    restorer: int | None
    """Offset of sa_restorer; None where the kernel returns through the vDSO only (riscv)."""
    mask: int
    vdso_restorer: str = ""
    """The vDSO's symbol a handler returns to where there is no sa_restorer."""


class NoWayBack(Exception):
    """A thread state that a frame of uemu's cannot carry (arm64: live SVE, ZA, a GCS):
    its call is made the plain way."""


@dataclass(frozen=True)
class SigreturnWayBack:
    """How a thread given a system call to make by uemu gets its whole state back by
    itself should uemu die within the call: the call is made at a ``gadget`` (the syscall
    instruction, then a return) with the stack pointer on a signal frame uemu wrote below
    the thread's stack, and returns into a sigreturn ``restorer`` (the vDSO's
    __kernel_rt_sigreturn, else the C library's __restore_rt); rt_sigreturn then restores
    every register, the floating-point state and the signal mask from the frame.  While
    uemu lives it puts the registers back itself at the call's exit stop and none of this
    runs.  Kernel: arch/x86/kernel/signal_64.c and signal_32.c, arch/arm64/kernel/signal.c
    (rt_sigreturn, restore_sigcontext, restore_sigframe)."""

    gadget: bytes
    restorer: bytes
    fpstate_notes: tuple[int, ...]
    """The regsets (NT_*) the floating-point state is made of."""
    frame: Callable[[Mapping[str, int], int, Sequence[bytes], int], tuple[int, bytes]]
    """(registers by regset name, the blocked mask, the regsets' bytes (b"" for a feature
    regset the CPU lacks), the highest address it may take) -> where the frame starts
    (the stack pointer after the gadget's return) and its bytes, laid out below that
    address as the kernel lays out a signal's.  Raises NoWayBack."""
    feature_notes: tuple[int, ...] = ()
    """Regsets of CPU features a thread may have in use (arm64: SVE, streaming SVE, ZA, GCS),
    given to ``frame`` after ``fpstate_notes``."""
    gadget_pops: int = 0
    """Words the gadget pops after the call, before its return (i386's vDSO: ebp, edx, ecx)."""


def frozen_map(mapping: Mapping[_K, _V]) -> Mapping[_K, _V]:
    """A read-only mapping for dataclass fields (frozen dataclasses need hashable-ish data)."""
    return MappingProxyType(dict(mapping))


_ERESTART_RESTARTBLOCK = -516
_RESTART_ERRORS = frozenset({-512, -513, -514, _ERESTART_RESTARTBLOCK})
"""The kernel-internal ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND and
ERESTART_RESTARTBLOCK (include/linux/errno.h): never for the program's eyes."""


class MappingSyscall(StrEnum):
    """What a system call does to mappings, which says where its range is in its
    arguments.  After each the kernel runs ``uprobe_mmap``/``uprobe_munmap``, and so
    must uemu."""

    MMAP = "mmap"
    """(addr, length, prot, flags, fd, offset): the result is the new mapping's start."""
    OLD_MMAP = "old_mmap"
    """i386's old mmap: one pointer to the six ``mmap`` arguments as words in memory."""
    MUNMAP = "munmap"
    MPROTECT = "mprotect"
    """Splits and merges VMAs but keeps their pages (and our breakpoints)."""
    MREMAP = "mremap"
    """(old address, old size, new size, flags, new address): pages move with our breakpoints."""
    REMAP_FILE_PAGES = "remap_file_pages"


@dataclass(frozen=True)
class Arch:
    """The facts uemu needs about one instruction set and ABI."""

    name: str
    """Our exact key for users and argspec: ``x86_64``, ``i386``, ``aarch64``, ..."""
    e_machine: str
    """pyelftools' name of the ELF ``e_machine`` value (``EM_X86_64``)."""
    elf_class: int
    """32 or 64."""
    little_endian: bool | None
    """Byte order; ``None`` where the same name covers both (mips64)."""
    spec_dialect: str
    """Which operand grammar its SDT argument specs use (see ``uemu.argspec``)."""
    spec_registers: Mapping[str, SpecRegister] = field(default_factory=dict)
    """Every register spelling its compilers print in specs, without sigils."""
    pair_high: Mapping[str, str] = field(default_factory=dict)
    """32-bit ABIs: canonical low register -> register holding the high half of an
    8-byte value that the spec names by its low register only (i386 ``-8@%eax``
    means edx:eax)."""

    ip_reg: str = ""
    """Canonical name of the instruction pointer (``rip``, ``eip``, ``pc``)."""
    sp_reg: str = ""
    """Canonical name of the stack pointer."""
    link_reg: str = ""
    """The register a call leaves its return address in (arm64's x30, riscv64's ra); ""
    where the call pushes it on the stack (x86)."""
    pac_mask_note: int = 0
    """The regset of the pointer authentication masks (arm64's NT_ARM_PAC_MASK: data, then
    instruction), whose instruction mask covers the signature a function's prologue may
    put in ``link_reg`` (paciasp); 0 where there is none."""
    regset: tuple[str, ...] = ()
    """Register names in the order PTRACE_GETREGSET(NT_PRSTATUS) returns them for a
    task of this ABI ('' for slots uemu never names).  An i386 task yields its own
    32-bit layout even to a 64-bit tracer."""
    regset_word: int = 8
    """Bytes per regset slot."""
    audit_arch: int = 0
    """``AUDIT_ARCH_*`` value seccomp reports for this ABI (``seccomp_data.arch``)."""
    mapping_syscalls: Mapping[int, MappingSyscall] = field(default_factory=dict)
    """Syscall number -> kind, for the syscalls that create, move, split or drop
    file mappings."""
    syscall_insn: bytes = b""
    """The system-call instruction; uemu finds one in the vDSO to make the tracee call
    mmap for its XOL area."""
    syscall_regs: tuple[str, ...] = ()
    """The register holding the syscall number, then those of up to six arguments."""
    syscall_return: str = ""
    """The register holding a syscall's result."""
    syscall_orig_reg: str = ""
    """Where the registers keep the number of the syscall a task is inside
    (x86 ``orig_rax``), for restarting one the tracer interrupted; empty where
    the kernel prepares the restart before any ptrace-stop can see the
    registers (arm64 and riscv64 ``arch_do_signal_or_restart``)."""
    restart_syscall: int = -1
    """The number of ``restart_syscall``, which ERESTART_RESTARTBLOCK restarts."""
    syscall_numbers: Mapping[str, int] = field(default_factory=dict)
    """Numbers of the system calls uemu makes the tracee run (``mmap``, ``munmap``,
    ``madvise`` for the XOL area; ``mprotect`` and ``rt_sigaction`` for the in-target
    runtime, ``uemu.net``), of those it makes itself on a host of this arch (``kcmp``), and
    ``rt_sigreturn``, which ``uemu repair`` waits for a thread in the runtime's handler to make."""
    ucontext_regs: Mapping[str, int] = field(default_factory=dict)
    """Byte offset of each general register (by its ``regset`` name, ip and sp included) in
    the ``ucontext`` a signal handler receives: what the in-target runtime reads and
    changes (uapi asm/sigcontext.h and asm/ucontext.h)."""
    sigaction: KernelSigaction | None = None
    """The kernel's sigaction layout, where uemu installs the in-target runtime."""
    way_back: SigreturnWayBack | None = None
    """How a thread left inside a call injected before the in-target runtime exists
    restores itself, where uemu knows how (``inject.py``)."""
    trap_si_code: int = 0
    """si_code of the SIGTRAP its breakpoint instruction raises (x86 int3: SI_KERNEL;
    brk and ebreak: TRAP_BRKPT)."""
    backend: Backend | None = None
    """The tracing backend, or ``None`` where uemu can list and decode but not trace."""
    jumps: JumpBackend | None = None
    """The jump path's facts (arch/jump.py), where hits can run through trampolines."""

    @property
    def word_size(self) -> int:
        return self.elf_class // 8

    @property
    def byte_order(self) -> Literal["little", "big"]:
        """``int.from_bytes`` order of the tracee's words (big only where the arch says so)."""
        return "big" if self.little_endian is False else "little"

    def tracing_backend(self) -> Backend:
        """The backend, or UnsupportedArch for an arch uemu lists but cannot trace."""
        if self.backend is None:
            from uemu.errors import UnsupportedArch

            raise UnsupportedArch(self.name, self.elf_class, "uemu can list its probes but not trace them")
        return self.backend

    def restarted_syscall(self, regs: Regs) -> dict[str, int]:
        """The registers to give back a task interrupted inside a syscall that the
        kernel would restart, as it does when no signal handler runs (x86's
        ``arch_do_signal_or_restart`` after ``get_signal()`` found nothing):
        ERESTARTSYS, ERESTARTNOINTR and ERESTARTNOHAND run the same call again,
        ERESTART_RESTARTBLOCK calls ``restart_syscall``; the ip moves back over
        the syscall instruction.  Empty when there is nothing to restart."""
        if not self.syscall_orig_reg:
            return {}
        mask = (1 << 8 * self.regset_word) - 1
        sign = 1 << (8 * self.regset_word - 1)
        number = regs[self.syscall_orig_reg]
        error = ((regs[self.syscall_return] & mask) ^ sign) - sign
        if number & sign or error not in _RESTART_ERRORS:
            return {}
        again = self.restart_syscall if error == _ERESTART_RESTARTBLOCK else number
        return {self.syscall_return: again, self.ip_reg: (regs[self.ip_reg] - len(self.syscall_insn)) & mask}

    def mapping_syscall_arguments(self, kind: MappingSyscall, args: tuple[int, ...],
                                  read_memory: Callable[[int, int], bytes]) -> tuple[int, ...]:
        """The arguments of a mapping syscall as ``mmap`` takes them (``OLD_MMAP``
        passes a pointer to them)."""
        if kind is not MappingSyscall.OLD_MMAP:
            return args
        word = self.word_size
        raw = read_memory(args[0], 6 * word)
        return tuple(int.from_bytes(raw[i : i + word], self.byte_order) for i in range(0, 6 * word, word))


# --------------------------------------------------------------------------
# The instruction interface: what a tracing backend decides and does.
# Mirrors the kernel's arch_uprobe_analyze_insn / arch_uprobe_skip_sstep /
# arch_uprobe_pre_xol / arch_uprobe_post_xol / arch_uprobe_abort_xol.
# Everything here is pure: registers in, changes out; no pid, no ptrace.
# --------------------------------------------------------------------------

Regs = Mapping[str, int]
"""Canonical register name -> unsigned value, as the arch names them (``rip``,
``rsp``, ``eflags`` on x86_64; ``eip`` ... on i386; ``pc``, ``sp``, ``x0`` ... on
aarch64)."""


@dataclass(frozen=True)
class Effects:
    """What the core must apply to the tracee: memory writes first, then registers
    (as the kernel's emulate_push_stack: a faulting push leaves registers untouched)."""

    regs: Mapping[str, int] = field(default_factory=dict)
    writes: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True)
class Plan:
    """What a backend decided for one probed instruction, once, at arm time."""

    vaddr: int
    """Link-time or runtime address the analysis assumed (relative targets use it)."""
    size: int
    """Length of the original instruction in bytes."""
    text: str
    """Disassembly for messages (``nop``, ``mov rax, qword ptr [rip + 0x10]``)."""


@dataclass(frozen=True)
class Emulate(Plan):
    """The tracer carries out the instruction itself; no slot (SDT nop, branches)."""


@dataclass(frozen=True)
class StepOutOfLine(Plan):
    """The instruction runs in an XOL slot, with the backend's fixups around it."""

    syscall: bool = field(default=False, kw_only=True)
    """A system call instruction: its syscall stops must stay visible to the core,
    which notices mappings there (a step of it ends at the syscall's exit)."""


@dataclass(frozen=True)
class Refuse(Plan):
    """The instruction cannot be probed; ``reason`` uses the kernel's words."""

    reason: str = ""


class Finish(Flag):
    """What finishing a step does (the kernel's UPROBE_FIX_* flags), for a step whose
    thread uemu's in-target runtime must finish if uemu dies."""

    IP = 1
    """ip moves from the slot back near the site (when it is still in the slot)."""
    CALL = 2
    """The return address a call pushed is made the site's."""


class StepEnd(StrEnum):
    """How control comes back from an XOL slot."""

    STEP = "step"
    """PTRACE_SINGLESTEP one instruction, then ``finish_xol``."""
    TRAP = "trap"
    """Resume; the slot ends in a trap (riscv has no single-step), then ``finish_xol``."""
    JUMP = "jump"
    """Resume; the slot jumps back to the next instruction itself: no second stop."""


@dataclass(frozen=True)
class XolSetup:
    """How to run one out-of-line step.

    ``code`` goes into the slot at ``slot_vaddr``; ``regs`` are set before resuming
    (ip = slot, scratch registers).  ``ends`` says how control comes back.
    ``restore`` holds registers the setup borrowed (x86's rip-relative scratch
    register) with their values at the site; the core puts them back before
    ``finish_xol`` or ``abort_xol``, whether the step completed or faulted.
    A setup depends on the registers at the site only through ``restore``: one
    that borrows nothing is reused for the next hit of its plan in its slot.
    """

    code: bytes
    regs: Mapping[str, int]
    ends: StepEnd
    restore: Mapping[str, int] = field(default_factory=dict)


class Backend(Protocol):
    """The narrow interface between the core and one instruction set."""

    max_insn_len: int
    """Bytes to read from the file for ``analyze`` (x86 16, fixed-width ISAs 4)."""
    slot_size: int
    """Bytes reserved per XOL slot."""

    def trap_bytes(self, original: bytes) -> bytes:
        """The breakpoint to write over an instruction starting with ``original``
        (riscv: ``c.ebreak`` over a 2-byte instruction, ``ebreak`` over a 4-byte one)."""

    def is_trap(self, code: bytes) -> bool:
        """Whether ``code`` starts with any trap instruction of this ISA
        (the kernel's ``is_trap_insn``)."""

    def trap_address(self, ip: int) -> int:
        """The breakpoint's address given ip after the trap stop (x86: ip - 1)."""

    def analyze(self, code: bytes, vaddr: int) -> Plan:
        """Decide once what to do at a probed instruction."""

    def emulate(self, plan: Emulate, regs: Regs) -> Effects:
        """Carry out an ``Emulate`` plan as the CPU would, from the state at ``plan.vaddr``."""

    def step_instead(self, plan: Emulate) -> StepOutOfLine | None:
        """A plan to step out of line when carrying out ``plan`` could not write the
        tracee's memory (a push on a bad stack), so the CPU raises the fault the
        program would get; None where an emulation writes no memory."""

    def prepare_xol(self, plan: StepOutOfLine, slot_vaddr: int, regs: Regs) -> XolSetup:
        """Slot contents and register changes to run the instruction at ``slot_vaddr``."""

    def finish_kind(self, plan: StepOutOfLine) -> Finish:
        """What ``finish_xol`` fixes, as flags the in-target runtime can apply alone."""

    def finish_xol(self, plan: StepOutOfLine, slot_vaddr: int, regs: Regs) -> Effects:
        """Fix-ups after the step so the state is as if it ran at ``plan.vaddr``."""

    def abort_xol(self, plan: StepOutOfLine, slot_vaddr: int, regs: Regs) -> Effects:
        """Undo ``prepare_xol`` when the step faulted: ip back to the site, scratch restored."""
