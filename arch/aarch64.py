"""aarch64 (AArch64, little-endian, LP64): register facts and the uprobes instruction backend
(as the kernel's arch/arm64/kernel/probes/{uprobes,decode-insn,simulate-insn}.c).

gcc prints every general register operand by its 64-bit name (``-4@x1`` for an
``int``; observed, gcc 12 ``aarch64-linux-gnu``), but hand-written probes and other
compilers may use the 32-bit ``w`` views, so both are listed.
"""

from __future__ import annotations

import struct
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


def _aarch64_spec_registers() -> dict[str, SpecRegister]:
    regs: dict[str, SpecRegister] = {}
    for n in range(31):
        regs[f"x{n}"] = SpecRegister(f"x{n}", 8)
        regs[f"w{n}"] = SpecRegister(f"x{n}", 4)
    # GAS aliases (binutils tc-aarch64.c): intra-procedure-call scratch, frame, link.
    for alias, n in (("ip0", 16), ("ip1", 17), ("fp", 29), ("lr", 30)):
        regs[alias] = SpecRegister(f"x{n}", 8)
    regs["sp"] = SpecRegister("sp", 8)
    regs["wsp"] = SpecRegister("sp", 4)
    # Hardwired zero: canonical "zero" on every arch, read as 0 by uemu.argspec.
    regs["xzr"] = SpecRegister("zero", 8)
    regs["wzr"] = SpecRegister("zero", 4)
    return regs


# NT_PRSTATUS is struct user_pt_regs (arch/arm64/include/uapi/asm/ptrace.h): regs[31], sp, pc, pstate.
_REGSET = (*(f"x{n}" for n in range(31)), "sp", "pc", "pstate")
# struct sigcontext (arch/arm64/include/uapi/asm/sigcontext.h): fault_address, then regs[31],
# sp, pc, pstate: the regset's order.
_UCONTEXT = {name: UCONTEXT_MCONTEXT + 8 + 8 * i for i, name in enumerate(_REGSET)}

# The way back (arch/arm64/kernel/signal.c): struct rt_sigframe is a siginfo, then the
# ucontext (fixed_width.sigframe), whose uc_mcontext's 4096 __reserved bytes (16-aligned
# after fault_address, regs[31], sp, pc and pstate) hold records: the fpsimd one, which
# rt_sigreturn requires, then a zero terminator.
_UC_RESERVED = UCONTEXT_MCONTEXT + 288
_SIGFRAME_SIZE = SIGFRAME_UCONTEXT + _UC_RESERVED + 4096
_FPSIMD_MAGIC, _FPSIMD_SIZE = 0x46508001, 528
"""struct fpsimd_context: its _aarch64_ctx head, fpsr, fpcr, vregs[32]."""
_NT_PRFPREG, _NT_ARM_SVE, _NT_ARM_SSVE, _NT_ARM_ZA, _NT_ARM_GCS = 2, 0x405, 0x40B, 0x40C, 0x410
_SVE_PT_REGS_SVE = 1
"""user_sve_header.flags (at 12): the SVE registers are live (NT_ARM_SSVE: streaming mode)."""
_ZA_HEADER = 16
"""struct user_za_header: a ZA regset no longer than it means ZA is off."""


def _aarch64_frame(regs: Mapping[str, int], blocked: int, images: Sequence[bytes], top: int) -> tuple[int, bytes]:
    """struct rt_sigframe 16-byte aligned below ``top`` (get_sigframe()), with every
    register, the mask and the fpsimd record from ptrace's NT_PRFPREG (user_fpsimd_state:
    vregs, fpsr, fpcr).  Refused (NoWayBack) for a thread with live SVE registers, in
    streaming mode, with ZA on or a guarded control stack: a frame with only the fpsimd
    record would drop their state (the kernel writes sve, za and gcs records we do not
    make), and a `ret` checked against a GCS would fault."""
    fpsimd, sve, ssve, za, gcs = images
    if any(len(image) >= 16 and struct.unpack_from("<H", image, 12)[0] & _SVE_PT_REGS_SVE for image in (sve, ssve)):
        raise NoWayBack("the thread's SVE registers are live")
    if len(za) > _ZA_HEADER or (gcs and struct.unpack_from("<Q", gcs)[0] & 1):
        raise NoWayBack("the thread has ZA on or a guarded control stack")
    at, out = sigframe(_SIGFRAME_SIZE, top, regs, _UCONTEXT, blocked)
    fpsr, fpcr = struct.unpack_from("<II", fpsimd, 512)
    record = struct.pack("<IIII", _FPSIMD_MAGIC, _FPSIMD_SIZE, fpsr, fpcr) + fpsimd[:512]
    reserved = SIGFRAME_UCONTEXT + _UC_RESERVED
    out[reserved:reserved + _FPSIMD_SIZE] = record
    return at, bytes(out)


