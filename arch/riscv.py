"""riscv64 (RV64, little-endian, LP64D): register facts for SDT argument specs.

gcc prints ABI names (observed, gcc 12 ``riscv64-linux-gnu``: ``8@a0``,
``-4@-20(s0)``, ``8@0(sp)``); the canonical name is the ABI name, and the
architectural ``xN`` and ``fp`` are aliases (as GAS accepts them).
"""

from __future__ import annotations

from . import register
from .base import Arch, SpecRegister, frozen_map

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


RISCV64 = Arch(
    name="riscv64",
    e_machine="EM_RISCV",
    elf_class=64,
    little_endian=True,
    spec_dialect="riscv",
    spec_registers=frozen_map(_riscv_spec_registers()),
    ip_reg="pc",
    sp_reg="sp",
)

register(RISCV64)
