"""powerpc64, both byte orders: register facts for SDT argument specs.

Without ``-mregnames`` gcc prints general registers as bare numbers
(``-4@8`` is r8, ``-4@0(9)`` is memory at r9); with it, ``%r8``.  Both
spellings map to the same canonical ``rN`` (observed, gcc 12
``powerpc64le-linux-gnu``, with and without ``-mregnames``).
"""

from __future__ import annotations

from dataclasses import replace

from . import register
from .base import Arch, SpecRegister, frozen_map


def _ppc_spec_registers() -> dict[str, SpecRegister]:
    regs: dict[str, SpecRegister] = {}
    for n in range(32):
        regs[f"r{n}"] = SpecRegister(f"r{n}", 8)
        regs[str(n)] = SpecRegister(f"r{n}", 8)
    # GAS's predefined names (binutils tc-ppc.c pre_defined_registers).
    regs["sp"] = SpecRegister("r1", 8)
    regs["rtoc"] = SpecRegister("r2", 8)
    return regs


PPC64 = Arch(
    name="ppc64",
    e_machine="EM_PPC64",
    elf_class=64,
    little_endian=False,
    spec_dialect="ppc",
    spec_registers=frozen_map(_ppc_spec_registers()),
    ip_reg="pc",
    sp_reg="r1",
)

PPC64LE = replace(PPC64, name="ppc64le", little_endian=True)

register(PPC64, PPC64LE)
