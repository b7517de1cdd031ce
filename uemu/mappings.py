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

Which mapping syscalls are worth a look (``matters``, decided at the entry
stop).  Measured on ``java -version``: 445 mapping syscalls, most of them
mprotects of the JVM's anonymous memory; an exit stop and a read of
/proc/PID/maps after each took half the tracer's time (now: 20).  Yet
the kernel's hooks do something only for VMAs of a file that has uprobes
(``valid_vma``/``valid_ref_ctr_vma`` and the inode lookup in
``uprobe_mmap``), and VMAs of different files never merge.  So a call is
let through without its exit stop when it cannot touch such a VMA:

- a range (munmap, mprotect, remap_file_pages, an mremap's source, a
  MAP_FIXED mmap's or MREMAP_FIXED target) that meets no VMA of a *watched*
  file, one with a uprobe that has consumers (or is uemu's own);
- an anonymous or MAP_SHARED mmap that replaces nothing (shared VMAs hold
  neither breakpoints nor counters);
- a private mmap of a file named by its fd (``/proc/TID/fd/N`` at the entry
  stop) that is no regular file, is not ELF, or is an object already read
  whose probes no PROBE word selected.

Everything else (a watched file's VMAs touched, an ELF file not seen yet)
gets the exit stop and a fresh read of the maps, because what the kernel
made of it (splits, merges, the range an mmap without MAP_FIXED got) is
exactly what the core needs: ``find_counter_vma`` takes the first counter
VMA by address, ``Uprobes.mmap`` arms exactly the new VMAs.  Keeping an exact
model of every VMA from the arguments alone would mean re-implementing the
kernel's merge rules (anon_vma compatibility among them); reading the maps
when a watched file is concerned costs a few dozen reads per start-up.

What that leaves in ``mm.vmas``: the private VMAs of watched files exactly
as the kernel has them (a file becomes watched when it is first read, from
fresh maps, and every change to its private VMAs is read since), everything
else as of the last read (an anonymous mapping or a shared one may be
missing, an unwatched file's VMA stale).  Nothing of those decides anything
about breakpoints or counters; the XOL area's gap is looked for in fresh
maps.  Differs: another thread may ``dup2`` another
file onto the fd between the entry stop and the kernel's look at it; a
program racing its own mmap so would have a mapping the core was not told of.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from uemu import arch as arches
from uemu.arch.base import MappingSyscall

from . import ptrace, seccomp
from .maps import Vma, read_maps, vma_at
from .objects import MappedObject, mapped_objects
from .tasks import Task
from .uprobes import FileId, Mm, Uprobe, Uprobes

Warn = Callable[[str], None]

_MREMAP_FIXED = 0x02


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
        vma = vma_at(mm.vmas, r_brk)
        if vma is None or vma.file_id != linker.file_id:
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


def note_syscall(task: Task, info: ptrace.SyscallInfo, uprobes: Uprobes) -> None:
    """At a syscall's entry (or seccomp stop): if it may change mappings the core
    watches (``matters``), keep its kind and arguments for its exit stop; else
    the task goes on without one."""
    mm = task.mm
    kind = mm.arch.mapping_syscalls.get(info.nr) if mm is not None else None
    if mm is None or kind is None:
        return
    call = MappingCall(kind, mm.arch.mapping_syscall_arguments(kind, info.args, mm.memory.read))
    if matters(mm, call, uprobes, lambda fd: fd_file(task.tid, fd)):
        task.syscall = call


@dataclass(frozen=True)
class FdFile:
    """The file an fd-backed mmap is about to map, as its descriptor shows it."""

    file_id: FileId | None
    """(device, inode); None when it could not be told (then it may be anything)."""
    elf: bool
    """Whether it starts as an ELF file does (or could not be read)."""


FdLookup = Callable[[int], FdFile | None]
"""fd -> the file behind it, or None where no probe can be: no such descriptor,
or not a regular file (a device, a pipe)."""


def matters(mm: Mm, call: MappingCall, uprobes: Uprobes, fd_lookup: FdLookup) -> bool:
    """Whether ``call`` may create, change or remove a VMA of a watched file, or map
    a file whose probes are not read yet: then its exit stop refreshes ``mm``."""
    watched = _watched_files(uprobes)

    def touches(start: int, length: int) -> bool:
        end = start + length
        return any(v.start < end and start < v.end and v.file_id in watched for v in mm.vmas)

    args = call.args
    if call.kind in (MappingSyscall.MMAP, MappingSyscall.OLD_MMAP):
        start, length, _prot, flags, fd = args[:5]
        if flags & seccomp.MAP_FIXED and touches(start, length):
            return True
        if not seccomp.maps_file_privately(flags):
            return False
        fd &= 0xFFFFFFFF  # the kernel's fget() takes an unsigned int
        found = fd_lookup(fd) if fd < 0x80000000 else None
        if found is None:
            return False
        return found.file_id in watched or (found.file_id not in mm.objects and found.elf)
    if call.kind is MappingSyscall.MREMAP:
        old_start, old_size, new_size, flags, new_start = args[:5]
        # An old size of 0 duplicates a shared mapping: the old range still names it.
        return touches(old_start, max(old_size, 1)) or bool(flags & _MREMAP_FIXED and touches(new_start, new_size))
    return touches(args[0], args[1])  # munmap, mprotect, remap_file_pages


def _watched_files(uprobes: Uprobes) -> set[FileId]:
    """The files whose VMAs the core acts on: those with a uprobe someone still wants."""
    return {f for f, found in uprobes.by_file.items() if any(u.consumers or u.internal for u in found)}


def fd_file(tid: int, fd: int) -> FdFile | None:
    """The file behind a task's descriptor, through /proc/TID/fd (the task's own
    table: a process sharing the mm need not share its files)."""
    link = f"/proc/{tid}/fd/{fd}"
    try:
        st = os.stat(link)
    except OSError as err:
        return None if err.errno == errno.ENOENT else FdFile(None, True)
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        opened = os.open(link, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return FdFile((st.st_dev, st.st_ino), True)
    try:
        magic = os.pread(opened, 4, 0)
    except OSError:
        magic = b"\x7fELF"
    finally:
        os.close(opened)
    return FdFile((st.st_dev, st.st_ino), magic == b"\x7fELF")


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
        _drop_vanished(mm, vmas, uprobes)
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


def _drop_vanished(mm: Mm, vmas: list[Vma], uprobes: Uprobes) -> None:
    """Without the syscall at hand (a rendezvous), tell from memory which of our
    breakpoints went away: one stays ours only where the same file offset is
    still mapped there and still holds our trap (an mprotect keeps the pages;
    a munmap or a remap does not).  The same for the jump path's jumps.  A
    counter we raised stays ours only where the same file offset is still mapped
    there (``mm.vmas`` are the VMAs before): a library dlclosed since took its
    raised counters with it, and one dlopened again at the same address starts
    from the file's zero."""
    for vaddr, uprobe in [*mm.installed.items(), *mm.jumped.items()]:
        kept = _file_offset(vmas, vaddr) == (uprobe.file_id, uprobe.offset)
        if kept and vaddr in mm.jumped:
            assert uprobes.jumps is not None
            kept = uprobes.jumps.holds(mm, vaddr)
        elif kept:
            trap = mm.backend.trap_bytes(uprobe.original)
            try:
                kept = mm.memory.read(vaddr, len(trap)) == trap
            except OSError:
                kept = False
        if not kept:
            uprobes.munmap(mm, vaddr, vaddr + 1)
    for vaddr in list(mm.raised):
        now = _file_offset(vmas, vaddr)
        if now is None or now != _file_offset(mm.vmas, vaddr):
            uprobes.munmap(mm, vaddr, vaddr + 1)


def _file_offset(vmas: list[Vma], vaddr: int) -> tuple[FileId, int] | None:
    """The file and offset mapped at ``vaddr``, if a file is."""
    vma = vma_at(vmas, vaddr)
    if vma is None or not vma.file_backed:
        return None
    return vma.file_id, vma.vaddr_to_offset(vaddr)


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
    by_file: dict[FileId, list[Vma]] = {}
    for vma in mm.vmas:
        if vma.file_backed:
            by_file.setdefault(vma.file_id, []).append(vma)
    for mapped in mm.objects.values():
        vmas = by_file.get(mapped.file_id, [])
        if vmas != mapped.vmas:
            mapped.vmas = vmas
            for consumer in [c for c in mm.readers if c.probe.object == mapped.elf.path]:
                del mm.readers[consumer]


def _vma_key(vma: Vma) -> tuple[int, int, str, int, tuple[int, int]]:
    return (vma.start, vma.end, vma.perms, vma.offset, vma.file_id)


def _failed(result: int) -> bool:
    return -4096 < result < 0
