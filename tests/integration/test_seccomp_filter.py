"""The mapping filter run by the kernel itself: a child installs it with no tracer,
so each syscall it would stop fails with ENOSYS (SECCOMP_RET_TRACE without a
tracer) and each one it lets through does its work."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import sys

from uemu import arch as arches
from uemu import seccomp

MAP_PRIVATE, MAP_FIXED_NOREPLACE, MAP_STACK = 0x02, 0x100000, 0x20000


def _in_filtered_child(calls: list[tuple[str, tuple[int, ...]]]) -> list[int]:
    """errno of each call (0: it went through), made in a child under the filter."""
    host = arches.by_name(os.uname().machine)
    numbers = {kind.name.lower(): nr for nr, kind in host.mapping_syscalls.items()}
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(reading)
            seccomp.install(seccomp.mapping_filter(a for a in arches.all_arches() if a.backend and a.mapping_syscalls))
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            results = []
            for name, args in calls:
                ctypes.set_errno(0)
                done = libc.syscall(ctypes.c_long(numbers[name]), *(ctypes.c_long(a) for a in args))
                results.append(ctypes.get_errno() if done == -1 else 0)
            os.write(writing, ",".join(map(str, results)).encode())
        finally:
            os._exit(0)
    os.close(writing)
    with os.fdopen(reading, "rb") as stream:
        answer = stream.read().decode()
    os.waitpid(pid, 0)
    return [int(v) for v in answer.split(",")]


def test_the_kernel_stops_only_the_mappings_that_may_hold_probes(tmp_path) -> None:
    anon, shared, fixed = seccomp.MAP_ANONYMOUS, seccomp.MAP_SHARED, seccomp.MAP_FIXED
    prot = mmap.PROT_READ
    with open(sys.executable, "rb") as elf:
        fd = os.dup(elf.fileno())  # inherited by the child
        try:
            got = _in_filtered_child([
                ("mmap", (0, 0x10000, prot, MAP_PRIVATE | anon, -1, 0)),
                ("mmap", (0, 0x10000, prot, MAP_PRIVATE | anon | MAP_STACK, -1, 0)),
                ("mmap", (0x7E0000000000, 0x1000, prot, MAP_PRIVATE | anon | MAP_FIXED_NOREPLACE, -1, 0)),
                ("mmap", (0, 0x1000, prot, shared, fd, 0)),
                ("mmap", (0, 0x1000, prot, MAP_PRIVATE, fd, 0)),
                ("mmap", (0x7E0000100000, 0x1000, prot, MAP_PRIVATE | anon | fixed, -1, 0)),
                ("mprotect", (0x7E0000000000, 0x1000, prot)),
                ("munmap", (0x7E0000000000, 0x1000)),
            ])
        finally:
            os.close(fd)
    assert got == [0, 0, 0, 0, errno.ENOSYS, errno.ENOSYS, errno.ENOSYS, errno.ENOSYS]
