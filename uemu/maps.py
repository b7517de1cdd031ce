"""A process's VMAs from ``/proc/PID/maps``, and the kernel's two VMA predicates.

A mapped file's path is whatever bytes the tracee's file system holds: it is
decoded as ``os.fsdecode`` does (undecodable bytes become lone surrogates), so
it round-trips to ``open()`` and printing must escape it.  The kernel prints a
newline in a path as ``\012`` (``seq_file_path()``), which ``parse_maps`` turns
back into the newline.

Kernel: ``valid_vma()`` decides where breakpoints go, ``valid_ref_ctr_vma()``
where a semaphore may be changed (kernel/events/uprobes.c).  Differs: the
kernel tests ``VM_MAYEXEC``, which maps does not show; a file on a ``noexec``
mount gets breakpoints from uemu where the kernel would install none.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import errors

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
"""mmap(2)'s and mprotect(2)'s bits for what a mapping permits."""

HEAP_ROOM = 64 << 20
"""Nothing of uemu's (a landing page, the runtime's area, the XOL area) this close above
the heap's end (the break): brk grows there.
Differs: the kernel's XOL area never lands in the heap's way (get_unmapped_area, top down).
uemu's areas go near the probed code, where XOL slots and jumps reach them, and that is
where the break starts too; a pun's landing must go where the site's bytes point.
start_brk is randomised (x86_64: within 1 GiB above the program on this 6.18 kernel, 32 MiB
on older ones and on i386), so a place falls in a room above it in about room/(that range)
of a program's starts.  postgres's query__start, 254 MB above its site, lost its landing
to 256 MiB from start_brk in 5 and 7 of two series of 20 starts (it was 88-244 MiB above
start_brk), and with 32 MiB of randomisation would in every start (213-245 MiB above).
The runtime's area (6 MiB) right after an i386 program's image took the break itself in
11 of 40 starts: every brk() of the program failed.  A heap that meets a mapping is not
broken: the kernel refuses the brk and glibc's malloc goes on in mmapped memory
(sysmalloc: "try using it as a backup when MORECORE fails"; musl too); its main arena is
then not contiguous, and what is freed beyond the break is not trimmed back by brk.  But
a program that calls brk itself sees it fail.
Measured here: postgres backends' heaps stayed under 1 MiB (pgbench, sorts with work_mem
up to 256 MB, an index build), python3.11 running bench_real.py's script 1.1 MiB, a
Python building a 2-million-entry dict 102 MiB (with a page 16 or 64 MiB above its break
it ran as fast, on mmap beyond).  So 64 MiB, counted from the break as uemu last read the
maps: a program attached with a large heap keeps the same room to grow."""


@dataclass(frozen=True)
class Vma:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    dev: int
    """st_dev form (os.makedev of the major:minor the kernel prints)."""
    inode: int
    path: str

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"

    @property
    def private(self) -> bool:
        return self.perms[3] == "p"

    @property
    def file_backed(self) -> bool:
        return self.inode != 0

    @property
    def file_id(self) -> tuple[int, int]:
        return (self.dev, self.inode)

    def covers_offset(self, offset: int) -> bool:
        return self.offset <= offset < self.offset + (self.end - self.start)

    def offset_to_vaddr(self, offset: int) -> int:
        """Kernel: ``offset_to_vaddr()``: vm_start + off - (vm_pgoff << PAGE_SHIFT)."""
        return self.start + offset - self.offset

    def vaddr_to_offset(self, vaddr: int) -> int:
        return vaddr - self.start + self.offset


def is_probe_vma(vma: Vma, file_id: tuple[int, int], offset: int) -> bool:
    """Where a breakpoint for (file, offset) goes: file-backed, private, not
    writable, covering the offset.  Kernel: ``valid_vma(vma, true)``."""
    return (
        vma.file_backed
        and vma.file_id == file_id
        and vma.private
        and not vma.writable
        and vma.covers_offset(offset)
    )


def is_counter_vma(vma: Vma, file_id: tuple[int, int], ref_ctr_offset: int) -> bool:
    """Where a semaphore may be changed: same inode, writable and private,
    covering the counter's offset.  Kernel: ``valid_ref_ctr_vma()``."""
    return (
        ref_ctr_offset != 0
        and vma.file_backed
        and vma.file_id == file_id
        and vma.writable
        and vma.private
        and vma.covers_offset(ref_ctr_offset)
    )


def find_counter_vma(vmas: list[Vma], file_id: tuple[int, int], ref_ctr_offset: int) -> Vma | None:
    """The first counter VMA by address, as ``find_ref_ctr_vma()`` scans."""
    for vma in vmas:
        if is_counter_vma(vma, file_id, ref_ctr_offset):
            return vma
    return None


def parse_maps(text: str) -> list[Vma]:
    """Kernel: show_map() ends each line with a LF and escapes only a LF inside a
    path (as ``\\012``); any other byte, CR included, is printed as it is.
    Differs: a path holding the four characters ``\\012`` reads back as a LF;
    the VMA's file is still told by its device and inode, never by this path."""
    vmas = []
    for line in text.split("\n"):
        # address perms offset dev inode [path]; the path may contain spaces.
        fields = line.split(None, 5)
        if len(fields) < 5:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        major, minor = (int(x, 16) for x in fields[3].split(":"))
        path = fields[5].replace("\\012", "\n") if len(fields) == 6 else ""
        vmas.append(
            Vma(start, end, fields[1], int(fields[2], 16), os.makedev(major, minor), int(fields[4]), path)
        )
    return vmas


def read_maps(pid: int) -> list[Vma]:
    path = f"/proc/{pid}/maps"
    with errors.os_errors(path, pid), open(path, "rb") as stream:
        return parse_maps(os.fsdecode(stream.read()))


def vma_at(vmas: Sequence[Vma], address: int) -> Vma | None:
    """The mapping that holds ``address``, ``vmas`` in the order of the maps file (by
    address; mappings never overlap, so only the last to start at or below it can).  A
    bisection: the program's every signal asks (the jump path's ``signal_delivered``),
    and a JVM maps thousands."""
    i = bisect.bisect_right(vmas, address, key=_start) - 1
    return vmas[i] if i >= 0 and address < vmas[i].end else None


def _start(vma: Vma) -> int:
    return vma.start


def prot_at(vmas: Sequence[Vma], address: int) -> int:
    """PROT_* of the page at ``address`` as ``vmas`` say (the net's fallback restore
    puts them back); a text page's where no mapping is known."""
    vma = vma_at(vmas, address)
    if vma is None:
        return PROT_READ | PROT_EXEC
    return (PROT_READ if vma.readable else 0) | (PROT_WRITE if vma.writable else 0) | \
        (PROT_EXEC if vma.executable else 0)


def heap_growth(vmas: Iterable[Vma], start_brk: int | None) -> tuple[int, int] | None:
    """[start_brk, HEAP_ROOM above the heap's end in ``vmas``): where brk() may yet move
    the break; None when start_brk is not known."""
    if start_brk is None:
        return None
    return start_brk, max([start_brk, *(v.end for v in vmas if v.path == "[heap]")]) + HEAP_ROOM
