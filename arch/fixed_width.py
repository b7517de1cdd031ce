"""What the fixed-width instruction sets share (aarch64, riscv64, and the ports after
them): the asm-generic syscall table, the signal frame's generic part, and out-of-line
steps after which only pc needs fixing, their trap leaving pc on itself."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from .base import Effects, Emulate, Finish, MappingSyscall, Plan, Refuse, Regs, StepOutOfLine, frozen_map
from .jump import (
    Counter,
    HitFrame,
    JumpForm,
    NoJump,
    SiteJump,
    ThreadPointer,
    displaced_code,
    signed_fits,
    way_back_in,
)

if TYPE_CHECKING:
    import capstone

    from .base import Backend

# Syscalls after which file mappings may have changed, from asm-generic/unistd.h: the table of
# arm64 and of every port since (riscv, loongarch).  brk and shmat never touch file mappings.
GENERIC_MAPPING_SYSCALLS = {
    222: MappingSyscall.MMAP,
    215: MappingSyscall.MUNMAP,
    226: MappingSyscall.MPROTECT,
    216: MappingSyscall.MREMAP,
    234: MappingSyscall.REMAP_FILE_PAGES,
    288: MappingSyscall.MPROTECT,  # pkey_mprotect
}
GENERIC_SYSCALL_NUMBERS = {"mmap": 222, "munmap": 215, "madvise": 233, "mprotect": 226, "rt_sigaction": 134,
                           "kcmp": 272, "memfd_create": 279, "ftruncate": 46, "close": 57,
                           "rt_sigreturn": 139, "futex": 98,
                           "set_robust_list": 99}
"""The other syscalls uemu needs (Arch.syscall_numbers), in the same table."""
TRAP_BRKPT = 1
"""si_code of the SIGTRAP of a brk or ebreak in user mode (send_user_sigtrap(TRAP_BRKPT),
do_trap(regs, SIGTRAP, TRAP_BRKPT, ...))."""
UCONTEXT_MCONTEXT = 176
"""Offset of uc_mcontext in arm64's and riscv's struct ucontext: uc_flags, uc_link, uc_stack
(40 bytes), uc_sigmask with room for glibc's 1024-bit set (128), then the 16-aligned
struct sigcontext."""
SIGFRAME_UCONTEXT = 128
"""Offset of the ucontext in arm64's and riscv's struct rt_sigframe, after the siginfo."""
_UC_SS_FLAGS, _UC_SIGMASK = 24, 40
_SS_NO_CHANGE = 4
"""A ss_flags sigaltstack refuses (EINVAL), which rt_sigreturn ignores (restore_altstack()
squashes the error): the alternate stack stays as it is (uemu cannot read it)."""


MASK64 = (1 << 64) - 1
NO_REGS: Mapping[str, int] = frozen_map({})


def sigframe(size: int, top: int, regs: Mapping[str, int], ucontext: Mapping[str, int],
             blocked: int) -> tuple[int, bytearray]:
    """Where a ``size``-byte struct rt_sigframe goes 16-byte aligned below ``top``
    (get_sigframe()), and its bytes as far as arm64 and riscv share them: a zero siginfo
    (rt_sigreturn does not read it), uc_stack asking no change, the blocked mask, every
    general register at its ``ucontext`` offset (``Arch.ucontext_regs``); the caller adds
    the floating-point state.  Kernel: arch/{arm64,riscv}/kernel/signal.c, rt_sigreturn."""
    out = bytearray(size)
    struct.pack_into("<i", out, SIGFRAME_UCONTEXT + _UC_SS_FLAGS, _SS_NO_CHANGE)
    struct.pack_into("<Q", out, SIGFRAME_UCONTEXT + _UC_SIGMASK, blocked)
    for name, offset in ucontext.items():
        struct.pack_into("<Q", out, SIGFRAME_UCONTEXT + offset, regs[name] & MASK64)
    return (top - size) & ~15, out


def signed(value: int, bits: int) -> int:
    """The low ``bits`` bits of ``value`` as a two's-complement number."""
    sign = 1 << (bits - 1)
    return (value & (sign - 1)) - (value & sign)


def goto(address: int) -> Effects:
    """Effects that only set pc."""
    return Effects(regs=frozen_map({"pc": address}))


def disassemble(decoder: capstone.Cs, code: bytes, vaddr: int, directive: str) -> str:
    """Text for messages; the assembler's raw-word ``directive`` where capstone does not know
    the encoding (the kernel decides on masks and steps such words; so do these backends)."""
    insn = next(decoder.disasm(code, vaddr, 1), None)
    if insn is None:
        return f"{directive} {int.from_bytes(code, 'little'):#0{len(code) * 2 + 2}x}"
    return f"{insn.mnemonic} {insn.op_str}".rstrip()


