"""riscv64 (RV64GC, little-endian, LP64D): register facts and the uprobes instruction backend
(as the kernel's arch/riscv/kernel/probes/{uprobes,decode-insn,simulate-insn}.c).

gcc prints ABI names (observed, gcc 12 ``riscv64-linux-gnu``: ``8@a0``,
``-4@-20(s0)``, ``8@0(sp)``); the canonical name is the ABI name, and the
architectural ``xN`` and ``fp`` are aliases (as GAS accepts them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from . import register
from .base import (
    Arch,
    Effects,
    Emulate,
    KernelSigaction,
    NoWayBack,
    Plan,
    Refuse,
    Regs,
    SigreturnWayBack,
    SpecRegister,
    StepEnd,
    StepOutOfLine,
    XolSetup,
    frozen_map,
)
from .fixed_width import (
    GENERIC_MAPPING_SYSCALLS,
    GENERIC_SYSCALL_NUMBERS,
    MASK64,
    NO_REGS,
    SIGFRAME_UCONTEXT,
    TRAP_BRKPT,
    UCONTEXT_MCONTEXT,
    FixedWidthJumps,
    PcStep,
    PcStepFixups,
    disassemble,
    goto,
    sigframe,
    signed,
)
from .jump import HitFrame, ThreadPointer, ThreadPointerSource

if TYPE_CHECKING:
    import capstone

# ABI name of x0..x31 (RISC-V psABI).  x0 is the hardwired zero, canonical
# "zero" on every arch and read as 0 by uemu.argspec.
_ABI_NAMES = (
    "zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2",
    "s0", "s1", "a0", "a1", "a2", "a3", "a4", "a5",
    "a6", "a7", "s2", "s3", "s4", "s5", "s6", "s7",
    "s8", "s9", "s10", "s11", "t3", "t4", "t5", "t6",
)  # fmt: skip


def _riscv_spec_registers() -> dict[str, SpecRegister]:
    regs: dict[str, SpecRegister] = {}
    for n, abi in enumerate(_ABI_NAMES):
        regs[abi] = SpecRegister(abi, 8)
        regs[f"x{n}"] = SpecRegister(abi, 8)
    regs["fp"] = SpecRegister("s0", 8)
    return regs


# NT_PRSTATUS is struct user_regs_struct (arch/riscv/include/uapi/asm/ptrace.h): pc where x0
# would be, then x1..x31.
_REGSET = ("pc", *_ABI_NAMES[1:])
# struct sigcontext (arch/riscv/include/uapi/asm/sigcontext.h) starts with that same
# struct user_regs_struct.
_UCONTEXT = {name: UCONTEXT_MCONTEXT + 8 * i for i, name in enumerate(_REGSET)}

# The way back (arch/riscv/kernel/signal.c): struct rt_sigframe is a siginfo, then the
# ucontext (fixed_width.sigframe), whose struct sigcontext is sc_regs (the regset's 32
# words), then a 528-byte union: sc_fpregs (union __riscv_fp_state, whose d is f[32] and
# fcsr) or sc_extdesc (struct __riscv_extra_ext_header), whose reserved word at 516 must
# be zero and whose __riscv_ctx_hdr at 520 opens the extension records (vector, shadow
# stack): here at once the END one (magic 0, size 0), as the kernel writes it for a thread
# without such state.  A zero frame holds both already.
_SC_FPREGS = SIGFRAME_UCONTEXT + UCONTEXT_MCONTEXT + 8 * len(_REGSET)
_FP_D_STATE = 8 * 32 + 4
"""struct __riscv_d_ext_state: f[32], fcsr; ptrace's NT_PRFPREG gives the same bytes."""
_SIGFRAME_SIZE = _SC_FPREGS + 528
_NT_PRFPREG, _NT_RISCV_VECTOR = 2, 0x901