_WAY_BACK = SigreturnWayBack(
    gadget=b"\x01\x00\x00\xd4\xc0\x03\x5f\xd6",  # svc #0; ret (glibc's getpid and kin)
    restorer=b"\x68\x11\x80\xd2\x01\x00\x00\xd4",  # mov x8, #139; svc #0 (the vDSO's __kernel_rt_sigreturn)
    fpstate_notes=(_NT_PRFPREG,),
    feature_notes=(_NT_ARM_SVE, _NT_ARM_SSVE, _NT_ARM_ZA, _NT_ARM_GCS),
    frame=_aarch64_frame,
)

# ===========================================================================
# The instruction backend.  Kernel: arch/arm64/kernel/probes/ (v6.x) and the encoding
# masks of arch/arm64/include/asm/insn.h.  The decisions are taken on the encoding, as
# the kernel takes them; capstone only names the instruction for messages.
# ===========================================================================

_NOP = 0xD503201F
_BRK = (0xFFE0001F, 0xD4200000)
UPROBES_BRK = (0xD4200000 | 0x005 << 5).to_bytes(4, "little")
"""``BRK #0x005``, the kernel's UPROBES_BRK_IMM."""
_BTYPE = 0xC00
"""PSTATE.BTYPE, the branch-target state a landing pad checks."""
_N, _Z, _C, _V = 1 << 31, 1 << 30, 1 << 29, 1 << 28
_DAIF = 0xDA11
"""mrs's system-register field for DAIF (AARCH64_INSN_SPCLREG_DAIF)."""

# Hints, by their CRm:op2 field (insn & 0xfe0): bti (with any target) is emulated with nop;
# the pointer-authentication hints that sign or strip are stepped; the kernel refuses every
# other hint (yield, wfe, wfi, sev, autia*, esb, csdb, ...) and so does uemu.
_BTI_HINTS = frozenset({0x20 << 5, 0x22 << 5, 0x24 << 5, 0x26 << 5})
_STEPPABLE_HINTS = frozenset({0x07 << 5, 0x08 << 5, 0x0A << 5, 0x18 << 5, 0x19 << 5, 0x1A << 5, 0x1B << 5})

# (mask, value) pairs of arch/arm64/include/asm/insn.h.
_CLASS_BRANCH_SYS = (0x1C000000, 0x14000000)
_B = (0xFC000000, 0x14000000)
_BL = (0xFC000000, 0x94000000)
_CB = (0x7E000000, 0x34000000)
"""cbz and cbnz (bit 24 tells them apart)."""
_TB = (0x7E000000, 0x36000000)
"""tbz and tbnz (bit 24)."""
_BCOND = (0xFF000010, 0x54000000)
_BR_BLR_RET = ((0xFFFFFC1F, 0xD61F0000), (0xFFFFFC1F, 0xD63F0000), (0xFFFFFC1F, 0xD65F0000))
_AUTH_BRANCHES = ((0xFEFFF800, 0xD61F0800), (0xFEFFF800, 0xD63F0800), (0xFFFFFBFF, 0xD65F0BFF))
"""braa/brab(z), blraa/blrab(z), retaa/retab: branches the kernel neither steps nor simulates."""
_ADR_ADRP = (0x1F000000, 0x10000000)
_HINT = (0xFFFFF01F, 0xD503201F)
_MRS = (0xFFF00000, 0xD5300000)

