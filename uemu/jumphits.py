"""The jump path's hits beside the trap path's: what only the session's loop can do for them.

``jumps.py`` writes the jumps and reads the rings, ``ringfeed.py`` runs the reader
thread that hands their hits to the reporter.  Here is the wiring between those and the
loop: the reader started with the loop and stopped when it leaves (the rings' last hits
read once every site is restored, the losses said), threads inside a hit moved out
of it at leaving (``jumpout.py``), a thread's hits handed out at its exit stop while
/proc still names it, and the jump path's counts added to the trap
path's.  Waking the loop from the reader thread stays the session's (through
``ownsignals.py``'s signal); restoring the sites is ``tasks.py``'s ``Tracees.restore``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from . import ptrace
from .consumers import Reporter
from .jumpout import MoveOut
from .jumps import JumpPath
from .ringfeed import RingFeed
from .stops import GO_ON, Resume, Stop
from .tasks import Task, Tracees
from .tracer import Tracer
from .uprobes import Uprobes

SEIZE_OPTIONS = ptrace.O_TRACEEXIT
"""What the jump path adds to the seize options: a stop before each thread exits."""


class JumpHits:
    """The jump path of one session (``path``) and the reader of its rings (``feed``)."""

    def __init__(self, uprobes: Uprobes, tracees: Tracees, reporter: Reporter, *, decode_args: bool,
                 count_only: bool, strings: Sequence[int], strsize: int, drop: bool,
                 warn: Callable[[str], None], on_error: Callable[[], None]):
        self.path = JumpPath(uprobes, decode_args=decode_args, count_only=count_only, strings=strings,
                             strsize=strsize, drop=drop, warn=warn)
        uprobes.jumps = self.path
        self.path.reported_pid = tracees.reported_pid
        self.path.line_shape = reporter.line_shape
        self.feed = RingFeed(self.path.drain, self.path.wait, reporter.deliver, on_error=on_error,
                             wake=self.path.wake)
        reporter.lock = self.feed.lock
        reporter.before = self.feed.before
        self.warn = warn
        self.moved = 0
        """Threads brought out of a hit at leaving (``move_out``)."""

    def start(self, on_ready: Callable[[], None] | None) -> None:
        """The reader thread hands the jump path's hits to the reporter (in it, for
        handlers; ``on_ready`` wakes the loop for ``events()``'s queue)."""
        if not self.feed.running:
            self.feed.on_ready = on_ready
            self.feed.start()

    def move_out(self, tracer: Tracer) -> None:
        """Leaving, every thread parked: those inside a hit run on out of it, before the
        sites go (uemu/jumpout.py); the reader goes on draining the ring meanwhile."""
        self.moved += MoveOut(tracer, self.path, self.warn).run()

    def stop(self) -> None:
        """Every hit left in the rings (the sites are restored: no new one comes), and
        the losses, said exactly."""
        path = self.path
        self.feed.stop(lambda take: path.drain(take, final=True))
        lost = path.lost()
        if lost:
            self.warn(f"{lost} hit{'s' if lost > 1 else ''} of the jump path lost (the event ring was full "
                      "under --drop, or a thread left a hit midway)")

    def on_event(self, task: Task, stop: Stop) -> Resume:
        """An event stop of no other kind; before a thread exits (PTRACE_EVENT_EXIT), its
        hits go out while /proc still names it (chrome's thread names)."""
        if stop.status >> 16 == ptrace.EVENT_EXIT:
            self.feed.before(time.monotonic_ns())
        return GO_ON

    def add_counts(self, totals: dict[str, int]) -> dict[str, int]:
        """The trap path's hits per probe name, with the jump path's added."""
        for name, hits in self.path.counted().items():
            totals[name] = totals.get(name, 0) + hits
        return totals
