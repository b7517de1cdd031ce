"""x86_64 and i386: one module, two ABIs (as the kernel's arch/x86/kernel/uprobes.c)."""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from functools import cache
from typing import TYPE_CHECKING

from . import register
from .base import (
    Arch,
    Effects,
    Emulate,
    Finish,
    KernelSigaction,
    MappingSyscall,
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
from .jump import (
    Counter,
    HitFrame,
    JumpForm,
    NoJump,
    SiteJump,
    ThreadPointer,
    ThreadPointerSource,
    displaced_code,
    signed_fits,
    way_back_in,
)

if TYPE_CHECKING:
    import capstone

_GPR64 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp")
_LEGACY = ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp")
_LOW8 = ("al", "bl", "cl", "dl", "sil", "dil", "bpl", "spl")
_HIGH8 = {"ah": "ax", "bh": "bx", "ch": "cx", "dh": "dx"}


def _x86_64_spec_registers() -> dict[str, SpecRegister]:
    regs: dict[str, SpecRegister] = {}
    for full, legacy, low8 in zip(_GPR64, _LEGACY, _LOW8, strict=True):
        regs[full] = SpecRegister(full, 8)
        regs["e" + legacy] = SpecRegister(full, 4)
        regs[legacy] = SpecRegister(full, 2)
        regs[low8] = SpecRegister(full, 1)
    for high, legacy in _HIGH8.items():
        regs[high] = SpecRegister("r" + legacy, 1, shift=8)
    for n in range(8, 16):
        full = f"r{n}"
        regs[full] = SpecRegister(full, 8)
        regs[full + "d"] = SpecRegister(full, 4)
        regs[full + "w"] = SpecRegister(full, 2)
        regs[full + "b"] = SpecRegister(full, 1)
        regs[full + "l"] = SpecRegister(full, 1)  # Intel's spelling of r8b
    regs["rip"] = SpecRegister("rip", 8)
    return regs


def _i386_spec_registers() -> dict[str, SpecRegister]:
    regs: dict[str, SpecRegister] = {}
    for legacy, low8 in zip(_LEGACY, _LOW8, strict=True):
        full = "e" + legacy
        regs[full] = SpecRegister(full, 4)
        regs[legacy] = SpecRegister(full, 2)
        if legacy in ("ax", "bx", "cx", "dx"):
            regs[low8] = SpecRegister(full, 1)
    for high, legacy in _HIGH8.items():
        regs[high] = SpecRegister("e" + legacy, 1, shift=8)
    regs["eip"] = SpecRegister("eip", 4)
    return regs


# NT_PRSTATUS layouts: x86_64's struct user_regs_struct, and i386's 17-word
# struct user_regs_struct (arch/x86/include/asm/user_{64,32}.h), which GETREGSET
# returns for a 32-bit task whatever the tracer's own width.
_X86_64_REGSET = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
    "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss",
    "fs_base", "gs_base", "ds", "es", "fs", "gs",
)  # fmt: skip
_I386_REGSET = (
    "ebx", "ecx", "edx", "esi", "edi", "ebp", "eax", "ds", "es", "fs", "gs",
    "orig_eax", "eip", "cs", "eflags", "esp", "ss",
)  # fmt: skip

# Where a signal handler finds each register: struct ucontext's uc_mcontext (a struct
# sigcontext) after uc_flags, uc_link and uc_stack (arch/x86/include/uapi/asm/sigcontext.h:
# sigcontext_64 and sigcontext_32, whose sp is what sigreturn restores).
_X86_64_UCONTEXT = {name: 40 + 8 * i for i, name in enumerate(
    ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rdi", "rsi", "rbp", "rbx", "rdx",
     "rax", "rcx", "rsp", "rip", "eflags"))}
_UC_FP_XSTATE, _UC_SIGCONTEXT_SS, _UC_STRICT_RESTORE_SS = 0x1, 0x2, 0x4
_X86_64_UC_SEGMENTS = 184
"""cs, gs, fs and ss (16-bit each) after eflags in sigcontext_64; then err, trapno, oldmask,
cr2, fpstate (at 224), 8 reserved words, and uc_sigmask at 296."""
_X86_64_UC_FPSTATE, _X86_64_UC_SIGMASK, _X86_64_UC_SIZE = 224, 296, 304
_SS_NO_CHANGE = 4
"""A uc_stack.ss_flags sigaltstack refuses (EINVAL), which rt_sigreturn ignores: the
thread's alternate stack stays as it is (uemu cannot read it)."""


def _x86_64_ucontext(regs: Mapping[str, int], blocked: int, fpstate: int) -> bytes:
    """struct ucontext, the x86-64 rt_sigframe after its pretcode (uapi asm/ucontext.h,
    asm/sigcontext.h; its siginfo follows, which rt_sigreturn does not read)."""
    out = bytearray(_X86_64_UC_SIZE)
    struct.pack_into("<Q", out, 0, _UC_FP_XSTATE | _UC_SIGCONTEXT_SS | _UC_STRICT_RESTORE_SS)
    struct.pack_into("<i", out, 24, _SS_NO_CHANGE)
    for name, offset in _X86_64_UCONTEXT.items():
        struct.pack_into("<Q", out, offset, regs[name] & (1 << 64) - 1)
    struct.pack_into("<HHHH", out, _X86_64_UC_SEGMENTS, regs["cs"], regs["gs"], regs["fs"], regs["ss"])
    struct.pack_into("<QQ", out, _X86_64_UC_FPSTATE, fpstate, 0)
    struct.pack_into("<Q", out, _X86_64_UC_SIGMASK, blocked)
    return bytes(out)


_FP_XSTATE_MAGIC1, _FP_XSTATE_MAGIC2 = 0x46505853, 0x46505845
_SW_BYTES = 464
"""struct _fpx_sw_bytes in the legacy area's software-reserved bytes: where ptrace's
NT_X86_XSTATE puts XCR0 (gdb's I386_LINUX_XSAVE_XCR0_OFFSET) and a signal frame its marks."""
_NT_PRFPREG, _NT_X86_XSTATE = 2, 0x202


def _x86_frame_xstate(xstate: bytes) -> bytes:
    """ptrace's XSAVE image as a signal frame holds it: magic1, sizes and the features
    (XCR0) in the software bytes, magic2 after it (Kernel: check_xstate_in_sigframe();
    without them rt_sigreturn restores x87/SSE only and resets the rest, PKRU included)."""
    (xcr0,) = struct.unpack_from("<Q", xstate, _SW_BYTES)
    out = bytearray(xstate)
    struct.pack_into("<IIQI", out, _SW_BYTES, _FP_XSTATE_MAGIC1, len(xstate) + 4, xcr0, len(xstate))
    return bytes(out) + struct.pack("<I", _FP_XSTATE_MAGIC2)


def _x86_frame(top: int, fpstate: bytes, head: int, size: int,
               build: Callable[[int, int], bytes]) -> tuple[int, bytes]:
    """A frame below ``top`` as get_sigframe() and fpu__alloc_mathframe() lay it out: the
    state at the top, its XSAVE image (after ``head`` bytes) 64-byte aligned, below it
    the 16-byte aligned ``size`` bytes ``build(their address, the state's)``."""
    fpstate_at = ((top - len(fpstate) + head) & ~63) - head
    at = (fpstate_at - size) & ~15
    return at, build(at, fpstate_at).ljust(fpstate_at - at, b"\0") + fpstate


def _x86_64_frame(regs: Mapping[str, int], blocked: int, images: Sequence[bytes], top: int) -> tuple[int, bytes]:
    (xstate,) = images
    return _x86_frame(top, _x86_frame_xstate(xstate), 0, _X86_64_UC_SIZE,
                      lambda _at, fpstate_at: _x86_64_ucontext(regs, blocked, fpstate_at))


