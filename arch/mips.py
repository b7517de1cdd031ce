"""mips64 (n64 ABI), both byte orders under one name: register facts for SDT
argument specs.

gcc prints ``$N`` except ``$sp`` and ``$fp`` (observed, gcc 12
``mips64el-linux-gnuabi64``, also with ``-EB``: ``-4@$4``, ``-4@0($fp)``,
``8@0($sp)``).  The byte order is the ELF file's, so ``little_endian`` is None.
"""

from __future__ import annotations

from . import register
from .base import Arch, SpecRegister, frozen_map

# n64 ABI names of $0..$31 (binutils tc-mips.c, MIPS_N32_N64 names plus the
# common ones).  $0 is the hardwired zero: canonical "zero" on every arch, read
# as 0 by uemu.argspec.
_ABI_NAMES = (
    ("zero",), ("at",), ("v0",), ("v1",), ("a0",), ("a1",), ("a2",), ("a3",),
    ("a4", "ta0"), ("a5", "ta1"), ("a6", "ta2"), ("a7", "ta3"), ("t0",), ("t1",), ("t2",), ("t3",),
    ("s0",), ("s1",), ("s2",), ("s3",), ("s4",), ("s5",), ("s6",), ("s7",),
    ("t8",), ("t9",), ("k0",), ("k1",), ("gp",), ("sp",), ("fp", "s8"), ("ra",),
)  # fmt: skip


def numbered_views(abi_names: tuple[tuple[str, ...], ...], number: str) -> dict[str, SpecRegister]:
    """Spellings of 64-bit registers r0..rN with r0 hardwired to zero: the number
    written as ``number.format(n)`` and each ABI name (mips; loongarch too, whose
    register naming follows mips)."""
    regs: dict[str, SpecRegister] = {}
    for n, names in enumerate(abi_names):
        view = SpecRegister("zero" if n == 0 else f"r{n}", 8)
        regs[number.format(n)] = view
        regs.update(dict.fromkeys(names, view))
    return regs


MIPS64 = Arch(
    name="mips64",
    e_machine="EM_MIPS",
    elf_class=64,
    little_endian=None,
    spec_dialect="mips",
    spec_registers=frozen_map(numbered_views(_ABI_NAMES, "{}")),
    ip_reg="pc",
    sp_reg="r29",
)

register(MIPS64)