def _riscv_frame(regs: Mapping[str, int], blocked: int, images: Sequence[bytes], top: int) -> tuple[int, bytes]:
    """struct rt_sigframe 16-byte aligned below ``top`` (get_sigframe()), with every
    register, the mask and the D extension's registers from ptrace's NT_PRFPREG.  Refused
    (NoWayBack) for a thread whose vector state is on (NT_RISCV_VECTOR readable): the
    kernel's frame would hold it in a vector record we do not make, and rt_sigreturn
    without one leaves the vector registers as the call left them.  Kernel: ptrace's
    riscv_vr_get() fails for a thread without vector state (EINVAL; ENODATA in newer kernels)."""
    fp, vector = images
    if vector:
        raise NoWayBack("the thread's vector registers are in use")
    at, out = sigframe(_SIGFRAME_SIZE, top, regs, _UCONTEXT, blocked)
    out[_SC_FPREGS:_SC_FPREGS + _FP_D_STATE] = fp[:_FP_D_STATE]
    return at, bytes(out)


_WAY_BACK = SigreturnWayBack(
    gadget=b"\x73\x00\x00\x00\x82\x80",  # ecall; c.ret (the vDSO's __vdso_getcpu, glibc's getpid and kin)
    restorer=b"\x93\x08\xb0\x08\x73\x00\x00\x00",  # li a7, 139; ecall (the vDSO's __vdso_rt_sigreturn)
    fpstate_notes=(_NT_PRFPREG,),
    feature_notes=(_NT_RISCV_VECTOR,),
    frame=_riscv_frame,
)


# ===========================================================================
# The instruction backend.  Kernel: arch/riscv/kernel/probes/ (v6.x) and the encoding
# masks of arch/riscv/include/asm/insn.h.  Decisions are taken on the encoding, as the
# kernel takes them; capstone only names the instruction for messages.
# ===========================================================================

C_EBREAK = b"\x02\x90"
"""``c.ebreak`` (0x9002): the breakpoint over a 2-byte instruction, as the kernel's UPROBE_SWBP_INSN."""
EBREAK = (0x00100073).to_bytes(4, "little")
"""``ebreak``: over a 4-byte instruction, and after the instruction in a slot (__BUG_INSN_32)."""
_NOP, _C_NOP = 0x00000013, 0x0001
_JAL_RANGE = range(-(1 << 20), 1 << 20)

# 32-bit opcodes (bits 6:0) and 16-bit patterns (mask, value) of arch/riscv/include/asm/insn.h.
_SYSTEM, _MISC_MEM, _AUIPC, _BRANCH, _JALR, _JAL = 0x73, 0x0F, 0x17, 0x63, 0x67, 0x6F
_C_J = (0xE003, 0xA001)
_C_JR = (0xF07F, 0x8002)
_C_JALR = (0xF07F, 0x9002)
_C_BEQZ = (0xE003, 0xC001)
_C_BNEZ = (0xE003, 0xE001)
_BRANCH_CONDITIONS = frozenset({0, 1, 4, 5, 6, 7})
"""funct3 of beq, bne, blt, bge, bltu, bgeu; 2 and 3 are reserved."""


def _bit(word: int, at: int, to: int, width: int = 1) -> int:
    """``width`` bits of ``word`` starting at bit ``at``, moved to start at bit ``to``."""
    return (word >> at & ((1 << width) - 1)) << to


def _jtype(word: int) -> int:
    return signed(_bit(word, 31, 20) | _bit(word, 21, 1, 10) | _bit(word, 20, 11) | _bit(word, 12, 12, 8), 21)


def _btype(word: int) -> int:
    return signed(_bit(word, 31, 12) | _bit(word, 25, 5, 6) | _bit(word, 8, 1, 4) | _bit(word, 7, 11), 13)


def _cj(half: int) -> int:
    return signed(_bit(half, 12, 11) | _bit(half, 11, 4) | _bit(half, 9, 8, 2) | _bit(half, 8, 10)
                   | _bit(half, 7, 6) | _bit(half, 6, 7) | _bit(half, 3, 1, 3) | _bit(half, 2, 5), 12)


def _cb(half: int) -> int:
    return signed(_bit(half, 12, 8) | _bit(half, 10, 3, 2) | _bit(half, 5, 6, 2) | _bit(half, 3, 1, 2)
                   | _bit(half, 2, 5), 9)


