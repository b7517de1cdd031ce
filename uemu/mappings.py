"""Noticing new mappings: the mmap/munmap call sites of uprobes, from a tracer.

Kernel: mm/mmap.c calls ``uprobe_mmap()`` for every new VMA and
``uprobe_munmap()`` for every range unmapped, so a library mapped later gets
its breakpoints (and its counters their delayed increments) before any code
in it runs.  A tracer has to be told that mappings changed.  Each
``MappingMode`` is one way of being told, behind one ``Tracker`` protocol:
whether tasks must stop at every syscall, whether the tracer must stay until
the processes exit, what the spawned command gets installed (a seccomp
filter), what is armed after each mm is (the dynamic linker's rendezvous).

``refresh`` then brings an mm up to date after a mapping syscall (its kind and
arguments, noted at its entry stop) or a rendezvous, and returns the VMAs the
core must arm.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from uemu import arch as arches
from uemu.arch.base import MappingSyscall

from . import ptrace, seccomp
from .maps import Vma, read_maps
from .objects import MappedObject, mapped_objects
from .tasks import Task
from .uprobes import Mm, Uprobe, Uprobes

Warn = Callable[[str], None]


class MappingMode(StrEnum):
    """How new mappings are noticed (README: "Noticing new mappings")."""

    SECCOMP = "seccomp"
    """run only: a filter in the child stops exactly the mapping syscalls."""
    RENDEZVOUS = "rendezvous"
    """A breakpoint where the dynamic linker reports each dlopen/dlclose, with every
    syscall stopped until that breakpoint is armed."""
    SYSCALL = "syscall"
    """A stop at every syscall's entry and exit."""
    EXEC = "exec"
    """Nothing after exec."""


@dataclass(frozen=True)
class MappingCall:
    """A mapping syscall between its entry and its exit: what it does and its arguments."""

    kind: MappingSyscall
    args: tuple[int, ...]


class Tracker:
    """One mapping mode's decisions; the defaults are those of ``exec``."""

    mode = MappingMode.EXEC
    needs_tracer = False
    """Whether every traced process needs a tracer until it exits."""
    attachable = True
    """Whether a running process can be traced so (a filter only goes in before exec)."""

    def stops_every_syscall(self, mm: Mm) -> bool:
        """Whether tasks of ``mm`` resume with PTRACE_SYSCALL."""
        return False

    def spawn_filter(self) -> bytes | None:
        """A seccomp filter for the spawned command to install before exec."""
        return None

    def armed(self, mm: Mm, uprobes: Uprobes) -> None:
        """Called after each arming of ``mm`` (attach, exec, a mapping change)."""

    def wants_breakpoint(self, mm: Mm) -> bool:
        """Whether ``armed`` may put a breakpoint of uemu's own into ``mm``."""
        return False

    def owns(self, uprobe: Uprobe) -> bool:
        """Whether a hit on ``uprobe`` means "mappings may have changed"."""
        return False


class SeccompTracker(Tracker):
    """The filter stops exactly mmap, munmap, mprotect, mremap, remap_file_pages and
    pkey_mprotect.  It cannot be removed, and a filtered syscall with no tracer fails
    with ENOSYS: the tracer stays until the processes exit (seccomp.py)."""

    mode = MappingMode.SECCOMP
    needs_tracer = True
    attachable = False

    def spawn_filter(self) -> bytes:
        return seccomp.mapping_filter(a for a in arches.all_arches() if a.backend and a.mapping_syscalls)


class SyscallTracker(Tracker):
    mode = MappingMode.SYSCALL

    def stops_every_syscall(self, mm: Mm) -> bool:
        return True


class RendezvousTracker(Tracker):
    """uemu's own breakpoint on the dynamic linker's ``r_brk`` (glibc's
    ``_dl_debug_state``), which it calls around every change of its object list,
    mapped and before the new objects' constructors run (gdb's method).

    ``r_brk`` is set once ld.so has started; until then (at exec) every syscall
    stops so start-up libraries are still seen.  A process with no dynamic
    linker has nothing to watch.
    """

    mode = MappingMode.RENDEZVOUS

    def __init__(self) -> None:
        self.breakpoints: set[Uprobe] = set()

    def stops_every_syscall(self, mm: Mm) -> bool:
        return not mm.rendezvous_armed

    def owns(self, uprobe: Uprobe) -> bool:
        return uprobe in self.breakpoints

    def wants_breakpoint(self, mm: Mm) -> bool:
        return not mm.rendezvous_armed and any(_is_linker(m) for m in mm.objects.values())

    def armed(self, mm: Mm, uprobes: Uprobes) -> None:
        if mm.rendezvous_armed:
            return
        linkers = [m for m in mm.objects.values() if _is_linker(m)]
        linker = next((m for m in linkers if m.symbol_runtime_address("_r_debug") is not None), None)
        if linker is None:
            mm.rendezvous_armed = not linkers
            return
        r_debug = linker.symbol_runtime_address("_r_debug")
        assert r_debug is not None
        word = mm.arch.word_size
        # struct r_debug { int r_version; struct link_map *r_map; ElfW(Addr) r_brk; ... }
        r_brk = int.from_bytes(mm.memory.read(r_debug + 2 * word, word), mm.arch.byte_order)
        vma = next((v for v in mm.vmas if v.start <= r_brk < v.end and v.file_id == linker.file_id), None)
        if vma is None:
            return  # not initialised yet
        uprobe = uprobes.register(linker, vma.vaddr_to_offset(r_brk), 0, None)
        uprobes.install_breakpoint(mm, uprobe, r_brk)
        self.breakpoints.add(uprobe)
        mm.rendezvous_armed = True


