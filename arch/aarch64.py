"""aarch64 (AArch64, little-endian, LP64): register facts for SDT argument specs.

gcc prints every general register operand by its 64-bit name (``-4@x1`` for an
``int``; observed, gcc 12 ``aarch64-linux-gnu``), but hand-written probes and other
compilers may use the 32-bit ``w`` views, so both are listed.
"""

from __future__ import annotations

from . import register
from .base import Arch, SpecRegister, frozen_map

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


AARCH64 = Arch(
    name="aarch64",
    e_machine="EM_AARCH64",
    elf_class=64,
    little_endian=True,
    spec_dialect="aarch64",
    spec_registers=frozen_map(_aarch64_spec_registers()),
    ip_reg="pc",
    sp_reg="sp",
)

register(AARCH64)