_X86_64_WAY_BACK = SigreturnWayBack(
    gadget=b"\x0f\x05\xc3",  # syscall; ret
    restorer=b"\x48\xc7\xc0\x0f\x00\x00\x00\x0f\x05",  # mov $15, %rax; syscall (glibc's __restore_rt)
    fpstate_notes=(_NT_X86_XSTATE,),
    frame=_x86_64_frame,
)

_I386_UCONTEXT = {name: 20 + 4 * i for i, name in enumerate(
    ("gs", "fs", "es", "ds", "edi", "esi", "ebp", "esp", "ebx", "edx", "ecx", "eax", "trapno", "err",
     "eip", "cs", "eflags")) if name not in ("trapno", "err")}
_I386_UC_SP_AT_SIGNAL, _I386_UC_FPSTATE, _I386_UC_SIGMASK = 88, 96, 108
"""After eflags in sigcontext_32: sp_at_signal, then ss; fpstate, then oldmask and cr2;
then uc_sigmask."""
_I386_UC_SIZE = 116
_I386_FRAME_UC = 12 + 128
"""struct rt_sigframe_ia32 after its pretcode: sig, pinfo, puc, a compat_siginfo_t, then uc."""
_FSAVE_HEADER = 112
"""struct fregs_state: the legacy FSAVE image (ptrace's NT_PRFPREG, user_i387_ia32_struct),
then the status word and the magic (0: FXSR state follows) of struct _fpstate_32."""


def _i386_sigframe(regs: Mapping[str, int], blocked: int, at: int, fpstate: int) -> bytes:
    """struct rt_sigframe_ia32 after its pretcode (arch/x86/include/asm/sigframe.h): no
    signal, pinfo and puc pointing at its zero siginfo and its ucontext (what a debugger
    unwinding through __kernel_rt_sigreturn reads), the ucontext as the kernel's
    ia32_setup_rt_frame() writes it.  Kernel: compat rt_sigreturn reads uc only."""
    out = bytearray(_I386_FRAME_UC + _I386_UC_SIZE)
    struct.pack_into("<iII", out, 0, 0, at + 12, at + _I386_FRAME_UC)
    uc = _I386_FRAME_UC
    struct.pack_into("<I", out, uc, _UC_FP_XSTATE)
    struct.pack_into("<i", out, uc + 12, _SS_NO_CHANGE)
    for name, offset in _I386_UCONTEXT.items():
        struct.pack_into("<I", out, uc + offset, regs[name] & 0xFFFFFFFF)
    struct.pack_into("<II", out, uc + _I386_UC_SP_AT_SIGNAL, regs["esp"] & 0xFFFFFFFF, regs["ss"] & 0xFFFF)
    struct.pack_into("<II", out, uc + _I386_UC_FPSTATE, fpstate, blocked & 0xFFFFFFFF)  # oldmask: the low word
    struct.pack_into("<Q", out, uc + _I386_UC_SIGMASK, blocked)
    return bytes(out)


def _i386_frame(regs: Mapping[str, int], blocked: int, images: Sequence[bytes], top: int) -> tuple[int, bytes]:
    """The state is the legacy FSAVE image, its status word and the FXSR magic (0), then
    the XSAVE image as on x86_64.  Kernel: save_fsave_header(); rt_sigreturn's
    __fpu_restore_sig() takes the x87 registers from the legacy image (convert_to_fxsr()),
    the rest from the XSAVE one.  NT_PRFPREG is the kernel's own convert_from_fxsr()."""
    fsave, xstate = images
    (swd,) = struct.unpack_from("<H", xstate, 2)
    fpstate = fsave.ljust(_FSAVE_HEADER - 4, b"\0") + struct.pack("<HH", swd, 0) + _x86_frame_xstate(xstate)
    return _x86_frame(top, fpstate, _FSAVE_HEADER, _I386_FRAME_UC + _I386_UC_SIZE,
                      lambda at, fpstate_at: _i386_sigframe(regs, blocked, at, fpstate_at))


_I386_WAY_BACK = SigreturnWayBack(
    gadget=b"\xcd\x80\x5d\x5a\x59\xc3",  # int $0x80; pop %ebp; pop %edx; pop %ecx; ret (__kernel_vsyscall)
    gadget_pops=3,
    restorer=b"\xb8\xad\x00\x00\x00\xcd\x80",  # mov $173, %eax; int $0x80 (__kernel_rt_sigreturn)
    fpstate_notes=(_NT_PRFPREG, _NT_X86_XSTATE),
    frame=_i386_frame,
)

# GCC keeps a DImode value in a pair of consecutive hard registers in its own
# order ax, dx, cx, bx, si, di, bp; the note names only the low one (-8@%ecx is
# ebx:ecx).
_I386_PAIR_HIGH = {"eax": "edx", "edx": "ecx", "ecx": "ebx", "ebx": "esi", "esi": "edi", "edi": "ebp"}

# Syscalls after which file mappings may have changed (arch/x86/entry/syscalls).
# brk and shmat only ever touch anonymous or shared memory, which never holds
# a probe VMA or a counter VMA.
_X86_64_MAPPING_SYSCALLS = {
    9: MappingSyscall.MMAP,
    10: MappingSyscall.MPROTECT,
    11: MappingSyscall.MUNMAP,
    25: MappingSyscall.MREMAP,
    216: MappingSyscall.REMAP_FILE_PAGES,
    329: MappingSyscall.MPROTECT,  # pkey_mprotect
}
_I386_MAPPING_SYSCALLS = {
    90: MappingSyscall.OLD_MMAP,  # arguments in a struct in memory
    91: MappingSyscall.MUNMAP,
    125: MappingSyscall.MPROTECT,
    163: MappingSyscall.MREMAP,
    192: MappingSyscall.MMAP,  # mmap2
    257: MappingSyscall.REMAP_FILE_PAGES,
    380: MappingSyscall.MPROTECT,  # pkey_mprotect
}


# ===========================================================================
# The instruction backend.  Kernel: arch/x86/kernel/uprobes.c (v6.x), the
# functions named in each docstring.  Pure: registers in, effects out.
# ===========================================================================

_CF, _PF, _ZF, _SF, _OF = 0x1, 0x4, 0x40, 0x80, 0x800
_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1
_X86_64_SPEC_REGISTERS = frozen_map(_x86_64_spec_registers())

# Register numbers as ModRM, REX and the push opcodes encode them.
_ENCODING_ORDER = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di")
_NUMBERED_64 = tuple("r" + name for name in _ENCODING_ORDER) + tuple(f"r{n}" for n in range(8, 16))
_NUMBERED_32 = tuple("e" + name for name in _ENCODING_ORDER)

# Scratch registers for rip-relative operands, in the kernel's order (riprel_analyze():
# "must not select bx if we can use si", because cmpxchg8b uses bx implicitly).
_SCRATCH_CANDIDATES = (("rsi", 6), ("rdi", 7), ("rbx", 3))

_LEGACY_PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3})
# is_prefix_bad(): segment overrides other than fs/gs, and lock.
_BAD_PREFIXES = {0x26: "es segment prefix", 0x2E: "cs segment prefix", 0x36: "ss segment prefix",
                 0x3E: "ds segment prefix", 0xF0: "lock prefix"}