def _reg(number: int) -> str | None:
    """ABI name of a register field; None for x0 (reads 0, writes vanish)."""
    return _ABI_NAMES[number] if number else None


@cache
def _capstone() -> capstone.Cs:
    """The decoder for plan texts, imported on first use: listing probes never pays for it."""
    import capstone

    return capstone.Cs(capstone.CS_ARCH_RISCV, capstone.CS_MODE_RISCV64 | capstone.CS_MODE_RISCVC)


@dataclass(frozen=True, kw_only=True)
class RiscvFixed(Emulate):
    """nop, c.nop, jal, c.j, auipc: the outcome is known at analysis (simulate_jal(),
    simulate_c_j(), simulate_auipc()).

    Differs: the kernel steps nops out of line; the SDT probe is a ``c.nop`` under
    -march=rv64gc, and emulating it costs one stop instead of two.
    """

    effects: Effects


def _fixed(vaddr: int, size: int, text: str, pc: int, register: str | None = None, value: int = 0) -> RiscvFixed:
    """A RiscvFixed plan: pc, and ``register`` = ``value`` unless the register is x0 (None)."""
    regs = {"pc": pc} if register is None else {"pc": pc, register: value}
    return RiscvFixed(vaddr=vaddr, size=size, text=text, effects=Effects(regs=frozen_map(regs)))


@dataclass(frozen=True, kw_only=True)
class RiscvBranch(Emulate):
    """beq, bne, blt, bge, bltu, bgeu, and c.beqz / c.bnez as beq / bne against x0
    (simulate_branch(), simulate_c_bnez_beqz())."""

    condition: int
    """funct3 of the 32-bit branch."""
    rs1: str | None
    rs2: str | None
    taken: Effects
    not_taken: Effects


@dataclass(frozen=True, kw_only=True)
class RiscvRegisterJump(Emulate):
    """jalr, c.jr, c.jalr: pc = (rs1 + offset) & ~1, the link register = vaddr + size
    (simulate_jalr(), simulate_c_jr_jalr())."""

    base: str | None
    offset: int
    link: str | None


@dataclass(frozen=True, kw_only=True)
class RiscvStep(PcStep):
    """An instruction run in a slot, followed by an ``ebreak`` or a jump back."""


