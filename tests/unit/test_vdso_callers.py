"""Whether a thread stopped in the vDSO was called from the jump path's code
(``jumpfacts.called_from``), which leaving must then move out: a register or a word at the
top of its stack pointing into the code says so, unless the thread is inside a blocking
system call of the program's (i386's ``__kernel_vsyscall``), which stepping would restart
with the trap flag."""

from __future__ import annotations

import pytest

from uemu.arch import by_name
from uemu.jumpfacts import called_from

M32 = (1 << 32) - 1
CODE = [(0x5662B000, 0x5682B000)]
"""The area's code on i386, right after a PIE program's image."""
NANOSLEEP = 162
IN_CODE = (0x5663F6CB).to_bytes(4, "little")
"""A stale word seen at the top of a parked thread's stack (i386 soak, parked/attach/600)."""


def _i386(eax: int, orig_eax: int) -> dict[str, int]:
    names = ("ebx", "ecx", "edx", "esi", "edi", "ebp", "eax", "orig_eax", "eip", "esp")
    regs = dict.fromkeys(names, 0)
    regs.update(eax=eax & M32, orig_eax=orig_eax & M32, eip=0xF7FAC5E9, esp=0xF5EE42C0)
    return regs


@pytest.mark.parametrize(("error", "inside"), [
    (-516, False),  # ERESTART_RESTARTBLOCK: nanosleep, interrupted
    (-512, False),  # ERESTARTSYS: read, futex, epoll_wait
    (0, True),  # a call that returned: the word may be a return address of the runtime's
])
def test_a_blocking_call_of_the_programs_is_not_the_runtimes(error: int, inside: bool) -> None:
    stack = bytes(300) + IN_CODE + bytes(208)
    assert called_from(by_name("i386"), _i386(error, NANOSLEEP), stack, CODE) is inside


def test_no_word_in_the_code_is_not_inside() -> None:
    assert not called_from(by_name("i386"), _i386(0, -1), bytes(512), CODE)


def test_a_register_pointing_into_the_code() -> None:
    regs = {"x29": 0, "x30": 0x400010, "sp": 0x7FFF0000, "pc": 0xFFFF0800, "pstate": 0}  # x30: the return address
    assert called_from(by_name("aarch64"), regs, b"", [(0x400000, 0x600000)])
