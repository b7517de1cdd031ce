"""A process's memory and maps as plain data, for the core's pure-logic tests.

No ptrace and no /proc: ``FakeMemory`` keeps pages in a dict and fails on
addresses no region covers, as /proc/PID/mem does (EIO/EFAULT).
"""

from __future__ import annotations

import errno
import os
import struct

from uemu.arch import by_name
from uemu.maps import Vma
from uemu.uprobes import Mm, ProbeInfo, Uprobe, Uprobes

X86_64 = by_name("x86_64")
FILE = (os.makedev(8, 1), 4242)
"""The probed file's (device, inode)."""


class FakeMemory:
    """Bytes at addresses; reads and writes outside every region fail."""

    def __init__(self, pid: int = 100):
        self.pid = pid
        self.regions: dict[int, bytearray] = {}
        self.writes: list[tuple[int, bytes]] = []
        self.broken: set[int] = set()
        """Addresses whose writes fail (a counter in a file cut short)."""

    def map(self, start: int, data: bytes) -> None:
        self.regions[start] = bytearray(data)

    def unmap(self, start: int) -> None:
        del self.regions[start]

    def _find(self, address: int, size: int) -> tuple[bytearray, int]:
        for start, data in self.regions.items():
            if start <= address and address + size <= start + len(data):
                return data, address - start
        raise OSError(errno.EIO, f"nothing mapped at {address:#x}")

    def read(self, address: int, size: int) -> bytes:
        data, at = self._find(address, size)
        return bytes(data[at : at + size])

    def write(self, address: int, data: bytes) -> None:
        if address in self.broken:
            raise OSError(errno.EIO, f"cannot write {address:#x}")
        region, at = self._find(address, len(data))
        region[at : at + len(data)] = data
        self.writes.append((address, bytes(data)))

    def close(self) -> None:
        pass


def vma(start: int, size: int, perms: str, offset: int, file_id: tuple[int, int] = FILE,
        path: str = "/lib/x.so") -> Vma:
    return Vma(start, start + size, perms, offset, file_id[0], file_id[1], path)


TEXT = vma(0x10000, 0x1000, "r-xp", 0x1000)
"""File offsets 0x1000-0x1fff executable at 0x10000."""
DATA = vma(0x20000, 0x1000, "rw-p", 0x3000)
"""File offsets 0x3000-0x3fff writable at 0x20000: the semaphores."""
SITE_OFFSET = 0x1010
SEMAPHORE_OFFSET = 0x3008


def new_mm(memory: FakeMemory, vmas: list[Vma]) -> Mm:
    return Mm(memory.pid, X86_64, memory, list(vmas))  # type: ignore[arg-type]


def uprobe(offset: int = SITE_OFFSET, ref_ctr_offset: int = SEMAPHORE_OFFSET, original: bytes = b"\x90") -> Uprobe:
    probe = Uprobe(FILE, offset, ref_ctr_offset, "/lib/x.so", original)
    probe.consumers.append(_consumer())
    return probe


def _consumer():
    from uemu.uprobes import Consumer

    return Consumer(ProbeInfo("/lib/x.so", "p", "n", 0x1010, ""), "p:n")


SITE = TEXT.offset_to_vaddr(SITE_OFFSET)
SEMAPHORE = DATA.offset_to_vaddr(SEMAPHORE_OFFSET)


def register(core: Uprobes, probe) -> None:
    core.by_site[(*probe.file_id, probe.offset)] = probe
    core.by_file.setdefault(probe.file_id, []).append(probe)


def armed(core: Uprobes, memory: FakeMemory) -> tuple[Mm, Uprobe]:
    """One uprobe registered, then its text and data mapped (core.mmap, as uprobe_mmap())."""
    mm = new_mm(memory, [TEXT, DATA])
    probe = uprobe()
    register(core, probe)
    core.mmap(mm, [TEXT, DATA])
    return mm, probe


def memory_with(text: bool = True, data: bool = True, semaphore: int = 0) -> FakeMemory:
    memory = FakeMemory()
    if text:
        memory.map(TEXT.start, b"\x90" * 0x1000)
    if data:
        memory.map(DATA.start, b"\0" * 0x1000)
        memory.write(SEMAPHORE, struct.pack("<h", semaphore))
        memory.writes.clear()
    return memory


def counter_value(memory: FakeMemory) -> int:
    """The semaphore at ``SEMAPHORE``."""
    return struct.unpack("<h", memory.read(SEMAPHORE, 2))[0]