# Bytes that fault or trap in user space whatever the mode (good_insns_64/32 comments).
_USER_FAULTING: tuple[tuple[str, frozenset[int]], ...] = (
    ("ins/outs, SIGSEGV in user space", frozenset(range(0x6C, 0x70))),
    ("in/out, SIGSEGV in user space", frozenset({*range(0xE4, 0xE8), *range(0xEC, 0xF0)})),
    ("int3, SIGTRAP in user space", frozenset({0xCC})),
    ("int N, its single-step handling is fragile", frozenset({0xCD})),
    ("iret", frozenset({0xCF})),
    ("int1, SIGTRAP in user space", frozenset({0xF1})),
    ("hlt, SIGSEGV in user space", frozenset({0xF4})),
    ("cli/sti, SIGSEGV in user space", frozenset({0xFA, 0xFB})),
)
# First opcode bytes the kernel refuses in 64-bit tasks: the complement of good_insns_64.
_NOT_GOOD_64: tuple[tuple[str, frozenset[int]], ...] = (
    ("invalid in 64-bit mode (formerly push/pop es, cs, ss, ds)",
     frozenset({0x06, 0x07, 0x0E, 0x16, 0x17, 0x1E, 0x1F})),
    ("invalid in 64-bit mode (formerly daa, das, aaa, aas)", frozenset({0x27, 0x2F, 0x37, 0x3F})),
    ("invalid in 64-bit mode (formerly pusha, popa, bound)", frozenset({0x60, 0x61, 0x62})),
    ("invalid in 64-bit mode (formerly a copy of group 1)", frozenset({0x82})),
    ("invalid in 64-bit mode (formerly call far, jmp far)", frozenset({0x9A, 0xEA})),
    ("invalid in 64-bit mode (formerly into, aam, aad, salc)", frozenset({0xCE, 0xD4, 0xD5, 0xD6})),
    *_USER_FAULTING,
)
# The same for 32-bit tasks: the complement of good_insns_32.
_NOT_GOOD_32: tuple[tuple[str, frozenset[int]], ...] = (
    ("pop es/ss/ds, may load a bad segment", frozenset({0x07, 0x17, 0x1F})),
    ("into", frozenset({0xCE})),
    *_USER_FAULTING,
)
GOOD_INSNS_64 = frozenset(range(256)).difference(*(group for _, group in _NOT_GOOD_64))
GOOD_INSNS_32 = frozenset(range(256)).difference(*(group for _, group in _NOT_GOOD_32))
# The 0x0f escape: the kernel's good_2byte_insns table lists 0f 00 01 05 (syscall) 06 07 08 09
# 0b (ud2) 30 34 35 37 78 79 ae as bad, but 0x0f itself is marked good in both one-byte tables,
# so uprobe_init_insn() accepts every two- and three-byte opcode before it reaches that table.
# Checked on Linux 6.18 through tracefs: uprobes on syscall, sysenter, ud2, rdmsr and wrmsr
# are accepted.  We mirror what the kernel does, not the table it never consults.

# Groups capstone puts control transfers in; such instructions never end in a jmp back.
_LEAVES_SLOT_GROUPS = frozenset({"jump", "call", "ret", "iret", "int", "branch_relative"})


@dataclass(frozen=True)
class _Encoding:
    """Where the parts of one instruction are, as the kernel's insn decoder splits it."""

    prefixes: bytes
    """Legacy prefix bytes, in order."""
    rex_offset: int | None
    """Offset of the REX prefix that applies (64-bit mode), if any."""
    vex_offset: int | None
    """Offset of a three-byte VEX, XOP or EVEX prefix (they share the inverted B bit); None for VEX2."""
    vvvv: int | None
    """VEX/XOP/EVEX register operand number, if the instruction has such a prefix."""
    opcode_offset: int
    """Offset of the kernel's OPCODE1: the byte after every prefix, VEX/EVEX included."""
    legacy_map: bool
    """Whether OPCODE1 is a legacy-map byte (not the opcode after a VEX/XOP/EVEX prefix)."""


def _prefixes_end(code: bytes, mode64: bool) -> int:
    """Where the legacy and REX prefixes ``code`` starts with end (``len(code)`` when
    they never do)."""
    at = 0
    while at < len(code) and (code[at] in _LEGACY_PREFIXES or (mode64 and 0x40 <= code[at] <= 0x4F)):
        at += 1
    return at


def _scan_encoding(code: bytes, mode64: bool) -> _Encoding:
    """Split the prefixes off an instruction capstone has already decoded."""
    at = _prefixes_end(code, mode64)
    # A REX applies only right before the opcode; a legacy prefix after it cancels it.
    rex_offset = at - 1 if at and 0x40 <= code[at - 1] <= 0x4F else None
    prefixes = bytes(byte for byte in code[:at] if byte in _LEGACY_PREFIXES)
    first, second = code[at], code[at + 1 : at + 2]
    # In 32-bit mode c4/c5/62 are les/lds/bound unless the next byte looks like ModRM mod=11;
    # 8f is XOP only when its map field is 8 or more (else pop r/m).
    escape = mode64 or second >= b"\xc0"
    if first == 0xC5 and escape:
        return _Encoding(prefixes, rex_offset, None, (~code[at + 1] >> 3) & 0xF, at + 2, False)
    if (first == 0xC4 and escape) or (first == 0x8F and second and (second[0] & 0x1F) >= 8):
        return _Encoding(prefixes, rex_offset, at, (~code[at + 2] >> 3) & 0xF, at + 3, False)
    if first == 0x62 and escape:
        return _Encoding(prefixes, rex_offset, at, (~code[at + 2] >> 3) & 0xF, at + 4, False)
    return _Encoding(prefixes, rex_offset, None, None, at, True)


NOP = b"\x90"
"""The SDT site's usual instruction: known without capstone, whose import (about 30 ms)
a run whose every site is one then never pays."""


@cache
def _capstone(mode64: bool) -> capstone.Cs:
    """A detail-mode capstone decoder, imported on first use: listing probes never pays for it."""
    import capstone

    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if mode64 else capstone.CS_MODE_32)
    decoder.detail = True
    return decoder


class Fixup(Enum):
    """What ``finish_xol`` does after the step (the kernel's UPROBE_FIX_IP / UPROBE_FIX_CALL)."""

    IP = "ip"
    """ip += vaddr - slot: the instruction went on relative to the slot."""
    CALL = "call"
    """Indirect or far call: the pushed return address becomes vaddr + size; ip is right."""
    NONE = "none"
    """ret, lret, indirect and far jmp: ip is already where the instruction sent it."""
    RESTART = "restart"
    """A stand-in for an emulated call whose push failed: it pushed where the call would,
    so the stack now has room (the kernel grew it); undo its push and run the site again
    (the kernel's branch_post_xol_op())."""


@dataclass(frozen=True, kw_only=True)
class X86Jump(Emulate):
    """nop, endbr and jmp rel: a jump the tracer makes itself (a nop jumps by 0).

    Kernel: branch_xol_ops; "same as jmp with .offs = 0" for nops.
    """

    effects: Effects


@dataclass(frozen=True, kw_only=True)
class X86CondJump(Emulate):
    """jcc rel8/rel32: one of two precomputed outcomes, chosen from eflags (check_jmp_cond())."""

    condition: int
    """Low nibble of the short opcode 0x70-0x7f."""
    taken: Effects
    not_taken: Effects


@dataclass(frozen=True, kw_only=True)
class X86Call(Emulate):
    """call rel32: push the return address, jump (branch_emulate_op())."""

    target: int
    return_address: bytes
    """vaddr + size, packed as the stack word."""


@dataclass(frozen=True, kw_only=True)
class X86Push(Emulate):
    """push reg, 50-57 and 41 50-57 (push_emulate_op())."""

    register: str


