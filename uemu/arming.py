"""Arming an mm: what the PROBE words select in newly seen objects, the safety
net before the first breakpoint, then the kernel's mmap hook over the new VMAs.

Kernel: ``uprobe_mmap()`` runs for every new VMA of a file with uprobes; here a
new VMA is known only when the mapping mode notices it (``mappings.py``), and a
traced process first gets uemu's safety net (``net.py``), mapped by a system
call injected into a stopped thread (``inject.py``), and its journal
(``journal.py``).  Breakpoints and counters are ``uprobes.py``'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import errors, inject, mappings, process, xol
from .journal import Journal
from .mappings import Tracker
from .maps import Vma, read_maps
from .net import AREA_NAME, Net, map_area
from .runtime.layout import AREA_SIZE
from .selection import Selection
from .tasks import Task
from .uprobes import Mm, Uprobes

if TYPE_CHECKING:
    from .jumps import JumpPath


class Arming:
    """``task`` in each call is a thread of ``mm`` stopped where a system call may
    be injected."""

    def __init__(self, tracker: Tracker, uprobes: Uprobes, selection: Selection, warn: Callable[[str], None],
                 jumps: JumpPath | None = None):
        self.tracker = tracker
        self.jumps = jumps
        """The jump path, where the session uses it: its part of the area and its ring
        go in with the net, and it makes its system calls through ``task``."""
        self.uprobes = uprobes
        self.selection = selection
        self.warn = warn

    def arm(self, mm: Mm, new_vmas: list[Vma], task: Task) -> None:
        """Register what the PROBE words select in newly seen objects, put the net in
        before the first breakpoint, then run the kernel's mmap hook over the new
        VMAs (delayed counters, then breakpoints)."""
        for mapped in list(mm.objects.values()):
            if any(v.file_id == mapped.file_id for v in new_vmas):
                self.selection.register_object(mapped)
        if mm.net is None and (self.tracker.wants_breakpoint(mm) or any(
                u.consumers for v in new_vmas for u in self.uprobes.by_file.get(v.file_id, ()))):
            self._set_net(task, mm)
        if self.jumps is not None and mm.net is not None:
            self.jumps.calling(mm, inject.caller(task, mm))
            self.jumps.thread_seen(mm, task.tid)  # a thread pointer set since (a new image's TLS)
        self.uprobes.mmap(mm, sorted(new_vmas, key=lambda v: v.start))
        self.tracker.armed(mm, self.uprobes)

    def refresh(self, task: Task, mm: Mm, call: mappings.MappingCall | None, result: int) -> None:
        """The mappings changed (``call`` returned ``result``; None: not known which
        call, as at ld.so's rendezvous): read them and arm what is new."""
        self.arm(mm, mappings.refresh(mm, call, result, self.uprobes, self.warn), task)

    def _set_net(self, task: Task, mm: Mm) -> None:
        """The in-target runtime (``net.py``): mapped near the probed code (XOL slots
        reach it with rel32), its handler installed, before any breakpoint."""
        call = inject.caller(task, mm)
        near = next((v.start for v in mm.vmas if v.executable and v.file_id in self.uprobes.by_file), 0)
        hint = xol.gap_near(mm.vmas, near, AREA_SIZE, process.start_brk(mm.pid)) if near else None
        journal = Journal.for_process(mm.pid, self.warn)  # before anything goes in (``uemu repair``)
        try:
            area = map_area(mm.arch, call, hint or 0, _scratch_string(task, mm, AREA_NAME), mm.pid)
            mm.net = Net(mm.arch, area.start, mm.memory, journal=journal)  # ``call`` takes its stub from here on
            mm.net.install(call, os.getpid(), area_fd=area.fd)
        except errors.UemuError as err:
            mm.net = None
            raise errors.InTargetFailure(f"process {mm.pid}: cannot install uemu's safety net: {err.message}") from None
        mm.vmas = read_maps(mm.pid)
        if self.jumps is not None:
            try:
                self.jumps.setup(mm, mm.net, call)
            except errors.UemuError as err:
                self.warn(f"process {mm.pid}: no jump path, every site takes a breakpoint: {err.message}")


def _scratch_string(task: Task, mm: Mm, text: bytes) -> int:
    """Put a NUL-terminated string where a stopped thread's stack has room for a
    system call to read it: below the stack pointer and the x86-64 red zone, where
    the program keeps nothing while the thread is stopped."""
    regs = task.registers(mm.arch)
    regs.fetch(task.tid)
    address = (regs[mm.arch.sp_reg] - 512 - len(text)) & ~15
    mm.memory.write(address, text + b"\0")
    return address