_REFUSED_SYSTEM: tuple[tuple[int, int, str], ...] = (
    (0xFFF8F01F, 0xD500401F, "msr (immediate) can do any number of nasty things during single-stepping"),
    (0xFFF00000, 0xD5100000, "msr (register) can do any number of nasty things during single-stepping"),
    (0xFF000000, 0xD4000000, "exception generation (svc, hvc, smc, brk, hlt) is not safe during stepping"),
    (0xFFFFFFFF, 0xD69F03E0, "eret is not steppable"),
    (0xFFFFFBFF, 0xD69F0BFF, "eretaa/eretab are not steppable"),
)
_REFUSED_OTHER: tuple[tuple[int, int, str], ...] = (
    (0xBF000000, 0x18000000, "ldr (literal) loads a PC-relative literal, wrong from an XOL slot"),
    (0xFF000000, 0x98000000, "ldrsw (literal) loads a PC-relative literal, wrong from an XOL slot"),
    (0xFF000000, 0xD8000000, "prfm (literal) uses a PC-relative literal, wrong from an XOL slot"),
    # Differs: the kernel's literal masks miss the SIMD&FP form (V = 1), so it steps
    # ldr s/d/q, label from the slot and loads the slot's neighbour instead.
    (0x3F000000, 0x1C000000, "ldr (literal, SIMD&FP) loads a PC-relative literal, wrong from an XOL slot"),
    (0x3F800000, 0x08000000, ("exclusive load/store (ldxr, stxr, ldaxr, stlxr, ldxp, stxp, casp): the "
                              "exclusive monitor does not survive single-step exception handling")),
    (0x3B200C00, 0x19000400, "memory copy/set (MOPS): its three instructions must be consecutive"),
)


def _x(number: int) -> str | None:
    """Register name of an Rn/Rt field where 31 is the zero register (None)."""
    return f"x{number}" if number < 31 else None


@cache
def _capstone() -> capstone.Cs:
    """The decoder for plan texts, imported on first use: listing probes never pays for it."""
    import capstone

    return capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)


@dataclass(frozen=True, kw_only=True)
class A64Hint(Emulate):
    """nop and bti: pc + 4, PSTATE.BTYPE cleared (simulate_nop(), arm64_skip_faulting_instruction()).

    Differs: the kernel steps bti out of line.  bti does nothing but check BTYPE, and the
    brk over it raised no Branch Target exception (brk never does), so emulating it is the
    same minus a stop; BTYPE must be cleared or the next instruction would fault as a landing pad.
    """

    effects: Effects
    """pc = vaddr + 4, when BTYPE is already clear."""


@dataclass(frozen=True, kw_only=True)
class A64Fixed(Emulate):
    """b, bl, adr, adrp: the outcome is known at analysis (simulate_b_bl(), simulate_adr_adrp())."""

    effects: Effects


@dataclass(frozen=True, kw_only=True)
class A64CondBranch(Emulate):
    """b.cond: taken when the condition holds on PSTATE.NZCV (simulate_b_cond())."""

    condition: int
    taken: Effects
    not_taken: Effects


@dataclass(frozen=True, kw_only=True)
class A64ZeroTest(Emulate):
    """cbz/cbnz and tbz/tbnz: taken when ``register & mask`` is zero, or non-zero for the ``n``
    forms (simulate_cbz_cbnz(), simulate_tbz_tbnz()); the mask is the w or x width, or one bit."""

    register: str | None
    """None: the zero register."""
    mask: int
    nonzero: bool
    taken: Effects
    not_taken: Effects


@dataclass(frozen=True, kw_only=True)
class A64RegisterBranch(Emulate):
    """br, blr, ret: pc from the register, x30 = vaddr + 4 for blr (simulate_br_blr_ret())."""

    register: str | None
    link: bool


@dataclass(frozen=True, kw_only=True)
class A64Step(PcStep):
    """An instruction the kernel single-steps out of line."""


