"""arm (32-bit, armhf, little-endian): register facts for SDT argument specs.

gcc prints ``fp``, ``ip``, ``sp``, ``lr`` for r11..r14 and ``rN`` otherwise
(observed, gcc 12 ``arm-linux-gnueabihf``: ``1@ip``, ``4f@lr``); GAS also accepts
the APCS names, so those are listed too.
"""

from __future__ import annotations

from . import register
from .base import Arch, SpecRegister, frozen_map

_ALIASES = {
    **{f"a{n + 1}": n for n in range(4)},  # a1..a4 = r0..r3
    **{f"v{n - 3}": n for n in range(4, 12)},  # v1..v8 = r4..r11
    "sb": 9,
    "sl": 10,
    "fp": 11,
    "ip": 12,
    "sp": 13,
    "lr": 14,
    "pc": 15,
}


def _arm_spec_registers() -> dict[str, SpecRegister]:
    regs = {f"r{n}": SpecRegister(f"r{n}", 4) for n in range(16)}
    regs.update({alias: SpecRegister(f"r{n}", 4) for alias, n in _ALIASES.items()})
    return regs


# An 8-byte value (long long, double) named by one register lives in that
# register and the next, low word first (AAPCS; observed -8@r2 for r3:r2).
_ARM_PAIR_HIGH = {f"r{n}": f"r{n + 1}" for n in range(12)}

ARM = Arch(
    name="arm",
    e_machine="EM_ARM",
    elf_class=32,
    little_endian=True,
    spec_dialect="arm",
    spec_registers=frozen_map(_arm_spec_registers()),
    pair_high=frozen_map(_ARM_PAIR_HIGH),
    ip_reg="r15",
    sp_reg="r13",
)

register(ARM)