@dataclass(frozen=True, kw_only=True)
class PcStep(StepOutOfLine):
    """An instruction run in a slot after which only pc needs fixing (arch_uprobe_post_xol()
    and arch_uprobe_abort_xol() of arm64 and riscv)."""

    code: bytes
    finished: Effects
    """pc = vaddr + size, after the instruction completed."""
    aborted: Effects
    """pc = vaddr, after a fault in the slot, so that the signal names the site."""

    @classmethod
    def at(cls, vaddr: int, code: bytes, text: str) -> Self:
        return cls(vaddr=vaddr, size=len(code), text=text, code=code,
                   finished=goto((vaddr + len(code)) & MASK64), aborted=goto(vaddr))


class PcStepFixups:
    """``finish_xol`` and ``abort_xol`` of a backend whose every StepOutOfLine is a PcStep."""

    def finish_xol(self, plan: StepOutOfLine, slot_vaddr: int, regs: Regs) -> Effects:
        """pc = vaddr + size (arch_uprobe_post_xol())."""
        assert isinstance(plan, PcStep)
        return plan.finished

    def abort_xol(self, plan: StepOutOfLine, slot_vaddr: int, regs: Regs) -> Effects:
        """pc back to the site (arch_uprobe_abort_xol())."""
        assert isinstance(plan, PcStep)
        return plan.aborted

    def finish_kind(self, plan: StepOutOfLine) -> Finish:
        """pc = vaddr + size: the runtime's FIX_IP (the slot holds one instruction)."""
        return Finish.IP

    def step_instead(self, plan: Emulate) -> StepOutOfLine | None:
        """None: these emulations (branches, adr, bl's link register) write no memory."""
        return None


class FixedWidthJumps:
    """The jump path where every jump is one 4-byte word (aarch64 ``b``, riscv ``jal x0``):
    a site takes it over a 4-byte nop, or over a 4-byte instruction the backend steps (its
    slot code, ending in a jump back, runs in the trampoline).  One aligned word written
    over one whole instruction: no thread can see half of it.

    A trampoline: ``head`` (save the registers it uses, load hit_entry's address and the
    index from the literals at its end, call, restore), the displaced instruction or a
    branch back, then the literals (hit_entry as 8 bytes, the index as 4), 8-aligned.
    """

    frame: HitFrame
    thread_pointer: ThreadPointer
    counter: Counter | None = None
    reach_bits: int
    """Bits of the jump's signed byte offset."""
    nop: bytes
    tramp_size = 96
    user_top: int
    trap_first = False

    def __init__(self, backend: Backend):
        self.backend = backend

    def choose(self, plan: Plan, code: bytes) -> SiteJump | NoJump:
        if isinstance(plan, Refuse):
            return NoJump(f"the instruction is refused: {plan.reason}")
        if plan.size != 4:
            return NoJump(f"{plan.text!r} is {plan.size} bytes: a 4-byte jump does not fit")
        if code[:4] == self.nop:
            displaced, why = None, "nop"
        elif isinstance(plan, PcStep):
            displaced, why = plan, repr(plan.text)
        else:
            return NoJump(f"{plan.text!r} cannot run in a trampoline (only nops and stepped instructions)")
        half = 1 << (self.reach_bits - 1)
        return SiteJump(vaddr=plan.vaddr, at=plan.vaddr, length=4, form=JumpForm.JUMP, displaced=displaced,
                        resume=plan.vaddr + 4, target=None,
                        reach=(max(plan.vaddr - half, 0), min(plan.vaddr + half, 1 << 64)),
                        why=f"{'b' if self.reach_bits == 28 else 'jal x0'} over {why}")

    def jump_bytes(self, site: SiteJump, trampoline: int) -> bytes:
        return self.branch(site.at, trampoline)

    def trampoline(self, site: SiteJump, address: int, index: int, hit_entry: int) -> bytes | None:
        body = self._body(site, address + self.head_size)
        if body is None:
            return None
        literal = -(-(self.head_size + len(body)) // 8) * 8
        code = (self.head(literal) + body).ljust(literal, b"\0")
        return code + hit_entry.to_bytes(8, "little") + index.to_bytes(4, "little")

    def way_back(self, site: SiteJump, address: int) -> int:
        body_at = address + self.head_size
        body = self._body(site, body_at)
        assert body is not None, "only a trampoline that was written has a way back"
        return way_back_in(site, body_at, body, 4)

    def _body(self, site: SiteJump, body_at: int) -> bytes | None:
        """The displaced instruction's slot code (ending in its branch back), or the branch back."""
        if site.displaced is not None:
            return displaced_code(site.displaced, self.backend.prepare_xol(site.displaced, body_at, NO_REGS))
        if signed_fits(site.resume - body_at, self.reach_bits):
            return self.branch(body_at, site.resume)
        return None

    head_size: int

    def head(self, literal: int) -> bytes:
        """The call of hit_entry, its literals ``literal`` bytes from the trampoline's start."""
        raise NotImplementedError

    def branch(self, source: int, target: int) -> bytes:
        """The ISA's direct jump from ``source`` to ``target`` (in reach)."""
        raise NotImplementedError
