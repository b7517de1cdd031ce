"""Whether a thread ``uemu repair`` finds in uemu's code is in a jump path's hit or in the
runtime's signal handler (``repair._JumpCode.in_hit``): the first of its trampoline's
return address and the handler's return address up its stack says.  A hit's thread is
out once it is back in the program; a handler's only once above the handler's frame.
And whether a thread in the program runs a signal handler entered inside a hit, from
the ucontext on its stack (``_JumpCode.signal_frame``)."""

from __future__ import annotations

import pytest
from fakes import X86_64, FakeMemory, new_mm

from uemu.maps import Vma
from uemu.repair import HIT_FRAME_ROOM, _JumpCode
from uemu.runtime import layout

BASE = 0x7F0000000000
RESTORER = BASE + 0x4C
RUNTIME = BASE + 0x1234
"""A return address inside the runtime's own code (a callee's caller)."""
TRAMPOLINE = BASE + layout.TRAMP_OFF + 0x40
LANDING = 0x10000000
SP = 0x7FFD0000F000


def _code(*words: int, at: int = 0) -> _JumpCode:
    """A stack of zeroes from SP with ``words`` from byte ``at`` on."""
    stack = bytearray(HIT_FRAME_ROOM + 4096)
    for n, word in enumerate(words):
        stack[at + 8 * n:at + 8 * n + 8] = word.to_bytes(8, "little")
    memory = FakeMemory()
    memory.map(SP, bytes(stack))
    return _JumpCode(new_mm(memory, []), BASE, ((LANDING, LANDING + 4096),))


def test_a_trampolines_return_address_means_a_hit() -> None:
    assert _code(RUNTIME, 0x1234, TRAMPOLINE, at=256).in_hit(SP, RESTORER)


def test_a_landing_pages_return_address_means_a_hit() -> None:
    assert _code(RUNTIME, LANDING + 0x10, at=512).in_hit(SP, RESTORER)


def test_the_handlers_return_address_first_means_the_handler() -> None:
    """The signal frame's ucontext above may hold a trampoline's address (a trap over a
    trampoline's jump back that uemu died before taking away)."""
    assert not _code(RUNTIME, RESTORER, 5, TRAMPOLINE, at=128).in_hit(SP, RESTORER)


def test_neither_means_the_handler() -> None:
    assert not _code(RUNTIME, 0x5555_5555_1000).in_hit(SP, RESTORER)
    assert not _code(RUNTIME, RESTORER).in_hit(SP, None)  # riscv64, no vDSO symbol found


def test_no_restorer_known_a_trampoline_still_means_a_hit() -> None:
    assert _code(RUNTIME, TRAMPOLINE).in_hit(SP, None)


def test_only_the_hits_depth_is_looked_at() -> None:
    """A stale trampoline word further up, in the program's frames, is not taken."""
    assert not _code(TRAMPOLINE, at=HIT_FRAME_ROOM).in_hit(SP, RESTORER)
    assert _code(TRAMPOLINE, at=HIT_FRAME_ROOM - 8).in_hit(SP, RESTORER)


def test_an_unreadable_stack_is_not_a_hit() -> None:
    assert not _code(TRAMPOLINE).in_hit(SP + 0x100000, RESTORER)


# ---- a program's handler on top of a hit: its signal frame (``_JumpCode.signal_frame``)

UC_IP, UC_SP = X86_64.ucontext_regs["rip"], X86_64.ucontext_regs["rsp"]
FRAME = SP + 0x300
"""Where the handler's ucontext begins, above the handler's own frames."""
STACK_VMA = Vma(SP - 0x1000, SP + 0x20000, "rw-p", 0, 0, 0, "[stack]")
READ_ONLY = Vma(0x5555_5555_0000, 0x5555_5555_1000, "r--p", 0, 0, 0, "")


def _framed(ip: int, uc_flags: int = 0x7, uc_link: int = 0, saved_sp: int = SP + 0x10000) -> _JumpCode:
    """A stack with one ucontext at FRAME that saved ``ip`` and ``saved_sp``."""
    stack = bytearray(STACK_VMA.end - STACK_VMA.start)
    for offset, value in ((0, uc_flags), (8, uc_link), (UC_IP, ip), (UC_SP, saved_sp)):
        at = FRAME - STACK_VMA.start + offset
        stack[at:at + 8] = value.to_bytes(8, "little")
    memory = FakeMemory()
    memory.map(STACK_VMA.start, bytes(stack))
    return _JumpCode(new_mm(memory, [READ_ONLY, STACK_VMA]), BASE, ((LANDING, LANDING + 4096),))


def test_a_frame_that_returns_into_a_trampoline_is_found_where_it_saved_the_ip() -> None:
    assert _framed(TRAMPOLINE).signal_frame(SP) == FRAME + UC_IP
    assert _framed(LANDING + 8, uc_flags=0).signal_frame(SP) == FRAME + UC_IP


def test_a_frame_that_returns_into_the_program_is_none_of_ours() -> None:
    assert _framed(0x5555_5555_1000).signal_frame(SP) is None


@pytest.mark.parametrize("frame", [
    {"uc_flags": 0x10},  # flags no kernel writes
    {"uc_link": 0x7FFD_0000_2000},  # a linked context: no frame of the kernel's
    {"saved_sp": 0x5555_5556_0000},  # a saved sp in no mapping
    {"saved_sp": READ_ONLY.start + 0x800},  # or in one that cannot be a stack
])
def test_a_stale_trampoline_word_without_a_ucontext_around_it_is_no_frame(frame: dict[str, int]) -> None:
    assert _framed(TRAMPOLINE, **frame).signal_frame(SP) is None


def test_a_frame_below_sp_is_not_looked_at() -> None:
    assert _framed(TRAMPOLINE).signal_frame(FRAME + UC_IP + 8) is None
