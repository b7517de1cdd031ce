"""x86_64 and i386: one module, two ABIs (as the kernel's arch/x86/kernel/uprobes.c)."""

from __future__ import annotations

from . import register
from .base import Arch, SpecRegister, frozen_map

_GPR64 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp")
_LEGACY = ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp")
_LOW8 = ("al", "bl", "cl", "dl", "sil", "dil", "bpl", "spl")
_HIGH8 = {"ah": "ax", "bh": "bx", "ch": "cx", "dh": "dx"}


def _x86_64_spec_registers() -> dict[str, SpecRegister]:
    regs: dict[str, SpecRegister] = {}
    for full, legacy, low8 in zip(_GPR64, _LEGACY, _LOW8):
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
    for legacy, low8 in zip(_LEGACY, _LOW8):
        full = "e" + legacy
        regs[full] = SpecRegister(full, 4)
        regs[legacy] = SpecRegister(full, 2)
        if legacy in ("ax", "bx", "cx", "dx"):
            regs[low8] = SpecRegister(full, 1)
    for high, legacy in _HIGH8.items():
        regs[high] = SpecRegister("e" + legacy, 1, shift=8)
    regs["eip"] = SpecRegister("eip", 4)
    return regs


_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1

# python-ptrace's x86_64 user_regs_struct field for each register.  An i386 task
# traced from a 64-bit tracer is read through the same 64-bit struct
# (PTRACE_GETREGS always returns the tracer's layout); its registers are the low
# halves.  Differs from python-ptrace's own getreg('eax'), which returns the upper
# half of rax on x86_64.
_X86_64_USER_REGS = {
    **{name: (name, _MASK64) for name in _GPR64},
    **{f"r{n}": (f"r{n}", _MASK64) for n in range(8, 16)},
    "rip": ("rip", _MASK64),
    "eflags": ("eflags", _MASK64),
    "orig_rax": ("orig_rax", _MASK64),
}
_I386_USER_REGS = {
    **{"e" + legacy: ("r" + legacy, _MASK32) for legacy in _LEGACY},
    "eip": ("rip", _MASK32),
    "eflags": ("eflags", _MASK32),
    "orig_eax": ("orig_rax", _MASK32),
}

# GCC keeps a DImode value in a pair of consecutive hard registers in its own
# order ax, dx, cx, bx, si, di, bp; the note names only the low one (-8@%ecx is
# ebx:ecx).
_I386_PAIR_HIGH = {"eax": "edx", "edx": "ecx", "ecx": "ebx", "ebx": "esi", "esi": "edi", "edi": "ebp"}

X86_64 = Arch(
    name="x86_64",
    e_machine="EM_X86_64",
    elf_class=64,
    little_endian=True,
    spec_dialect="att",
    spec_registers=frozen_map(_x86_64_spec_registers()),
    ip_reg="rip",
    sp_reg="rsp",
    user_regs=frozen_map(_X86_64_USER_REGS),
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
    user_regs=frozen_map(_I386_USER_REGS),
)

register(X86_64, I386)
