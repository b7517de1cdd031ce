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

# GCC keeps a DImode value in a pair of consecutive hard registers in its own
# order ax, dx, cx, bx, si, di, bp; the note names only the low one (-8@%ecx is
# ebx:ecx).
_I386_PAIR_HIGH = {"eax": "edx", "edx": "ecx", "ecx": "ebx", "ebx": "esi", "esi": "edi", "edi": "ebp"}

# Syscalls after which file mappings may have changed (arch/x86/entry/syscalls).
# brk and shmat only ever touch anonymous or shared memory, which never holds
# a probe VMA or a counter VMA.
_X86_64_MAPPING_SYSCALLS = frozenset(
    {9, 10, 11, 25, 216, 329}  # mmap mprotect munmap mremap remap_file_pages pkey_mprotect
)
_I386_MAPPING_SYSCALLS = frozenset(
    {90, 91, 125, 163, 192, 257, 380}  # old_mmap munmap mprotect mremap mmap2 remap_file_pages pkey_mprotect
)

X86_64 = Arch(
    name="x86_64",
    e_machine="EM_X86_64",
    elf_class=64,
    little_endian=True,
    spec_dialect="att",
    spec_registers=frozen_map(_x86_64_spec_registers()),
    ip_reg="rip",
    sp_reg="rsp",
    regset=_X86_64_REGSET,
    audit_arch=0xC000003E,  # AUDIT_ARCH_X86_64
    mapping_syscalls=_X86_64_MAPPING_SYSCALLS,
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
    regset_word=4,
    audit_arch=0x40000003,  # AUDIT_ARCH_I386
    mapping_syscalls=_I386_MAPPING_SYSCALLS,
)

register(X86_64, I386)