class RiscvBackend(PcStepFixups):
    """RV64GC instructions behind the Backend protocol of arch/base.py.

    There is no PTRACE_SINGLESTEP on riscv (EIO: no hardware step), so no plan ends in
    "step": the kernel's own scheme, an ``ebreak`` after the instruction, or a jump back.
    """

    max_insn_len = 4
    slot_size = 8
    """The kernel's: a 4-byte instruction and the 4-byte ``ebreak`` or ``jal`` after it."""

    # -- traps --------------------------------------------------------------

    def trap_bytes(self, original: bytes) -> bytes:
        """``c.ebreak`` over a compressed instruction, ``ebreak`` over a 4-byte one.

        Differs: with the C extension the kernel writes ``c.ebreak`` everywhere, leaving the
        second half of a 4-byte instruction behind it; a whole ``ebreak`` leaves nothing.
        """
        return C_EBREAK if original[:1] and original[0] & 3 != 3 else EBREAK

    def is_trap(self, code: bytes) -> bool:
        """``c.ebreak`` or ``ebreak`` (is_trap_insn() since it learnt both)."""
        if code[:2] == C_EBREAK:
            return True
        return code[:4] == EBREAK

    def trap_address(self, ip: int) -> int:
        """ebreak leaves pc on itself (uprobe_get_swbp_addr() returns pc)."""
        return ip

    # -- analysis (arch_uprobe_analyze_insn, riscv_probe_decode_insn) ---------

    def analyze(self, code: bytes, vaddr: int) -> Plan:
        """Decide once what a hit at ``vaddr`` does, in the kernel's order: SYSTEM, fence and
        c.ebreak are refused, jumps, branches and auipc simulated, the rest stepped."""
        if vaddr % 2:
            return Refuse(vaddr=vaddr, size=0, text="(unaligned)",
                          reason="not supported by uprobes: address not 2-byte aligned (EINVAL)")
        size = 4 if code[:1] and code[0] & 3 == 3 else 2
        if len(code) < size:
            return Refuse(vaddr=vaddr, size=0, text="(bad)",
                          reason="cannot decode the instruction: too few bytes")
        if size == 4 and code[0] & 0x1C == 0x1C:
            # Differs: the kernel takes any length above 2 bytes for 4 and steps half of it.
            return Refuse(vaddr=vaddr, size=0, text="(bad)",
                          reason="cannot decode the instruction: longer than 4 bytes")
        code = bytes(code[:size])
        word = int.from_bytes(code, "little")
        text = disassemble(_capstone(), code, vaddr, ".insn")
        reason = self._refusal(word, size)
        if reason:
            return Refuse(vaddr=vaddr, size=size, text=text, reason=f"not supported by uprobes: {reason}")
        plan = self._simulated(word, vaddr, text) if size == 4 else self._simulated_compressed(word, vaddr, text)
        return plan or RiscvStep.at(vaddr, code, text)

    @staticmethod
    def _refusal(word: int, size: int) -> str:
        """Why riscv_probe_decode_insn() rejects the instruction, or ""."""
        if size == 2:
            return "c.ebreak" if word == 0x9002 else ""
        if word & 0x7F == _SYSTEM:
            return "SYSTEM-class instruction (ecall, ebreak, csr*)"
        if word & 0x7F == _MISC_MEM:
            return "fence (MISC-MEM: fence, fence.i, pause, cbo.*)"
        return ""

    @staticmethod
    def _simulated(word: int, vaddr: int, text: str) -> Plan | None:
        """The 4-byte instructions the kernel simulates, and nop; None to step.

        Differs: a branch with the reserved funct3 2 or 3 and jalr with funct3 other than 0 are
        stepped (SIGILL from the slot, delivered at the site); the kernel's simulate_branch()
        fails on them, the failure is ignored, pc stays on the trap and the task hits it forever.
        """
        opcode, rd = word & 0x7F, _reg(word >> 7 & 0x1F)
        next_pc = (vaddr + 4) & MASK64
        if word == _NOP:
            return _fixed(vaddr, 4, text, next_pc)
        if opcode == _JAL:
            return _fixed(vaddr, 4, text, (vaddr + _jtype(word)) & MASK64, rd, next_pc)
        if opcode == _AUIPC:
            return _fixed(vaddr, 4, text, next_pc, rd, (vaddr + signed(word & 0xFFFFF000, 32)) & MASK64)
        if opcode == _JALR and word >> 12 & 7 == 0:
            return RiscvRegisterJump(vaddr=vaddr, size=4, text=text, base=_reg(word >> 15 & 0x1F),
                                     offset=signed(word >> 20, 12), link=rd)
        if opcode == _BRANCH and word >> 12 & 7 in _BRANCH_CONDITIONS:
            return RiscvBranch(vaddr=vaddr, size=4, text=text, condition=word >> 12 & 7,
                               rs1=_reg(word >> 15 & 0x1F), rs2=_reg(word >> 20 & 0x1F),
                               taken=goto((vaddr + _btype(word)) & MASK64), not_taken=goto(next_pc))
        return None

    @staticmethod
    def _simulated_compressed(half: int, vaddr: int, text: str) -> Plan | None:
        """The 2-byte instructions the kernel simulates, and c.nop; None to step.

        c.jal exists on rv32 only: on rv64 its encoding is c.addiw, which steps (kernels
        before the fix that made riscv_insn_is_c_jal() rv32-only simulated it as a call).
        c.jr with rs1 = x0 is reserved and steps (SIGILL), where the kernel loops on the trap.
        """
        next_pc = (vaddr + 2) & MASK64
        if half == _C_NOP:
            return _fixed(vaddr, 2, text, next_pc)
        if half & _C_J[0] == _C_J[1]:
            return _fixed(vaddr, 2, text, (vaddr + _cj(half)) & MASK64)
        rs1 = _reg(half >> 7 & 0x1F)
        if rs1 and half & _C_JR[0] in (_C_JR[1], _C_JALR[1]):
            link = "ra" if half & _C_JALR[1] == _C_JALR[1] else None
            return RiscvRegisterJump(vaddr=vaddr, size=2, text=text, base=rs1, offset=0, link=link)
        if half & _C_BEQZ[0] in (_C_BEQZ[1], _C_BNEZ[1]):
            condition = 1 if half & _C_BNEZ[1] == _C_BNEZ[1] else 0  # bne, beq
            return RiscvBranch(vaddr=vaddr, size=2, text=text, condition=condition,
                               rs1=_ABI_NAMES[8 + (half >> 7 & 7)], rs2=None,
                               taken=goto((vaddr + _cb(half)) & MASK64), not_taken=goto(next_pc))
        return None

    # -- per hit: simulation (arch_uprobe_skip_sstep) -------------------------

    def emulate(self, plan: Emulate, regs: Regs) -> Effects:
        """The plan's outcome from the registers at the site; nothing here writes memory."""
        if isinstance(plan, RiscvFixed):
            return plan.effects
        if isinstance(plan, RiscvBranch):
            left = regs[plan.rs1] if plan.rs1 else 0
            right = regs[plan.rs2] if plan.rs2 else 0
            return plan.taken if self.condition_holds(plan.condition, left, right) else plan.not_taken
        assert isinstance(plan, RiscvRegisterJump)
        base = regs[plan.base] if plan.base else 0  # read before the link is written: jalr ra, 0(ra)
        target = (base + plan.offset) & MASK64 & ~1
        if plan.link:
            return Effects(regs={"pc": target, plan.link: (plan.vaddr + plan.size) & MASK64})
        return Effects(regs={"pc": target})

    @staticmethod
    def condition_holds(condition: int, left: int, right: int) -> bool:
        """Whether the branch with this funct3 jumps, for unsigned 64-bit register values."""
        if condition >> 1 == 0:  # beq, bne
            holds = left == right
        elif condition >> 1 == 2:  # blt, bge
            holds = signed(left, 64) < signed(right, 64)
        else:  # bltu, bgeu
            holds = left < right
        return holds != bool(condition & 1)

    # -- per hit: out-of-line execution (arch_uprobe_pre_xol / post_xol / abort_xol) ----

    def prepare_xol(self, plan: StepOutOfLine, slot_vaddr: int, regs: Regs) -> XolSetup:
        """The instruction followed by ``jal x0, vaddr + size`` when that is within the jal's
        ±1 MiB ("jump": one stop), else by ``ebreak`` ("trap": the kernel's way, two stops).

        No stepped instruction reads pc or leaves the slot (jumps, branches and auipc are
        simulated), so any of them may jump back.
        """
        assert isinstance(plan, PcStep)
        back = plan.vaddr - slot_vaddr  # (vaddr + size) - (slot + size)
        if back in _JAL_RANGE:
            return XolSetup(plan.code + _jal_zero(back), {"pc": slot_vaddr}, StepEnd.JUMP, restore=NO_REGS)
        return XolSetup(plan.code + EBREAK, {"pc": slot_vaddr}, StepEnd.TRAP, restore=NO_REGS)



