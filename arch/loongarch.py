"""loongarch64 (LP64D, little-endian): register facts for SDT argument specs.

gcc prints ``$rN`` (gcc ``config/loongarch/loongarch.h`` REGISTER_NAMES) and a
memory operand as ``$rB,off`` or ``$rB,$rI`` (``loongarch_print_operand_address``
in ``config/loongarch/loongarch.cc``).  Not observed on this machine: Debian 12
has no loongarch cross compiler.  The ABI names are binutils'
(``opcodes/loongarch-opc.c``: ``loongarch_r_lp64_name`` and ``_name1``).
"""

from __future__ import annotations

from . import register
from .base import Arch, frozen_map
from .mips import numbered_views

# ABI name(s) of r0..r31.  r0 is the hardwired zero: canonical "zero" on every
# arch, read as 0 by uemu.argspec.
_ABI_NAMES = (
    ("zero",), ("ra",), ("tp",), ("sp",), ("a0", "v0"), ("a1", "v1"), ("a2",), ("a3",),
    ("a4",), ("a5",), ("a6",), ("a7",), ("t0",), ("t1",), ("t2",), ("t3",),
    ("t4",), ("t5",), ("t6",), ("t7",), ("t8",), ("x",), ("fp", "s9"), ("s0",),
    ("s1",), ("s2",), ("s3",), ("s4",), ("s5",), ("s6",), ("s7",), ("s8",),
)  # fmt: skip


LOONGARCH64 = Arch(
    name="loongarch64",
    e_machine="EM_LOONGARCH",
    elf_class=64,
    little_endian=True,
    spec_dialect="loongarch",
    spec_registers=frozen_map(numbered_views(_ABI_NAMES, "r{}")),
    ip_reg="pc",
    sp_reg="r3",
)

register(LOONGARCH64)