class Aarch64Backend(PcStepFixups):
    """AArch64 instructions behind the Backend protocol of arch/base.py."""

    max_insn_len = 4
    slot_size = 8
    """The kernel's slot is 4 bytes; 8 leave room for the ``b`` back of a one-stop slot."""

    # -- traps --------------------------------------------------------------

    def trap_bytes(self, original: bytes) -> bytes:
        return UPROBES_BRK

    def is_trap(self, code: bytes) -> bool:
        """Any BRK: in a user task every immediate ends in SIGTRAP (gdb writes ``brk #0``).

        The kernel counts less: arm64 keeps the weak is_trap_insn(), which is is_swbp_insn(),
        BRK #5 only.  It needs no more, because only BRK #5 reaches uprobes at all (the break
        hook matches the immediate); every other BRK goes straight to SIGTRAP.  HLT is not a
        trap in user space (SIGILL).
        """
        return len(code) >= 4 and int.from_bytes(code[:4], "little") & _BRK[0] == _BRK[1]

    def trap_address(self, ip: int) -> int:
        """BRK leaves pc on itself (uprobe_get_swbp_addr() returns pc)."""
        return ip

    # -- analysis (arch_uprobe_analyze_insn, arm_probe_decode_insn) ----------

    def analyze(self, code: bytes, vaddr: int) -> Plan:
        """Decide once what a hit at ``vaddr`` does, in the kernel's order: nop is simulated,
        steppable instructions step, branches and adr/adrp are simulated, the rest refused."""
        if vaddr % 4:
            return Refuse(vaddr=vaddr, size=0, text="(unaligned)",
                          reason="not supported by uprobes: address not 4-byte aligned (EINVAL)")
        if len(code) < 4:
            return Refuse(vaddr=vaddr, size=0, text="(bad)",
                          reason="cannot decode the instruction: fewer than 4 bytes")
        code = bytes(code[:4])
        word = int.from_bytes(code, "little")
        text = disassemble(_capstone(), code, vaddr, ".inst")
        reason = self._refusal(word)
        if reason:
            return Refuse(vaddr=vaddr, size=4, text=text, reason=f"not supported by uprobes: {reason}")
        return self._simulated(word, vaddr, text) or A64Step.at(vaddr, code, text)

    @staticmethod
    def _refusal(word: int) -> str:
        """Why arm_probe_decode_insn() rejects the instruction, or ""."""
        if word & _CLASS_BRANCH_SYS[0] == _CLASS_BRANCH_SYS[1]:
            if any(word & mask == value for mask, value in _AUTH_BRANCHES):
                return "branch with pointer authentication: neither steppable nor simulated"
            for mask, value, why in _REFUSED_SYSTEM:
                if word & mask == value:
                    return why
            if word & _MRS[0] == _MRS[1] and (word >> 5) & 0xFFFF == _DAIF:
                # The kernel's comment says reading DAIF is the one mrs it allows; its code
                # steps every other mrs and refuses this one.  We follow the code.
                return "mrs of DAIF is not steppable"
            if word & _HINT[0] == _HINT[1] and word != _NOP:
                hint = word & 0xFE0
                if hint not in _BTI_HINTS and hint not in _STEPPABLE_HINTS:
                    return ("hint outside the single-step whitelist (may cause an exception or other "
                            "unintended behaviour)")
            return ""
        for mask, value, why in _REFUSED_OTHER:
            if word & mask == value:
                return why
        return ""

    def _simulated(self, word: int, vaddr: int, text: str) -> Plan | None:
        """The instructions the kernel simulates (INSN_GOOD_NO_SLOT), or None to step."""
        next_pc = (vaddr + 4) & MASK64
        if word == _NOP or (word & _HINT[0] == _HINT[1] and word & 0xFE0 in _BTI_HINTS):
            return A64Hint(vaddr=vaddr, size=4, text=text, effects=goto(next_pc))
        if word & _ADR_ADRP[0] == _ADR_ADRP[1]:
            return A64Fixed(vaddr=vaddr, size=4, text=text, effects=self._adr_effects(word, vaddr))
        if word & _B[0] in (_B[1], _BL[1]):
            target = (vaddr + (signed(word & 0x3FFFFFF, 26) << 2)) & MASK64
            regs = {"pc": target, "x30": next_pc} if word >> 31 else {"pc": target}  # bl links
            return A64Fixed(vaddr=vaddr, size=4, text=text, effects=Effects(regs=frozen_map(regs)))
        target19 = (vaddr + (signed(word >> 5 & 0x7FFFF, 19) << 2)) & MASK64
        if word & _BCOND[0] == _BCOND[1]:
            return A64CondBranch(vaddr=vaddr, size=4, text=text, condition=word & 0xF,
                                 taken=goto(target19), not_taken=goto(next_pc))
        if word & _CB[0] == _CB[1]:
            mask = MASK64 if word >> 31 else 0xFFFFFFFF
            return A64ZeroTest(vaddr=vaddr, size=4, text=text, register=_x(word & 0x1F), mask=mask,
                               nonzero=bool(word >> 24 & 1), taken=goto(target19), not_taken=goto(next_pc))
        if word & _TB[0] == _TB[1]:
            bit = (word >> 31) << 5 | (word >> 19 & 0x1F)
            target14 = (vaddr + (signed(word >> 5 & 0x3FFF, 14) << 2)) & MASK64
            return A64ZeroTest(vaddr=vaddr, size=4, text=text, register=_x(word & 0x1F), mask=1 << bit,
                               nonzero=bool(word >> 24 & 1), taken=goto(target14), not_taken=goto(next_pc))
        for mask, value in _BR_BLR_RET:
            if word & mask == value:
                return A64RegisterBranch(vaddr=vaddr, size=4, text=text, register=_x(word >> 5 & 0x1F),
                                         link=value == 0xD63F0000)
        return None

    @staticmethod
    def _adr_effects(word: int, vaddr: int) -> Effects:
        """adr: vaddr + imm21; adrp: the 4 KiB page of vaddr + imm21 pages (simulate_adr_adrp())."""
        imm = signed((word >> 5 & 0x7FFFF) << 2 | (word >> 29 & 3), 21)
        value = (vaddr & ~0xFFF) + (imm << 12) if word >> 31 else vaddr + imm
        regs = {"pc": (vaddr + 4) & MASK64}
        rd = _x(word & 0x1F)
        if rd is not None:
            regs[rd] = value & MASK64
        return Effects(regs=frozen_map(regs))

    # -- per hit: simulation (arch_uprobe_skip_sstep) -------------------------

    def emulate(self, plan: Emulate, regs: Regs) -> Effects:
        """The plan's outcome from the registers at the site; nothing here writes memory."""
        if isinstance(plan, A64Hint):
            pstate = regs["pstate"]
            if pstate & _BTYPE:
                return Effects(regs={"pc": plan.effects.regs["pc"], "pstate": pstate & ~_BTYPE})
            return plan.effects
        if isinstance(plan, A64Fixed):
            return plan.effects
        if isinstance(plan, A64CondBranch):
            return plan.taken if self.condition_holds(plan.condition, regs["pstate"]) else plan.not_taken
        if isinstance(plan, A64ZeroTest):
            value = regs[plan.register] if plan.register else 0
            return plan.taken if ((value & plan.mask) != 0) == plan.nonzero else plan.not_taken
        assert isinstance(plan, A64RegisterBranch)
        target = regs[plan.register] if plan.register else 0
        if plan.link:  # pc is read before x30 is written: blr x30 jumps to the old x30
            return Effects(regs={"pc": target, "x30": (plan.vaddr + 4) & MASK64})
        return Effects(regs={"pc": target})

    @staticmethod
    def condition_holds(condition: int, pstate: int) -> bool:
        """Whether b.cond with this condition field jumps, given PSTATE (ARM ARM ConditionHolds();
        the kernel's aarch32_opcode_cond_checks[])."""
        test = condition >> 1
        if test == 0:
            holds = bool(pstate & _Z)
        elif test == 1:
            holds = bool(pstate & _C)
        elif test == 2:
            holds = bool(pstate & _N)
        elif test == 3:
            holds = bool(pstate & _V)
        elif test == 4:
            holds = bool(pstate & _C) and not pstate & _Z
        elif test == 5:
            holds = bool(pstate & _N) == bool(pstate & _V)
        elif test == 6:
            holds = bool(pstate & _N) == bool(pstate & _V) and not pstate & _Z
        else:
            return True  # al and nv: always
        return holds != bool(condition & 1)

    # -- per hit: out-of-line step (arch_uprobe_pre_xol / post_xol / abort_xol) ----

    def prepare_xol(self, plan: StepOutOfLine, slot_vaddr: int, regs: Regs) -> XolSetup:
        """The instruction alone, single-stepped ("step", the kernel's way), or followed by
        ``b vaddr + 4`` when the slot is within its ±128 MiB ("jump": one stop).

        Every stepped instruction falls through to the next one (branches are simulated or
        refused), so any of them may jump back.
        """
        assert isinstance(plan, PcStep)
        back = plan.vaddr - slot_vaddr  # (vaddr + 4) - (slot + 4)
        if -(1 << 27) <= back < 1 << 27:
            jump = 0x14000000 | (back >> 2 & 0x3FFFFFF)
            return XolSetup(plan.code + jump.to_bytes(4, "little"), {"pc": slot_vaddr}, StepEnd.JUMP, restore=NO_REGS)
        return XolSetup(plan.code, {"pc": slot_vaddr}, StepEnd.STEP, restore=NO_REGS)



