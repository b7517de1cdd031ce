"""The periodic look for sites and counters of ours that someone else changed.

A kernel uprobe, bpftrace or gdb leaving a site we share writes the file's byte
back and lowers the counter we raised.  ``look`` only reads (the threads run);
what it finds is mended by ``mend`` (``Uprobes.mend``) once every thread is
stopped (``Tracer.while_parked``).  The timer that asks for a look is
``ownsignals.py``'s.
"""

from __future__ import annotations

from collections.abc import Callable

from . import errors
from .maps import read_maps
from .uprobes import Mm, Uprobes


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
            if self.uprobes.find_tampering(mm):
                tampered.append(mm)
        return tampered

    def mend(self, mms: list[Mm]) -> None:
        """What ``look`` found in ``mms``, looked for again and undone: every thread is
        stopped now, and the program may have changed more since."""
        for mm in mms:
            self.uprobes.mend(mm, self.uprobes.find_tampering(mm))