@dataclass(frozen=True)
class RipRelative:
    """A rip-relative memory operand and its two ways to reach it from a slot (riprel_analyze())."""

    disp_offset: int
    """Offset of the disp32 in the instruction."""
    target: int
    """The operand's address: vaddr + size + disp32."""
    scratch: str
    """Register that holds vaddr + size during the step when the slot is out of disp32 reach."""
    scratch_code: bytes
    """The instruction addressing ``disp32(scratch)`` instead of ``disp32(%rip)``."""


@dataclass(frozen=True, kw_only=True)
class X86Step(StepOutOfLine):
    """An instruction copied to a slot (the kernel's default_xol_ops with its fixups)."""

    code: bytes
    fixup: Fixup
    one_stop: bool
    """Whether nothing but ip needs fixing, so the slot may jump back itself."""
    riprel: RipRelative | None
    return_address: bytes
    """vaddr + size packed as a stack word, for ``Fixup.CALL``."""


_NO_EFFECTS = Effects()
_NO_REGS: Mapping[str, int] = frozen_map({})
_INT32 = range(-(1 << 31), 1 << 31)
_FLAG_TESTS = (_OF, _CF, _ZF, _CF | _ZF, _SF, _PF)
"""jo, jb, je, jbe, js, jp: taken when any of these flags is set."""


