"""s390x (z/Architecture, big-endian): register facts for SDT argument specs.

gcc prints ``%rN`` (observed, gcc 12 ``s390x-linux-gnu``: ``-4@%r3``,
``160(%r15)``, ``-2@16(%r1,%r5)``).
"""

from __future__ import annotations

from . import register
from .base import Arch, SpecRegister, frozen_map

S390X = Arch(
    name="s390x",
    e_machine="EM_S390",
    elf_class=64,
    little_endian=False,
    spec_dialect="s390",
    spec_registers=frozen_map({f"r{n}": SpecRegister(f"r{n}", 8) for n in range(16)}),
    ip_reg="pc",
    sp_reg="r15",
)

register(S390X)
