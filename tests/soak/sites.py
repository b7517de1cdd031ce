"""Raw probe words for a sample's small function, chosen by uemu's own backend
plan (as tests/integration/test_xol.py does): an instruction stepped out of
line in a slot that jumps back (one stop) and one that needs a single-step
(two stops, the thread in its slot between them)."""

from __future__ import annotations

import functools
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from uemu import arch, sdt
from uemu.arch.base import StepOutOfLine

NEAR_SLOT = 1 << 28
"""A slot this far from the code stands where uemu maps its XOL area."""
SCRATCH = dict.fromkeys(("rsi", "rdi", "rbx"), 0)


@functools.cache
def stepped(program: Path, function: str) -> dict[str, str]:
    """``{"jump": WORD, "step": WORD}``: the first instruction of each kind in the
    function, as ``PATH:FUNCTION+OFF`` words."""
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
            found.setdefault(ends, f"{program}:{function}+{offset:#x}")
        offset += plan.size
    return found