class X86Backend:
    """x86_64 or i386 instructions behind the Backend protocol of arch/base.py."""

    max_insn_len = 16
    slot_size = 128

    def __init__(self, mode64: bool):
        self.mode64 = mode64
        self.word = 8 if mode64 else 4
        self.mask = _MASK64 if mode64 else _MASK32
        self.ip_reg, self.sp_reg = ("rip", "rsp") if mode64 else ("eip", "esp")
        self.numbered = _NUMBERED_64 if mode64 else _NUMBERED_32
        self.not_good = _NOT_GOOD_64 if mode64 else _NOT_GOOD_32

    # -- traps --------------------------------------------------------------

    def trap_bytes(self, original: bytes) -> bytes:
        """int3, and over an instruction of two bytes or more a second int3 one byte in.

        Differs: the kernel writes one int3.  The second is never run while uemu lives:
        the instruction's bytes after the first are not executed in place.  But the
        kernel drops the SIGTRAP of a thread whose tracer dies while it is stopped at
        the first, and resumes it one byte in, inside the instruction; the second int3
        brings that thread to the in-target runtime, which puts it back at the site.
        """
        return b"\xcc\xcc" if self._length(original) >= 2 else b"\xcc"

    def _length(self, code: bytes) -> int:
        """The length of the instruction ``code`` starts with (1 when undecodable)."""
        if code[:1] == NOP:
            return 1
        return next((insn.size for insn in _capstone(self.mode64).disasm(code, 0, 1)), 1)

    def is_trap(self, code: bytes) -> bool:
        """int3 only, as the kernel's is_trap_insn() (= is_swbp_insn() on x86).

        ``cd 03`` (int $3) also raises #BP, but it is two bytes long: the trap leaves ip after
        it, so ``trap_address`` (ip - 1) names its second byte, where no trap can be recognised.
        The kernel has the same blind spot.
        """
        return code[:1] == b"\xcc"

    def trap_address(self, ip: int) -> int:
        return ip - 1

    # -- analysis (arch_uprobe_analyze_insn) --------------------------------

    def analyze(self, code: bytes, vaddr: int) -> Plan:
        """Decide once what a hit at ``vaddr`` does.

        The plan holds absolute addresses computed from ``vaddr``: analyse at the address the
        site has in the traced process.
        """
        if code[:1] == NOP:  # the plan capstone's decoding would give
            return X86Jump(vaddr=vaddr, size=1, text="nop", effects=self._goto((vaddr + 1) & self.mask))
        insn = next(_capstone(self.mode64).disasm(code[: self.max_insn_len], vaddr, 1), None)
        if insn is None:
            return Refuse(vaddr=vaddr, size=0, text="(bad)",
                          reason="cannot decode the instruction (uprobes: ENOEXEC)")
        code = bytes(insn.bytes)
        text = f"{insn.mnemonic} {insn.op_str}".rstrip()
        encoding = _scan_encoding(code, self.mode64)
        reason = self._refusal(insn, code, encoding)
        if reason:
            return Refuse(vaddr=vaddr, size=insn.size, text=text,
                          reason=f"not supported by uprobes: {reason}")
        return (self._branch_plan(code, encoding, vaddr, text, insn.modrm)
                or self._push_plan(code, encoding, vaddr, text)
                or self._step_plan(insn, code, encoding, vaddr, text))

    def _refusal(self, insn: capstone.CsInsn, code: bytes, encoding: _Encoding) -> str:
        """Why uprobe_init_insn() refuses the instruction, or "" (kernel order of checks)."""
        for prefix in encoding.prefixes:
            if prefix in _BAD_PREFIXES:
                return _BAD_PREFIXES[prefix]
        opcode1 = code[encoding.opcode_offset]
        # insn_masking_exception(): no single-step trap follows mov/pop %ss.  (The kernel's
        # POP_SS_OPCODE is 0x1f, pop %ds; pop %ss, 0x17, is refused by the tables anyway.)
        if encoding.legacy_map and (opcode1 == 0x17 or (opcode1 == 0x8E and (insn.modrm >> 3) & 7 == 2)):
            return "mov/pop %ss masks the single-step trap"
        # The tables are indexed by the kernel decoder's first opcode byte, which for VEX/EVEX
        # instructions is the byte after the prefix: vpxor (c5 .. ef) is refused as if it were
        # "out" (checked on Linux 6.18).
        where = "" if encoding.legacy_map else " after a VEX/EVEX prefix, read as a one-byte opcode"
        for why, group in self.not_good:
            if opcode1 in group:
                return f"opcode {opcode1:#04x}{where} ({why})"
        return ""

    def _branch_plan(self, code: bytes, encoding: _Encoding, vaddr: int, text: str, modrm: int) -> Plan | None:
        """nops, jmp, jcc and call rel (branch_setup_xol_ops())."""
        size = len(code)
        next_ip = (vaddr + size) & self.mask
        if _is_nop(code, encoding, modrm):
            return X86Jump(vaddr=vaddr, size=size, text=text, effects=self._goto(next_ip))
        if not encoding.legacy_map:
            return None
        opcode = code[encoding.opcode_offset:]
        if opcode[0] in (0xEB, 0xE9, 0xE8) or 0x70 <= opcode[0] <= 0x7F:
            condition = opcode[0] & 0xF if opcode[0] <= 0x7F else None
        elif opcode[0] == 0x0F and 0x80 <= opcode[1] <= 0x8F:
            condition = opcode[1] & 0xF
        else:
            return None
        # "16-bit overrides such as CALLW (66 e8 nn nn) are not supported."
        if 0x66 in encoding.prefixes:
            return Refuse(vaddr=vaddr, size=size, text=text,
                          reason="not supported by uprobes: branch with a 0x66 prefix")
        width = 1 if opcode[0] == 0xEB or 0x70 <= opcode[0] <= 0x7F else 4
        target = (next_ip + int.from_bytes(code[size - width:], "little", signed=True)) & self.mask
        if opcode[0] == 0xE8:
            return X86Call(vaddr=vaddr, size=size, text=text, target=target,
                           return_address=next_ip.to_bytes(self.word, "little"))
        if condition is None:
            return X86Jump(vaddr=vaddr, size=size, text=text, effects=self._goto(target))
        return X86CondJump(vaddr=vaddr, size=size, text=text, condition=condition,
                           taken=self._goto(target), not_taken=self._goto(next_ip))

    def _push_plan(self, code: bytes, encoding: _Encoding, vaddr: int, text: str) -> Plan | None:
        """push reg (push_setup_xol_ops()): one byte, or 41 50-57 for r8-r15; other prefixes step."""
        opcode = code[encoding.opcode_offset]
        if not encoding.legacy_map or not 0x50 <= opcode <= 0x57:
            return None
        if len(code) == 1:
            register = self.numbered[opcode & 7]
        elif len(code) == 2 and self.mode64 and code[0] == 0x41:
            register = self.numbered[8 + (opcode & 7)]
        else:
            return None
        return X86Push(vaddr=vaddr, size=len(code), text=text, register=register)

    def _step_plan(self, insn: capstone.CsInsn, code: bytes, encoding: _Encoding, vaddr: int,
                   text: str) -> Plan:
        """Everything else runs in a slot (default_xol_ops and its fixup flags)."""
        fixup = Fixup.IP
        opcode = code[encoding.opcode_offset]
        # The kernel picks these by OPCODE1 alone, so a VEX instruction with opcode byte c2
        # (vcmpps) gets no ip fixup and runs off the end of the slot: on Linux 6.18 a uprobe
        # on vcmpeqps kills the process with SIGSEGV.  We look at the legacy map only.
        if encoding.legacy_map:
            reg_field = (insn.modrm >> 3) & 7
            if opcode in (0xC3, 0xCB, 0xC2, 0xCA, 0xEA) or (opcode == 0xFF and reg_field in (4, 5)):
                fixup = Fixup.NONE
            elif opcode == 0x9A or (opcode == 0xFF and reg_field in (2, 3)):
                fixup = Fixup.CALL
        groups = {insn.group_name(group) for group in insn.groups}
        # popf may set TF: let it act under ptrace's own single-step handling (which keeps a TF
        # that popf loads, arch/x86/kernel/step.c) rather than trap inside a slot we jump from.
        one_stop = fixup is Fixup.IP and opcode != 0x9D and not groups & _LEAVES_SLOT_GROUPS
        riprel = None
        if self.mode64 and insn.modrm_offset and (insn.modrm & 0xC7) == 0x05:
            riprel = _rip_relative(insn, code, encoding, vaddr)
            if riprel is None:
                return Refuse(vaddr=vaddr, size=len(code), text=text,
                              reason="not supported by uemu: rip-relative and uses rsi, rdi and rbx")
        next_ip = (vaddr + len(code)) & self.mask
        return X86Step(vaddr=vaddr, size=len(code), text=text, code=code, fixup=fixup,
                       one_stop=one_stop, riprel=riprel, syscall="int" in groups,
                       return_address=next_ip.to_bytes(self.word, "little"))

    def _goto(self, address: int) -> Effects:
        return Effects(regs=frozen_map({self.ip_reg: address}))

    # -- per hit: emulation (arch_uprobe_skip_sstep) -------------------------

    def emulate(self, plan: Emulate, regs: Regs) -> Effects:
        """The plan's outcome from the registers at the site.

        call and push write the stack: a tracer that writes memory before it sets registers
        leaves them alone when that write faults, as the kernel's emulate_push_stack() does.
        """
        if isinstance(plan, X86Jump):
            return plan.effects
        if isinstance(plan, X86CondJump):
            return plan.taken if self.condition_holds(plan.condition, regs["eflags"]) else plan.not_taken
        sp = (regs[self.sp_reg] - self.word) & self.mask
        if isinstance(plan, X86Call):
            return Effects(regs={self.ip_reg: plan.target, self.sp_reg: sp},
                           writes=((sp, plan.return_address),))
        assert isinstance(plan, X86Push)
        value = regs[plan.register] & self.mask
        return Effects(regs={self.ip_reg: (plan.vaddr + plan.size) & self.mask, self.sp_reg: sp},
                       writes=((sp, value.to_bytes(self.word, "little")),))

    @staticmethod
    def condition_holds(condition: int, flags: int) -> bool:
        """Whether jcc with this condition nibble jumps, given eflags (check_jmp_cond())."""
        test = condition >> 1
        if test < len(_FLAG_TESTS):
            taken = (flags & _FLAG_TESTS[test]) != 0
        else:  # jl: SF != OF; jle: ZF or SF != OF
            taken = ((flags & _SF) != 0) != ((flags & _OF) != 0)
            if test == 7:
                taken = taken or (flags & _ZF) != 0
        return taken != bool(condition & 1)

    # -- per hit: out-of-line step (arch_uprobe_pre_xol / post_xol / abort_xol) ----

    def prepare_xol(self, plan: StepOutOfLine, slot_vaddr: int, regs: Regs) -> XolSetup:
        """Slot bytes and registers; one stop ("jump") whenever only ip would need fixing.

        A rip-relative operand is re-aimed by rewriting its disp32 when the slot is within
        reach of the target, else through the scratch register (kernel method), loaded with
        vaddr + size and listed in ``restore``.
        """
        assert isinstance(plan, X86Step)
        code = plan.code
        slot_regs = {self.ip_reg: slot_vaddr}
        riprel = plan.riprel
        if riprel is not None:
            disp = riprel.target - (slot_vaddr + plan.size)
            if disp not in _INT32:
                slot_regs[riprel.scratch] = plan.vaddr + plan.size
                return XolSetup(riprel.scratch_code, slot_regs, StepEnd.STEP,
                                restore={riprel.scratch: regs[riprel.scratch]})
            start = riprel.disp_offset
            code = code[:start] + disp.to_bytes(4, "little", signed=True) + code[start + 4:]
        if plan.one_stop:
            back = plan.vaddr - slot_vaddr - 5  # (vaddr + size) - (slot + size + len(jmp rel32))
            if not self.mode64:
                back = (back + (1 << 31) & _MASK32) - (1 << 31)  # rel32 wraps in 32-bit mode
            if back in _INT32:
                return XolSetup(code + b"\xe9" + back.to_bytes(4, "little", signed=True),
                                slot_regs, StepEnd.JUMP, restore=_NO_REGS)
        return XolSetup(code, slot_regs, StepEnd.STEP, restore=_NO_REGS)

    def finish_xol(self, plan: StepOutOfLine, slot_vaddr: int, regs: Regs) -> Effects:
        """default_post_xol_op(): ip back near the site, or the call's return address fixed.

        The scratch register comes back from ``XolSetup.restore``, applied by the caller.
        TF needs no care: ptrace's single-step sets and clears its own.
        """
        assert isinstance(plan, X86Step)
        if plan.fixup is Fixup.IP:
            return Effects(regs={self.ip_reg: (regs[self.ip_reg] + plan.vaddr - slot_vaddr) & self.mask})
        if plan.fixup is Fixup.CALL:
            return Effects(writes=((regs[self.sp_reg], plan.return_address),))
        if plan.fixup is Fixup.RESTART:
            return Effects(regs={self.ip_reg: plan.vaddr, self.sp_reg: (regs[self.sp_reg] + self.word) & self.mask})
        return _NO_EFFECTS

    def finish_kind(self, plan: StepOutOfLine) -> Finish:
        """Fixup.IP -> IP, CALL -> CALL, NONE -> nothing.  Differs: a stand-in call's
        RESTART (sp back, ip to the site) has no runtime flag; IP lets a thread left in
        its slot go on past the site, the pushed word still on its stack."""
        assert isinstance(plan, X86Step)
        return {Fixup.IP: Finish.IP, Fixup.CALL: Finish.CALL, Fixup.NONE: Finish(0), Fixup.RESTART: Finish.IP}[
            plan.fixup]

    def step_instead(self, plan: Emulate) -> StepOutOfLine | None:
        """What to step out of line when emulating ``plan`` could not write the stack.

        Kernel: branch_emulate_op() and push_emulate_op() fail when the push faults, and
        the instruction is single-stepped instead, so the CPU raises the fault the
        program would get (SIGSEGV at the site, after abort_xol) or the kernel grows the
        stack.  ``push reg`` steps itself; ``call rel32`` steps ``call .+5`` (pushes as
        the call would, lands back in the slot), then restarts at the site.
        """
        if isinstance(plan, X86Push):
            number = self.numbered.index(plan.register)
            code = (b"\x41" if number >= 8 else b"") + bytes([0x50 + (number & 7)])
            fixup = Fixup.IP
        elif isinstance(plan, X86Call):
            code, fixup = b"\xe8\x00\x00\x00\x00", Fixup.RESTART
        else:
            return None
        next_ip = (plan.vaddr + plan.size) & self.mask
        return X86Step(vaddr=plan.vaddr, size=len(code), text=f"{plan.text} (its push stepped)", code=code,
                       fixup=fixup, one_stop=False, riprel=None, return_address=next_ip.to_bytes(self.word, "little"))

    def abort_xol(self, plan: StepOutOfLine, slot_vaddr: int, regs: Regs) -> Effects:
        """ip back to the site so the signal names it (arch_uprobe_abort_xol()); the scratch
        register comes back from ``XolSetup.restore``."""
        return Effects(regs={self.ip_reg: plan.vaddr})


