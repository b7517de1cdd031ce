"""The mapping mode a session runs under, and what the loop asks of it.

``mappings.py`` holds the modes (one ``Tracker`` each) and what a mapping syscall did;
``arming.py`` arms by the mode's decisions; ``syscalls.py`` handles the stops a mode
brings.  Here: which mode (the one asked for, else the default of the first ``attach``
(rendezvous) or ``spawn`` (seccomp)), its stop handlers registered with the tracer once
it is chosen, and the mode's answers to the tracer and the tasks (resume with syscall
stops? must the tracer stay?) before and after the choice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from . import errors, mappings
from .arming import Arming
from .mappings import MappingMode
from .selection import Selection
from .stops import StopKind
from .syscalls import SyscallStops
from .tasks import Task
from .tracer import Tracer
from .uprobes import Hit, Mm, Uprobes

if TYPE_CHECKING:
    from .jumps import JumpPath


def parse_mode(name: str | MappingMode) -> MappingMode:
    """A mode by its name, as the user wrote it."""
    try:
        return MappingMode(name)
    except ValueError:
        raise errors.BadInput(f"unknown mapping tracking {name!r}; one of {', '.join(MappingMode)}") from None


class ModeChoice:
    """``asked``: the mode the user named (None: each start's default)."""

    def __init__(self, asked: str | MappingMode | None, uprobes: Uprobes, selection: Selection,
                 warn: Callable[[str], None]):
        self._asked = parse_mode(asked) if asked is not None else None
        self._uprobes = uprobes
        self._selection = selection
        self._warn = warn
        self.jumps: JumpPath | None = None
        """The jump path, where the session uses it (arming sets it up in each mm)."""
        self.arming: Arming | None = None
        """The chosen mode's decisions and arming by them; None until the first start."""

    def choose(self, default: MappingMode, tracer: Tracer) -> Arming:
        """The mode (the one asked for, else ``default``), chosen once, and the handlers
        of the stops it brings."""
        if self.arming is None:
            self.arming = Arming(mappings.tracker(self._asked or default), self._uprobes, self._selection,
                                 self._warn, self.jumps)
            syscalls = SyscallStops(tracer, self._uprobes, self.arming)
            tracer.handlers[StopKind.SYSCALL] = syscalls.on_syscall
            tracer.handlers[StopKind.SECCOMP] = syscalls.on_seccomp
        return self.arming

    def needs_tracer(self) -> bool:
        """Whether every task must keep a tracer until it exits (the seccomp filter)."""
        return self.arming is not None and self.arming.tracker.needs_tracer

    def stops_every_syscall(self, mm: Mm) -> bool:
        return self.arming is not None and self.arming.tracker.stops_every_syscall(mm)

    def on_hit(self, task: Task, mm: Mm, hit: Hit) -> None:
        """Every hit of the trap path, first: one of the mode's own breakpoint (ld.so's
        rendezvous) means new objects."""
        assert self.arming is not None
        if self.arming.tracker.owns(hit.uprobe):
            self.arming.refresh(task, mm, None, 0)
