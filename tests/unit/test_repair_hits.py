"""Whether a thread ``uemu repair`` finds in uemu's code is in a jump path's hit or in the
runtime's signal handler (``repair._JumpCode.in_hit``): the first of its trampoline's
return address and the handler's return address up its stack says.  A hit's thread is
out once it is back in the program; a handler's only once above the handler's frame."""

from __future__ import annotations

from fakes import FakeMemory, new_mm

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