def _jal_zero(offset: int) -> bytes:
    """``jal x0, offset`` (J-type immediate, bits 20|10:1|11|19:12)."""
    word = (_bit(offset, 20, 31) | _bit(offset, 1, 21, 10) | _bit(offset, 11, 20) | _bit(offset, 12, 12, 8)
            | _JAL)
    return word.to_bytes(4, "little")


# ===========================================================================
# The jump path (arch/jump.py): ``jal x0`` over a 4-byte nop, within ±1 MiB.  The SDT
# probe of rv64gc code is a 2-byte c.nop, where no 4-byte jump fits: those keep the trap.
# ===========================================================================

_T0, _T1, _RA, _SP = 5, 6, 1, 2
HIT_FRAME = HitFrame(slots=("", *_ABI_NAMES[1:2], "", *_ABI_NAMES[3:], "", ""), sp_offset=272 + 32)
"""uemu_hit_entry's frame: slot n holds xn (x0 and sp: none), then its return address and
padding; the trampoline's own 32 bytes (t0, t1, ra) lie between it and the site's sp."""


def _i_type(opcode: int, funct3: int, rd: int, rs1: int, imm: int) -> int:
    return (imm & 0xFFF) << 20 | rs1 << 15 | funct3 << 12 | rd << 7 | opcode