def _is_linker(mapped: MappedObject) -> bool:
    return os.path.basename(mapped.elf.path).startswith("ld")


def tracker(mode: MappingMode) -> Tracker:
    return {
        MappingMode.SECCOMP: SeccompTracker,
        MappingMode.RENDEZVOUS: RendezvousTracker,
        MappingMode.SYSCALL: SyscallTracker,
        MappingMode.EXEC: Tracker,
    }[mode]()


# ---- what a syscall did -------------------------------------------------------------


def note_syscall(task: Task, info: ptrace.SyscallInfo) -> None:
    """At a syscall's entry (or seccomp stop): if it may change file mappings, keep
    its kind and arguments for its exit stop."""
    mm = task.mm
    kind = mm.arch.mapping_syscalls.get(info.nr) if mm is not None else None
    if mm is not None and kind is not None:
        task.syscall = MappingCall(kind, mm.arch.mapping_syscall_arguments(kind, info.args, mm.memory.read))


def refresh(mm: Mm, call: MappingCall | None, result: int, uprobes: Uprobes, warn: Warn) -> list[Vma]:
    """Bring ``mm`` up to date after a mapping syscall (or a rendezvous: ``call``
    None) and run the munmap hook; the new VMAs, for the core's mmap hook.

    The kind decides what happened to the pages: munmap/mmap/remap drop our
    breakpoints in the range (the pages went away or were replaced), mremap
    moves them with the pages, mprotect keeps them.  Every VMA an mmap
    created is new, even one that replaced a mapping of the same shape
    (MAP_FIXED): the kernel runs its mmap hook on it.
    """
    old_keys = {_vma_key(v) for v in mm.vmas}
    vmas = read_maps(mm.pid)
    mapped = (0, 0)
    if call is None:
        _drop_vanished_breakpoints(mm, vmas, uprobes)
    elif call.kind in (MappingSyscall.MUNMAP, MappingSyscall.REMAP_FILE_PAGES):
        uprobes.munmap(mm, call.args[0], call.args[0] + call.args[1])
    elif call.kind in (MappingSyscall.MMAP, MappingSyscall.OLD_MMAP) and not _failed(result):
        mapped = (result, result + call.args[1])
        uprobes.munmap(mm, *mapped)
    elif call.kind is MappingSyscall.MREMAP and not _failed(result):
        uprobes.mremap(mm, call.args[0], call.args[1], result)
    mm.vmas = vmas
    new_vmas = [v for v in vmas if _vma_key(v) not in old_keys or (v.start < mapped[1] and v.end > mapped[0])]
    update_objects(mm, new_vmas, warn)
    return new_vmas


def _drop_vanished_breakpoints(mm: Mm, vmas: list[Vma], uprobes: Uprobes) -> None:
    """Without the syscall at hand (a rendezvous), tell from memory which of our
    breakpoints went away: one stays ours only where the same file offset is
    still mapped there and still holds our trap (an mprotect keeps the pages;
    a munmap or a remap does not)."""
    for vaddr, uprobe in list(mm.installed.items()):
        vma = next((v for v in vmas if v.start <= vaddr < v.end), None)
        kept = vma is not None and vma.file_id == uprobe.file_id and vma.vaddr_to_offset(vaddr) == uprobe.offset
        if kept:
            trap = mm.backend.trap_bytes(uprobe.original)
            try:
                kept = mm.memory.read(vaddr, len(trap)) == trap
            except OSError:
                kept = False
        if not kept:
            uprobes.munmap(mm, vaddr, vaddr + 1)


def update_objects(mm: Mm, new_vmas: list[Vma], warn: Warn) -> None:
    """Open objects seen for the first time; give every object its current VMAs.
    Argument readers of an object that moved are rebuilt (its symbols moved too)."""
    unknown = [v for v in new_vmas if v.file_backed and v.file_id not in mm.objects]
    if unknown:
        objects, warnings = mapped_objects(mm.pid, unknown)
        for warning in warnings:
            warn(warning)
        for mapped in objects:
            mm.objects[mapped.file_id] = mapped
    for mapped in mm.objects.values():
        vmas = [v for v in mm.vmas if v.file_id == mapped.file_id]
        if vmas != mapped.vmas:
            mapped.vmas = vmas
            for consumer in [c for c in mm.readers if c.probe.object == mapped.elf.path]:
                del mm.readers[consumer]


def _vma_key(vma: Vma) -> tuple[int, int, str, int, tuple[int, int]]:
    return (vma.start, vma.end, vma.perms, vma.offset, vma.file_id)


def _failed(result: int) -> bool:
    return -4096 < result < 0
