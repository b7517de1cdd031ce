"""A syscall interrupted by the tracer is given back to restart, as the kernel does when no
handler runs (x86 arch_do_signal_or_restart); arm64 and riscv64 prepare it themselves."""

from __future__ import annotations

import pytest

from uemu.arch import by_name

M64, M32 = (1 << 64) - 1, (1 << 32) - 1


@pytest.mark.parametrize(("error", "again"), [(-512, 0), (-513, 0), (-514, 0), (-516, 219)])
def test_x86_64_restart_codes(error: int, again: int) -> None:
    regs = {"orig_rax": 0, "rax": error & M64, "rip": 0x1002}
    assert by_name("x86_64").restarted_syscall(regs) == {"rax": again, "rip": 0x1000}


def test_i386_restart_block_calls_restart_syscall_number_0() -> None:
    regs = {"orig_eax": 162, "eax": -516 & M32, "eip": 0x1002}
    assert by_name("i386").restarted_syscall(regs) == {"eax": 0, "eip": 0x1000}


@pytest.mark.parametrize("regs", [
    {"orig_rax": M64, "rax": -512 & M64, "rip": 0x1002},  # not in a syscall (orig_rax -1)
    {"orig_rax": 0, "rax": 5, "rip": 0x1002},  # read() returned 5
    {"orig_rax": 0, "rax": -4 & M64, "rip": 0x1002},  # EINTR reaches the program as is
])
def test_nothing_to_restart(regs) -> None:
    assert by_name("x86_64").restarted_syscall(regs) == {}


@pytest.mark.parametrize("name", ["aarch64", "riscv64"])
def test_the_kernel_prepares_the_restart_itself(name: str) -> None:
    assert by_name(name).restarted_syscall({}) == {}