def _is_nop(code: bytes, encoding: _Encoding, modrm: int) -> bool:
    """nop in all its forms: 90 with prefixes (pause too), 0f 1f /0, endbr64/endbr32.

    Differs: the kernel emulates any prefixed 0x90 as a nop, but with REX.B it is
    ``xchg r8, rax`` (41 90); that one steps out of line here.
    """
    if not encoding.legacy_map:
        return False
    opcode = code[encoding.opcode_offset:]
    if opcode[0] == 0x90:
        return encoding.rex_offset is None or not code[encoding.rex_offset] & 1
    if opcode[:2] == b"\x0f\x1f":
        return (modrm >> 3) & 7 == 0
    return code in (b"\xf3\x0f\x1e\xfa", b"\xf3\x0f\x1e\xfb")


def _rip_relative(insn: capstone.CsInsn, code: bytes, encoding: _Encoding, vaddr: int) -> RipRelative | None:
    """The rip-relative operand, with the scratch register rewrite (riprel_analyze()).

    ModRM ``00 reg 101`` becomes ``10 reg scratch``: disp32(%rip) -> disp32(%scratch), same
    length.  The scratch register must be one the instruction does not touch: besides the
    kernel's ModRM.reg and VEX.vvvv test, every register capstone reports as read or written,
    in any width (sil, si, esi, rsi), is avoided.  None when all three are taken.
    """
    modrm_offset = insn.modrm_offset
    disp_offset = modrm_offset + 1
    disp = int.from_bytes(code[disp_offset:disp_offset + 4], "little", signed=True)
    used = {_NUMBERED_64[(insn.modrm >> 3) & 7]}
    if encoding.vvvv is not None:
        used.add(_NUMBERED_64[encoding.vvvv & 7])
    read, written = insn.regs_access()
    for reg_id in (*read, *written):
        spec = _X86_64_SPEC_REGISTERS.get(insn.reg_name(reg_id))
        if spec is not None:
            used.add(spec.canonical)
    scratch = next(((name, number) for name, number in _SCRATCH_CANDIDATES if name not in used), None)
    if scratch is None:
        return None
    patched = bytearray(code)
    if encoding.rex_offset is not None:
        patched[encoding.rex_offset] &= 0xFE  # REX.B would make the base r14, r15 or r11
    if encoding.vex_offset is not None:
        patched[encoding.vex_offset + 1] |= 0x60  # inverted VEX3/XOP .B (and EVEX .X, as the kernel)
    patched[modrm_offset] = 0x80 | (insn.modrm & 0x38) | scratch[1]
    target = (vaddr + len(code) + disp) & _MASK64
    return RipRelative(disp_offset=disp_offset, target=target, scratch=scratch[0],
                       scratch_code=bytes(patched))


# ===========================================================================
# The jump path (arch/jump.py).  Kernel: the nop5 optimisation of uprobes (Jiri Olsa,
# 2025) writes a 5-byte jump over a 5-byte nop with the int3-first protocol of
# text_poke_bp(); its trampoline moves below the red zone first.  Instruction punning:
# E9Patch (Duck et al., PLDI '20), after Chamith et al. (PLDI '17).
# ===========================================================================

JMP_REL32 = 5
_LEA_BELOW_RED_ZONE = bytes.fromhex("488d642480")  # lea -0x80(%rsp),%rsp
_LEA_BACK_64 = bytes.fromhex("488da42488000000")  # lea 0x88(%rsp),%rsp: the red zone and the index
_LEA_BACK_32 = bytes.fromhex("8d642404")  # lea 0x4(%esp),%esp: the index
_ANY_REGS: Mapping[str, int] = defaultdict(int)
"""prepare_xol's registers at the site: a slot that ends in a jump back reads none."""

HIT_FRAME_64 = HitFrame(
    slots=("r15", "r14", "r13", "r12", "r11", "r10", "r9", "r8", "rdi", "rsi", "rbp", "rbx", "rdx", "rcx",
           "rax", "eflags", "", ""),
    sp_offset=18 * 8 + 128)
"""uemu_hit_entry's pushes (pushfq, then rax ... r15), the return address and the index the
trampoline pushed after stepping 128 bytes below the site's rsp."""
HIT_FRAME_32 = HitFrame(slots=("edi", "esi", "ebp", "", "ebx", "edx", "ecx", "eax", "eflags", "", ""),
                        sp_offset=11 * 4)
"""pushfl and pushal (whose esp word is its own), the return address and the index."""


_FS_BASE = ThreadPointer(ThreadPointerSource.REGISTER, "fs_base", hwcap2=2)  # HWCAP2_FSGSBASE: rdfsbase
_GS_ENTRY = ThreadPointer(ThreadPointerSource.TLS_ENTRY, "gs")
"""glibc's TCB is the base of the %gs descriptor (it also holds it at %gs:0)."""
_TSC = Counter("tsc", insn_len=2, result_regs=("rax", "rdx"))
"""rdtsc (0f 31); PR_SET_TSC's PR_TSC_SIGSEGV makes it fault."""
_TSC_32 = Counter("tsc", insn_len=2, result_regs=("eax", "edx"))

_X86_64_BACKEND = X86Backend(mode64=True)
_I386_BACKEND = X86Backend(mode64=False)


