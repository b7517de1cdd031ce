"""Objects mapped in a process: which ELF files /proc/PID/maps shows, opened
as the process maps them, and where their file offsets are at run time.

sdt.py knows ELF files and their notes; this module knows processes.  A
tracee chooses what it maps, so every file is opened only when it is the very
file of the mapping and a regular one (a mapped device is not opened at all).
"""

from __future__ import annotations

import os
import stat
import weakref
from dataclasses import dataclass

from . import errors
from .maps import Vma, find_counter_vma, is_probe_vma
from .sdt import ElfObject, open_elf


@dataclass
class MappedObject:
    """An ELF object as one process maps it: the file, its identity, its VMAs."""

    elf: ElfObject
    file_id: tuple[int, int]
    vmas: list[Vma]
    ctime_ns: int = 0
    """The file's change time when uemu opened it (``elf.source`` stays open)."""

    def file_changed(self) -> bool:
        """Whether the file was written or truncated since uemu opened it.  Kernel:
        truncation drops the file's pages from every mapping, private copies too
        (``truncate_pagecache()``), and a breakpoint on them goes with them, never to
        come back; a kernel uprobe leaving a site does not touch the file."""
        try:
            return os.stat(self.elf.source).st_ctime_ns != self.ctime_ns
        except OSError:
            return True

    def runtime_address(self, offset: int) -> int | None:
        """Where the byte at file ``offset`` is in the process's code: the first
        probe VMA covering it (the one the kernel would patch)."""
        for vma in self.vmas:
            if is_probe_vma(vma, self.file_id, offset):
                return vma.offset_to_vaddr(offset)
        return None

    def runtime_semaphore(self, ref_ctr_offset: int) -> int | None:
        vma = find_counter_vma(self.vmas, self.file_id, ref_ctr_offset)
        return vma.offset_to_vaddr(ref_ctr_offset) if vma else None

    @property
    def load_bias(self) -> int:
        """Runtime minus link-time address, from the first VMA that maps a segment."""
        for vma in self.vmas:
            vaddr = self.elf.vaddr(vma.offset)
            if vaddr is not None:
                return vma.start - vaddr
        return 0

    def symbol_runtime_address(self, name: str, near: int | None = None) -> int | None:
        """Where a symbol is in this process; ``near`` is the link-time address of the
        code referring to it (picks the right one of several same-named statics)."""
        vaddr = self.elf.symbol_address(name, near)
        return None if vaddr is None else vaddr + self.load_bias


def mapped_objects(pid: int, vmas: list[Vma]) -> tuple[list[MappedObject], list[str]]:
    """Every ELF file mapped in ``pid``, with warnings for files we could not open.

    Each file is opened through ``/proc/PID/map_files`` (the very file the
    mapping holds, even deleted or in another mount namespace), else through
    ``/proc/PID/root``, and checked against the (device, inode) of its mapping.
    """
    by_file: dict[tuple[int, int], list[Vma]] = {}
    for vma in vmas:
        if vma.file_backed and vma.path.startswith("/"):
            by_file.setdefault(vma.file_id, []).append(vma)
    objects, warnings = [], []
    for file_id, file_vmas in by_file.items():
        first = file_vmas[0]
        path = first.path.removesuffix(" (deleted)")
        fd = _open_mapped_file(pid, first)
        if fd is None:
            warnings.append(f"{path}: cannot open it as mapped in process {pid}; its probes are not listed")
            continue
        try:
            elf = open_elf(path, f"/proc/self/fd/{fd}")
        except errors.UemuError as err:
            os.close(fd)
            if not isinstance(err, errors.ElfFormatError):  # mapped data files (locales, fonts) are not ELF
                warnings.append(err.message)
            continue
        weakref.finalize(elf, os.close, fd)
        objects.append(MappedObject(elf, file_id, file_vmas, os.fstat(fd).st_ctime_ns))
    return objects, warnings


def _open_mapped_file(pid: int, vma: Vma) -> int | None:
    """A descriptor of the mapping's own file, or None.

    The file is opened through /proc and the descriptor kept: a
    ``map_files`` entry disappears as soon as the mapping is split or
    replaced (ld.so remaps segments over its first reservation), but the
    symbols are read later, on first need.
    """
    candidates = (
        f"/proc/{pid}/map_files/{vma.start:x}-{vma.end:x}",
        f"/proc/{pid}/root{vma.path}",
    )
    for candidate in candidates:
        try:
            # stat before open: a mapped device may act on open.
            if not _is_mapped_file(os.stat(candidate), vma):
                continue
            fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError:
            continue
        if _is_mapped_file(os.fstat(fd), vma):
            return fd
        os.close(fd)  # replaced between stat and open
    return None


def _is_mapped_file(st: os.stat_result, vma: Vma) -> bool:
    """Overlay and bind mounts can show another file under the same path:
    only the mapping's (device, inode) proves it is the mapped file."""
    return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == vma.file_id

