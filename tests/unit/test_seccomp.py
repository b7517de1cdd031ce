"""The mapping filter's decisions, its classic BPF run by a small interpreter for
every traced ABI (tests/integration/test_seccomp_filter.py runs it in the kernel)."""

from __future__ import annotations

import dataclasses
import signal
import struct

import pytest

from uemu import arch as arches
from uemu import seccomp
from uemu.arch.base import MappingSyscall

TRACED = [a for a in arches.all_arches() if a.backend and a.mapping_syscalls]
PROGRAM = seccomp.mapping_filter(TRACED)


def run_filter(program: bytes, nr: int, audit_arch: int, args: tuple[int, ...], big_endian: bool = False) -> int:
    """What the kernel's classic-BPF interpreter returns for this ``seccomp_data``,
    for the few instructions the filter uses."""
    order = ">" if big_endian else "<"
    data = struct.pack(f"{order}iIQ6Q", nr, audit_arch, 0, *args, *(0,) * (6 - len(args)))
    insns = [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:  # ld [k]
            acc = struct.unpack_from(f"{order}I", data, k)[0]
        elif code == 0x54:  # and #k
            acc &= k
        elif code in (0x15, 0x45):  # jeq #k, jset #k
            taken = acc == k if code == 0x15 else bool(acc & k)
            pc += jt if taken else jf
        elif code == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"unexpected BPF opcode {code:#x}")


ANON, PRIVATE, SHARED, FIXED = seccomp.MAP_ANONYMOUS, 0x02, seccomp.MAP_SHARED, seccomp.MAP_FIXED


@pytest.mark.parametrize("arch", TRACED, ids=lambda a: a.name)
def test_only_a_private_file_mapping_or_a_fixed_one_stops_mmap(arch) -> None:
    mmaps = [n for n, kind in arch.mapping_syscalls.items() if kind is MappingSyscall.MMAP]
    assert mmaps
    for nr in mmaps:
        def verdict(flags: int, nr: int = nr) -> int:
            return run_filter(PROGRAM, nr, arch.audit_arch, (0, 0x1000, 3, flags, 5, 0))

        assert verdict(PRIVATE | ANON) == seccomp.SECCOMP_RET_ALLOW, "a heap, a thread's stack"
        assert verdict(PRIVATE | ANON | 0x20000) == seccomp.SECCOMP_RET_ALLOW, "MAP_STACK"
        assert verdict(PRIVATE | ANON | 0x100000) == seccomp.SECCOMP_RET_ALLOW, "MAP_FIXED_NOREPLACE replaces nothing"
        assert verdict(SHARED) == seccomp.SECCOMP_RET_ALLOW, "a shared file mapping holds nothing of ours"
        assert verdict(0x03) == seccomp.SECCOMP_RET_ALLOW, "MAP_SHARED_VALIDATE"
        assert verdict(PRIVATE) == seccomp.SECCOMP_RET_TRACE, "a private file mapping: maybe a library"
        assert verdict(PRIVATE | ANON | FIXED) == seccomp.SECCOMP_RET_TRACE, "it may replace a probed VMA"
        assert verdict(SHARED | FIXED) == seccomp.SECCOMP_RET_TRACE
        assert verdict(PRIVATE | (1 << 40)) == seccomp.SECCOMP_RET_TRACE, "only the low half is read"
        for flags in range(0x40):
            expected = flags & FIXED or seccomp.maps_file_privately(flags)
            assert verdict(flags) == (seccomp.SECCOMP_RET_TRACE if expected else seccomp.SECCOMP_RET_ALLOW), flags


@pytest.mark.parametrize("arch", TRACED, ids=lambda a: a.name)
def test_every_other_mapping_syscall_and_sigaction_of_sigtrap_stop_and_nothing_else(arch) -> None:
    for nr, kind in arch.mapping_syscalls.items():
        if kind is not MappingSyscall.MMAP:
            verdict = run_filter(PROGRAM, nr, arch.audit_arch, (0, 0x1000, 0, 0x22, 0, 0))
            assert verdict == seccomp.SECCOMP_RET_TRACE, kind
    unrelated = max(arch.mapping_syscalls) + 1
    assert run_filter(PROGRAM, unrelated, arch.audit_arch, (0,) * 6) == seccomp.SECCOMP_RET_ALLOW
    sigaction = arch.syscall_numbers["rt_sigaction"]
    assert run_filter(PROGRAM, sigaction, arch.audit_arch, (signal.SIGTRAP, 1, 0, 8)) == seccomp.SECCOMP_RET_TRACE
    assert run_filter(PROGRAM, sigaction, arch.audit_arch, (signal.SIGINT, 1, 0, 8)) == seccomp.SECCOMP_RET_ALLOW
    assert run_filter(PROGRAM, 9, 0x4000003E, (0, 0, 0, 0x02, 0, 0)) == seccomp.SECCOMP_RET_ALLOW, "x32: another ABI"


def test_a_big_endian_abi_reads_the_low_half_of_its_flags() -> None:
    """No traced ABI is big-endian today; the filter reads the flags' low word where
    a big-endian ``seccomp_data`` keeps it."""
    probe = dataclasses.replace(TRACED[0], little_endian=False, audit_arch=0x12345)
    program = seccomp.mapping_filter([probe])
    nr = next(n for n, kind in probe.mapping_syscalls.items() if kind is MappingSyscall.MMAP)
    anonymous = run_filter(program, nr, 0x12345, (0, 0, 0, PRIVATE | ANON, 0, 0), big_endian=True)
    assert anonymous == seccomp.SECCOMP_RET_ALLOW
    assert run_filter(program, nr, 0x12345, (0, 0, 0, PRIVATE, 0, 0), big_endian=True) == seccomp.SECCOMP_RET_TRACE
