"""The periodic look for sites and counters of ours that someone else changed.

A kernel uprobe, bpftrace or gdb leaving a site we share writes the file's byte
back and lowers the counter we raised.  ``look`` only reads (the threads run);
what it finds is mended by ``mend`` once every thread is stopped
(``Tracer.while_parked``).  Breakpoints and counters themselves are
``uprobes.py``'s; the timer that asks for a look is ``ownsignals.py``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from . import errors
from .maps import read_maps, vma_at
from .uprobes import Mm, Uprobe, Uprobes, read_counter, write_counter


class Tamper(Enum):
    """What someone else did to a site or counter of ours: the file's bytes are back at
    a breakpoint (RESTORED), bytes that are neither ours nor the file's are there
    (CHANGED), a counter is below the count we raised (LOWERED)."""

    RESTORED = "restored"
    CHANGED = "changed"
    LOWERED = "lowered"


@dataclass(frozen=True)
class Tampering:
    what: Tamper
    vaddr: int
    uprobe: Uprobe | None
    found: bytes | int

    def describe(self) -> str:
        if self.uprobe is not None:
            where = f"the breakpoint at {self.vaddr:#x} ({self.uprobe.path}+{self.uprobe.offset:#x})"
            if self.what is Tamper.RESTORED:
                return (f"{where} was removed behind uemu's back (the file's bytes are there again: a kernel "
                        "uprobe, bpftrace or gdb leaving the same site?); armed again")
            assert isinstance(self.found, bytes)
            return f"{where} now holds {self.found.hex()}, neither ours nor the file's; uemu leaves that site alone"
        return (f"the semaphore at {self.vaddr:#x} is {self.found!r}, below the count uemu raised (a kernel uprobe "
                "leaving a shared site lowers a count it never raised); raised again")


class Watch:
    """Also says, once per process, when kernel uprobes are at work in it: a site
    probed by both is theirs while they stay."""

    def __init__(self, uprobes: Uprobes, warn: Callable[[str], None]):
        self.uprobes = uprobes
        self.warn = warn
        self._kernel_uprobes_said: set[int] = set()

    def look(self, mms: list[Mm]) -> list[Mm]:
        """The mms where something of ours was changed behind our back."""
        tampered = []
        for mm in mms:
            try:
                vmas = read_maps(mm.pid)
            except errors.NoSuchProcess:
                continue  # gone: its exit is on its way
            if mm.pid not in self._kernel_uprobes_said and any(v.path == "[uprobes]" for v in vmas):
                self._kernel_uprobes_said.add(mm.pid)
                self.warn(f"process {mm.pid}: kernel uprobes are active in it ([uprobes] is mapped); "
                          "a site probed by both takes the kernel's path and uemu sees no hit there")
            if self.find(mm):
                tampered.append(mm)
        return tampered

    def mend(self, mms: list[Mm]) -> None:
        """What ``look`` found in ``mms``, looked for again and undone: every thread is
        stopped now, and the program may have changed more since."""
        for mm in mms:
            self._mend(mm, self.find(mm))

    def find(self, mm: Mm) -> list[Tampering]:
        """What others changed of ours (read only, safe while the threads run).

        Differs: the kernel's "uprobes always wins" leaves it nothing to notice.  A
        kernel uprobe (or bpftrace, or gdb) placed on one of our sites finds our int3,
        takes the site's hits, and when it leaves writes the file's byte back and
        lowers the counter we raised (uprobe_write_opcode() -> update_ref_ctr(-1)).
        """
        found: list[Tampering] = []
        changed = {file_id for file_id, mapped in mm.objects.items() if mapped.file_changed()}
        for vaddr, uprobe in mm.installed.items():
            if uprobe.file_id in changed:
                continue  # not tampering: the file was cut or written, and the page went (objects.py)
            trap = mm.backend.trap_bytes(uprobe.original)
            try:
                current = mm.memory.read(vaddr, len(trap))
            except OSError:
                continue  # its page went; the munmap that took it is noticed elsewhere
            if current[:1] == uprobe.original[:1] and current != trap:
                # The file's first byte is back (a kernel uprobe writes back the byte it
                # found our int3 on; an x86 second int3 may still be there).
                found.append(Tampering(Tamper.RESTORED, vaddr, uprobe, current))
            elif current != trap:
                found.append(Tampering(Tamper.CHANGED, vaddr, uprobe, current))
        for vaddr, ours in mm.raised.items():
            vma = vma_at(mm.vmas, vaddr)
            if vma is not None and vma.file_id in changed:
                continue
            value = read_counter(mm, vaddr)
            if value is not None and value < ours:
                found.append(Tampering(Tamper.LOWERED, vaddr, None, value))
        return found

    def _mend(self, mm: Mm, found: list[Tampering]) -> None:
        """Undo what ``find`` found, once every thread is stopped: arm a
        restored site again, raise a lowered counter back to our count, let go of a
        site someone else now owns (lowering our count, as a removal does).  Each
        finding is said once per address."""
        for item in found:
            if (item.vaddr, item.what.value) not in mm.reported:
                mm.reported.add((item.vaddr, item.what.value))
                self.warn(f"process {mm.pid}: {item.describe()}")
            if item.what is Tamper.LOWERED:
                write_counter(mm, item.vaddr, mm.raised[item.vaddr])
                continue
            assert item.uprobe is not None
            if item.what is Tamper.RESTORED:
                mm.memory.write(item.vaddr, mm.backend.trap_bytes(item.uprobe.original))
            else:
                del mm.installed[item.vaddr]
                if mm.net is not None:
                    mm.net.remove_site(item.vaddr)
                self.uprobes.update_ref_ctr(mm, item.uprobe, -1)