_BACKEND = Aarch64Backend()

# ===========================================================================
# The jump path (arch/jump.py): ``b`` over the SDT nop, within ±128 MiB.
# ===========================================================================

HIT_FRAME = HitFrame(slots=(*(f"x{n}" for n in range(31)), "pstate", "", ""), sp_offset=272 + 32)
"""uemu_hit_entry's frame: x0..x30, nzcv, its return address, padding; the trampoline's own
32 bytes (x16, x17, x30) lie between it and the site's sp."""


class Aarch64Jumps(FixedWidthJumps):
    """``b`` over a 4-byte nop or a stepped instruction (never over bti: a landing pad must
    stay one; its plan is a hint, not the nop word).  The trampoline keeps sp 16-byte
    aligned and needs no red zone (AAPCS64 has none): ``stp x16, x17, [sp, #-32]!;
    str x30, [sp, #16]; ldr x16, =hit_entry; ldr w17, =index; blr x16; ldr x30, [sp, #16];
    ldp x16, x17, [sp], #32``."""

    frame = HIT_FRAME
    thread_pointer = ThreadPointer(ThreadPointerSource.REGSET, note=0x401)  # NT_ARM_TLS: tpidr_el0
    reach_bits = 28
    user_top = 1 << 48
    nop = _NOP.to_bytes(4, "little")
    head_size = 28

    def head(self, literal: int) -> bytes:
        words = (0xA9BE47F0, 0xF9000BFE, _ldr_literal(0x58000010, literal - 8),
                 _ldr_literal(0x18000011, literal + 8 - 12), 0xD63F0200, 0xF9400BFE, 0xA8C247F0)
        return b"".join(word.to_bytes(4, "little") for word in words)

    def branch(self, source: int, target: int) -> bytes:
        return (0x14000000 | ((target - source) >> 2 & 0x3FFFFFF)).to_bytes(4, "little")


