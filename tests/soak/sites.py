"""Raw probe words for a sample's small function, chosen by uemu's own backend
plan (as tests/integration/test_xol.py does): an instruction stepped out of
line in a slot that jumps back (one stop) and one that needs a single-step
or ends in a trap (two stops, the thread in its slot between them).  On
aarch64 and riscv64 every instruction stepped out of line near its code jumps
back: there is no two-stop site there."""

from __future__ import annotations

import functools
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from uemu import arch, sdt
from uemu.arch.base import StepEnd, StepOutOfLine

NEAR_SLOT = 1 << 16
"""A slot this far from the code stands where uemu maps its XOL area: in the
free gap closest to the code (xol.gap_near), a few pages away as a rule; within
every direct branch's reach (riscv64 jal: 1 MiB, aarch64 b: 128 MiB)."""
SCRATCH = dict.fromkeys(("rsi", "rdi", "rbx"), 0)


@functools.cache
def stepped(program: Path, function: str) -> dict[str, str]:
    """``{"jump": WORD, "step": WORD}``: the first instruction of each kind in the
    function, as ``PATH:FUNCTION+OFF`` words; "step" also for a slot that ends in
    a trap.  A kind the function lacks is missing."""
    elf = sdt.open_elf(str(program))
    backend = arch.by_name(elf.arch_name).backend
    with program.open("rb") as stream:
        symbols = ELFFile(stream).get_section_by_name(".symtab")
        assert isinstance(symbols, SymbolTableSection), f"{program} has no symbol table"
        [symbol] = symbols.get_symbol_by_name(function) or []
        start = symbol["st_value"]
        stream.seek(elf.file_offset(start, executable=True))
        code = stream.read(symbol["st_size"])
    found: dict[str, str] = {}
    offset = 0
    while offset < len(code):
        plan = backend.analyze(code[offset:], start + offset)
        if isinstance(plan, StepOutOfLine):
            ends = backend.prepare_xol(plan, start + offset + NEAR_SLOT, SCRATCH).ends
            kind = "jump" if ends == StepEnd.JUMP else "step"
            found.setdefault(kind, f"{program}:{function}+{offset:#x}")
        offset += plan.size
    return found


def every_kind(program: Path, function: str) -> list[str]:
    """The words of every kind of out-of-line step the function has: both on
    x86, the jump-back kind alone on aarch64 and riscv64."""
    return list(stepped(program, function).values())


def step_or_jump(program: Path, function: str) -> str:
    """A two-stop site where the build has one, else the jump-back kind (aarch64,
    riscv64): a thread can still be in its slot when uemu leaves."""
    words = stepped(program, function)
    return words.get("step", words["jump"])