def _s_type(funct3: int, rs1: int, rs2: int, imm: int) -> int:
    return (imm >> 5 & 0x7F) << 25 | rs2 << 20 | rs1 << 15 | funct3 << 12 | (imm & 0x1F) << 7 | 0x23


class RiscvJumps(FixedWidthJumps):
    """``jal x0`` over a 4-byte nop or stepped instruction.  The psABI has no red zone.
    Trampoline head: ``addi sp, sp, -32; sd t0, 0(sp); sd t1, 8(sp); sd ra, 16(sp);
    auipc t0, 0; ld t1, hit_entry; lwu t0, index; jalr ra, 0(t1); ld ra, 16(sp);
    ld t1, 8(sp); ld t0, 0(sp); addi sp, sp, 32``."""

    frame = HIT_FRAME
    thread_pointer = ThreadPointer(ThreadPointerSource.REGISTER, "tp")
    reach_bits = 21
    user_top = 1 << 47
    """Kernel: riscv's DEFAULT_MAP_WINDOW is 1 << 47 on Sv48 and Sv57 (mmap without a hint
    and the stack stay below it): PIE programs load at 0x5555..., above Sv39's end."""
    nop = _NOP.to_bytes(4, "little")
    head_size = 48

    def head(self, literal: int) -> bytes:
        auipc = 16
        words = (_i_type(0x13, 0, _SP, _SP, -32), _s_type(3, _SP, _T0, 0), _s_type(3, _SP, _T1, 8),
                 _s_type(3, _SP, _RA, 16), _T0 << 7 | 0x17, _i_type(0x03, 3, _T1, _T0, literal - auipc),
                 _i_type(0x03, 6, _T0, _T0, literal + 8 - auipc), _i_type(0x67, 0, _RA, _T1, 0),
                 _i_type(0x03, 3, _RA, _SP, 16), _i_type(0x03, 3, _T1, _SP, 8), _i_type(0x03, 3, _T0, _SP, 0),
                 _i_type(0x13, 0, _SP, _SP, 32))
        return b"".join(word.to_bytes(4, "little") for word in words)

    def branch(self, source: int, target: int) -> bytes:
        return _jal_zero(target - source)


_BACKEND = RiscvBackend()

RISCV64 = Arch(
    name="riscv64",
    e_machine="EM_RISCV",
    elf_class=64,
    little_endian=True,
    spec_dialect="riscv",
    spec_registers=frozen_map(_riscv_spec_registers()),
    ip_reg="pc",
    sp_reg="sp",
    link_reg="ra",
    regset=_REGSET,
    audit_arch=0xC00000F3,  # AUDIT_ARCH_RISCV64
    mapping_syscalls=frozen_map(GENERIC_MAPPING_SYSCALLS),
    syscall_insn=b"\x73\x00\x00\x00",  # ecall
    syscall_regs=("a7", "a0", "a1", "a2", "a3", "a4", "a5"),
    syscall_return="a0",
    syscall_numbers=frozen_map(GENERIC_SYSCALL_NUMBERS),
    ucontext_regs=frozen_map(_UCONTEXT),
    way_back=_WAY_BACK,
    sigaction=KernelSigaction(size=24, word=8, handler=0, flags=8, restorer=None, mask=16,
                              vdso_restorer="__vdso_rt_sigreturn"),
    trap_si_code=TRAP_BRKPT,
    backend=_BACKEND,
    jumps=RiscvJumps(_BACKEND),
)

register(RISCV64)