def _ldr_literal(base: int, distance: int) -> int:
    """LDR (literal): imm19, in words from the instruction."""
    return base | (distance >> 2 & 0x7FFFF) << 5


AARCH64 = Arch(
    name="aarch64",
    e_machine="EM_AARCH64",
    elf_class=64,
    little_endian=True,
    spec_dialect="aarch64",
    spec_registers=frozen_map(_aarch64_spec_registers()),
    ip_reg="pc",
    sp_reg="sp",
    link_reg="x30",
    pac_mask_note=0x406,  # NT_ARM_PAC_MASK
    regset=_REGSET,
    audit_arch=0xC00000B7,  # AUDIT_ARCH_AARCH64
    mapping_syscalls=frozen_map(GENERIC_MAPPING_SYSCALLS),
    syscall_insn=b"\x01\x00\x00\xd4",  # svc #0
    syscall_regs=("x8", "x0", "x1", "x2", "x3", "x4", "x5"),
    syscall_return="x0",
    syscall_numbers=frozen_map(GENERIC_SYSCALL_NUMBERS),
    ucontext_regs=frozen_map(_UCONTEXT),
    way_back=_WAY_BACK,
    sigaction=KernelSigaction(size=32, word=8, handler=0, flags=8, restorer=16, mask=24),
    trap_si_code=TRAP_BRKPT,
    backend=_BACKEND,
    jumps=Aarch64Jumps(_BACKEND),
)

register(AARCH64)