class X86Jumps:
    """Jumps over x86 sites: ``jmp rel32`` where 5 bytes of one instruction (or the nop
    after an SDT nop) can take it, instruction punning over shorter ones."""

    trap_first = True

    def __init__(self, backend: X86Backend):
        self.backend = backend
        self.mode64 = backend.mode64
        self.user_top = 0x7FFF_FFFF_F000 if self.mode64 else 0xFFFF_E000
        """47-bit x86_64; a 32-bit task on a 64-bit kernel."""
        self.frame = HIT_FRAME_64 if self.mode64 else HIT_FRAME_32
        self.thread_pointer = _FS_BASE if self.mode64 else _GS_ENTRY
        self.counter: Counter | None = _TSC if self.mode64 else _TSC_32
        self.tramp_size = 96 if self.mode64 else 48
        self.head_size = 24 if self.mode64 else 14
        """Bytes before a trampoline's body: the red zone step, the push, the call, the lea."""
        self.space = 1 << (64 if self.mode64 else 32)

    def choose(self, plan: Plan, code: bytes) -> SiteJump | NoJump:
        """A 5-byte jump over an instruction of 5 bytes or more; over the nop that follows
        a 1-byte SDT nop (usdt.h's ``nop; nop10``: the jump goes at the second one, so no
        thread can be found between the two halves); else punning.  Only nops and
        instructions whose slot ends in a jump back can be left for the trampoline."""
        if isinstance(plan, Refuse):
            return NoJump(f"the instruction is refused: {plan.reason}")
        vaddr, size = plan.vaddr, plan.size
        nop = self._is_nop(plan)
        displaced = None
        if not nop:
            if not isinstance(plan, X86Step) or not plan.one_stop:
                return NoJump(f"{plan.text!r} cannot run in a trampoline (only nops and instructions "
                              "whose slot jumps back)")
            displaced = plan
        if size >= JMP_REL32:
            return self._jump(plan, vaddr, displaced, vaddr + size, f"jmp rel32 over {plan.text!r}")
        if nop and size == 1:
            after = self._nop_size(code[1:])
            if after >= JMP_REL32:
                return self._jump(plan, vaddr + 1, None, vaddr + 1 + after,
                                  f"jmp rel32 over the {after}-byte nop after the probe's nop")
        if len(code) < JMP_REL32:
            return NoJump("too few bytes to pun")
        target = (vaddr + JMP_REL32 + int.from_bytes(code[1:JMP_REL32], "little", signed=True)) % self.space
        return SiteJump(vaddr=vaddr, at=vaddr, length=1, form=JumpForm.PUN, displaced=displaced,
                        resume=vaddr + size, target=target, reach=self._reach(target),
                        why=f"pun over {plan.text!r}")

    def successor(self, site: SiteJump, code: bytes) -> SiteJump | None:
        """Of a 1-byte site: 5 bytes or more (the whole jump goes over it alone, so a
        branch to it still finds a whole instruction) whose slot ends in a jump back (a
        nop that long takes a whole jump itself: ``choose``), or a ``jmp rel32``, whose
        trampoline is a jump on to where it led (its "resume").  Decoding it costs about
        20 times a nop's decoding, hence only on demand."""
        at = site.vaddr + 1
        if site.form is not JumpForm.PUN or site.resume != at:
            return None
        if code[1:2] in (b"\xe9", b"\xe8") and len(code) >= 1 + JMP_REL32:
            led = (at + JMP_REL32 + int.from_bytes(code[2:6], "little", signed=True)) % self.space
            if code[1] == 0xE8:  # Kernel: branch_emulate_op() pushes the same return address
                return SiteJump(vaddr=at, at=at, length=JMP_REL32, form=JumpForm.JUMP, displaced=None, resume=led,
                                target=None, reach=self._reach(at), pushes=at + JMP_REL32,
                                why=f"'call {led:#x}' after it moved to a trampoline of its own, which pushes "
                                    "its return address and jumps there")
            return SiteJump(vaddr=at, at=at, length=JMP_REL32, form=JumpForm.JUMP, displaced=None, resume=led,
                            target=None, reach=self._reach(at),
                            why=f"'jmp {led:#x}' after it moved to a trampoline of its own, a jump on to there")
        plan = self.backend.analyze(code[1:], at)
        if not isinstance(plan, X86Step) or not plan.one_stop or len(code) < 1 + JMP_REL32:
            return None
        if plan.size < JMP_REL32:
            return self._punned_successor(plan, code[1 + plan.size:1 + JMP_REL32])
        return SiteJump(vaddr=at, at=at, length=JMP_REL32, form=JumpForm.JUMP, displaced=plan,
                        resume=at + plan.size, target=None, reach=self._reach(at),
                        why=f"{plan.text!r} after it moved to a trampoline of its own")

    def _punned_successor(self, plan: X86Step, following: bytes) -> SiteJump | None:
        """A successor of 2 to 4 bytes, punned in turn (E9Patch's T2 proper): ``0xE9`` and
        bytes of uemu's choice over it, the next instruction's bytes (``following``) the
        rest of its displacement, so that its jump may lead anywhere in a window of 256
        bytes to 16 MiB (its ``reach``), which must lie in user space.  A 1-byte successor
        leaves no byte to choose."""
        at, size = plan.vaddr, plan.size
        free_bits = 8 * (size - 1)
        if not free_bits:
            return None
        low = at + JMP_REL32 + self._signed(int.from_bytes(following, "little") << free_bits)
        if not self.mode64:
            low %= self.space
        high = low + (1 << free_bits)
        if low <= 0 or high > self.user_top:
            return None
        return SiteJump(vaddr=at, at=at, length=size, form=JumpForm.PUN, displaced=plan, resume=at + size,
                        target=None, reach=(low, high),
                        why=f"{plan.text!r} after it moved to a trampoline of its own, its jump a pun "
                            f"leading to [{low:#x}, {high:#x})")

    def evict_targets(self, site: SiteJump, low: int, high: int) -> range:
        reach = self._reach(site.vaddr)
        low, high = max(low, reach[0]), min(high, reach[1])
        first = low + (site.vaddr + JMP_REL32 + 0xE9 - low) % 256  # 0xE9: the successor's new opcode
        return range(first, high, 256)

    def evicted(self, site: SiteJump, successor: SiteJump, target: int) -> tuple[SiteJump, list[int]]:
        assert successor.form is JumpForm.JUMP, "a punned successor's jump leads where the pun says: led_by"
        distance = self._signed(target - (site.vaddr + JMP_REL32))
        assert distance & 0xFF == 0xE9, "a target from evict_targets"
        chosen = (distance >> 8) & 0xFF_FFFF
        after = successor.at + JMP_REL32
        leads = [(after + self._signed(chosen | top << 24)) % self.space for top in range(256)]
        return replace(site, target=target, reach=self._reach(target)), sorted(leads, key=lambda t: abs(t - after))

    def led_by(self, site: SiteJump, successor: SiteJump, lead: int) -> SiteJump:
        """The displacement's first three bytes are the pun's last three."""
        assert successor.reach[0] <= lead < successor.reach[1], "a lead within the punned successor's reach"
        distance = self._signed(lead - (successor.at + JMP_REL32)) % (1 << 32)
        target = (site.vaddr + JMP_REL32 + self._signed((distance << 8 | 0xE9) % (1 << 32))) % self.space
        return replace(site, target=target, reach=self._reach(target))

    def _signed(self, distance: int) -> int:
        """``distance`` modulo 2**32 as a signed 32-bit displacement: i386's addresses wrap
        around; x86_64's callers keep within reach."""
        return (distance + (1 << 31)) % (1 << 32) - (1 << 31)

    def _jump(self, plan: Plan, at: int, displaced: StepOutOfLine | None, resume: int, why: str) -> SiteJump:
        return SiteJump(vaddr=plan.vaddr, at=at, length=JMP_REL32, form=JumpForm.JUMP, displaced=displaced,
                        resume=resume, target=None, reach=self._reach(at), why=why)

    def _reach(self, at: int) -> tuple[int, int]:
        """Where a jmp rel32 written at ``at`` can lead."""
        if self.mode64:
            return max(at + JMP_REL32 - (1 << 31), 0), min(at + JMP_REL32 + (1 << 31), self.space)
        return 0, self.space

    def _nop_size(self, code: bytes) -> int:
        """Bytes of the nop ``code`` starts with (0: none), whatever its prefixes: a nop
        that only follows the probe is never probed itself (usdt.h's nop10 carries a cs
        prefix, which a uprobe refuses)."""
        if code[:1] == NOP:
            return 1
        at = _prefixes_end(code, self.mode64)
        if at == len(code) or code[at] not in (0x90, 0x0F):
            return 0  # no nop's opcode after the prefixes: nothing to decode
        insn = next(_capstone(self.mode64).disasm(code[: self.backend.max_insn_len], 0, 1), None)
        if insn is None:
            return 0
        raw = bytes(insn.bytes)
        return insn.size if _is_nop(raw, _scan_encoding(raw, self.mode64), insn.modrm) else 0

    def _is_nop(self, plan: Plan) -> bool:
        return isinstance(plan, X86Jump) and plan.effects.regs.get(self.backend.ip_reg) == plan.vaddr + plan.size

    def jump_bytes(self, site: SiteJump, trampoline: int) -> bytes:
        """A pun's ``0xE9`` alone (a site's: its landing is its fixed target), or with the
        bytes uemu chose of its displacement (a punned successor's: the rest, the next
        instruction's, already say what ``trampoline``, within its reach, needs)."""
        if site.form is JumpForm.PUN:
            return (b"\xe9" + self._rel32(trampoline - (site.at + JMP_REL32)))[:site.length]
        return b"\xe9" + self._rel32(trampoline - (site.at + JMP_REL32))

    def _rel32(self, distance: int) -> bytes:
        if not self.mode64:
            distance = self._signed(distance)
        return distance.to_bytes(4, "little", signed=True)

    def trampoline(self, site: SiteJump, address: int, index: int, hit_entry: int) -> bytes | None:
        """x86_64: ``lea -0x80(%rsp),%rsp; push $index; call *hit_entry(%rip);
        lea 0x88(%rsp),%rsp``, the displaced instruction or nothing, the jump back, the
        literal.  i386: ``push $index; call hit_entry; lea 4(%esp),%esp``, the rest alike.
        lea leaves the flags alone; hit_entry saves and restores them."""
        push = b"\x68" + index.to_bytes(4, "little")
        if self.mode64:
            head = _LEA_BELOW_RED_ZONE + push + b"\xff\x15" + bytes(4) + _LEA_BACK_64
        else:
            head = push + b"\xe8" + self._rel32(hit_entry - (address + 10)) + _LEA_BACK_32
        body = self._body(site, address + len(head))
        if body is None:
            return None
        code = head + body
        if not self.mode64:
            return code
        literal = -(-len(code) // 8) * 8
        disp = address + literal - (address + len(_LEA_BELOW_RED_ZONE) + len(push) + 6)
        code = code[:12] + disp.to_bytes(4, "little", signed=True) + code[16:]
        return code.ljust(literal, b"\xcc") + hit_entry.to_bytes(8, "little")

    def relocated(self, successor: SiteJump, address: int) -> bytes | None:
        push = self._push_return(successor)
        body = self._body(successor, address + len(push))
        return None if body is None else push + body

    def _push_return(self, successor: SiteJump) -> bytes:
        """A moved call's return address onto the stack, flags and registers untouched:
        ``push $imm32`` (x86_64: sign-extended, so ``movl $high, 4(%rsp)`` after it)."""
        if successor.pushes is None:
            return b""
        low, high = successor.pushes & 0xFFFF_FFFF, successor.pushes >> 32
        push = b"\x68" + low.to_bytes(4, "little")
        return push + b"\xc7\x44\x24\x04" + high.to_bytes(4, "little") if self.mode64 else push

    def way_back(self, site: SiteJump, address: int) -> int:
        return self.relocated_way_back(site, address + self.head_size)

    def relocated_way_back(self, successor: SiteJump, address: int) -> int:
        """Also ``way_back`` past a trampoline's head: its body is the same code.  A moved
        call's: its jump to the callee, the return address pushed."""
        address += len(self._push_return(successor))
        body = self._body(successor, address)
        assert body is not None, "only a trampoline that was written has a way back"
        return way_back_in(successor, address, body, JMP_REL32)

    def _body(self, site: SiteJump, body_at: int) -> bytes | None:
        """The displaced instruction's slot code (ending in its jump back), or the jump back."""
        if site.displaced is not None:
            return displaced_code(site.displaced, self.backend.prepare_xol(site.displaced, body_at, _ANY_REGS))
        distance = site.resume - (body_at + JMP_REL32)
        if not self.mode64 or signed_fits(distance, 32):
            return b"\xe9" + self._rel32(distance)
        return b"\xff\x25" + bytes(4) + site.resume.to_bytes(8, "little")  # jmp *0(%rip), the address after it


X86_64 = Arch(
    name="x86_64",
    e_machine="EM_X86_64",
    elf_class=64,
    little_endian=True,
    spec_dialect="att",
    spec_registers=_X86_64_SPEC_REGISTERS,
    ip_reg="rip",
    sp_reg="rsp",
    regset=_X86_64_REGSET,
    syscall_insn=b"\x0f\x05",  # syscall
    syscall_regs=("rax", "rdi", "rsi", "rdx", "r10", "r8", "r9"),
    syscall_return="rax",
    syscall_orig_reg="orig_rax",
    restart_syscall=219,
    syscall_numbers=frozen_map({"mmap": 9, "munmap": 11, "madvise": 28, "mprotect": 10, "rt_sigaction": 13,
                                "kcmp": 312, "memfd_create": 319, "ftruncate": 77, "close": 3, "rt_sigreturn": 15,
                                "futex": 202, "set_robust_list": 273}),
    audit_arch=0xC000003E,  # AUDIT_ARCH_X86_64
    mapping_syscalls=frozen_map(_X86_64_MAPPING_SYSCALLS),
    ucontext_regs=frozen_map(_X86_64_UCONTEXT),
    way_back=_X86_64_WAY_BACK,
    sigaction=KernelSigaction(size=32, word=8, handler=0, flags=8, restorer=16, mask=24),
    trap_si_code=0x80,  # SI_KERNEL: do_int3_user() -> do_trap() -> force_sig()
    backend=_X86_64_BACKEND,
    jumps=X86Jumps(_X86_64_BACKEND),
)

I386 = Arch(
    name="i386",
    e_machine="EM_386",
    elf_class=32,
    little_endian=True,
    spec_dialect="att",
    spec_registers=frozen_map(_i386_spec_registers()),
    pair_high=frozen_map(_I386_PAIR_HIGH),
    ip_reg="eip",
    sp_reg="esp",
    regset=_I386_REGSET,
    syscall_insn=b"\xcd\x80",  # int $0x80
    syscall_regs=("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp"),
    syscall_return="eax",
    syscall_orig_reg="orig_eax",
    restart_syscall=0,
    syscall_numbers=frozen_map({"mmap": 192, "munmap": 91, "madvise": 219, "mprotect": 125,  # mmap2
                                "rt_sigaction": 174, "kcmp": 349, "memfd_create": 356, "ftruncate": 93,
                                "close": 6, "rt_sigreturn": 173, "futex": 240,
                                "set_robust_list": 311}),
    regset_word=4,
    audit_arch=0x40000003,  # AUDIT_ARCH_I386
    mapping_syscalls=frozen_map(_I386_MAPPING_SYSCALLS),
    ucontext_regs=frozen_map(_I386_UCONTEXT),
    way_back=_I386_WAY_BACK,
    sigaction=KernelSigaction(size=20, word=4, handler=0, flags=4, restorer=8, mask=12),  # compat_sigaction
    trap_si_code=0x80,
    backend=_I386_BACKEND,
    jumps=X86Jumps(_I386_BACKEND),
)

register(X86_64, I386)
