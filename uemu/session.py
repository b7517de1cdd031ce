"""The public API and the loop: one tracer, many tasks.

Shaped like strace's ``while (dispatch_event(next_event()))``: ``_step`` has
``tracer.py`` wait for one stop and hand it to the handler of its kind, which
decides a ``Resume``; ``Tracer.resume`` carries it out, the one place a task is
resumed (or parked, while everything is being stopped to leave).  What a stop
means is decided elsewhere: signals and hits in ``hits.py`` (with ``uprobes.py``
and ``xol.py``), task creation, exec and exit in ``tasks.py`` (through
``tracer.py``), mapping changes in ``mappings.py`` and ``arming.py`` by the mode
``mapmode.py`` chose, what the user asked for in ``selection.py``, reports in
``consumers.py``; ``ownsignals.py`` turns uemu's own signals into calls here.
Attaching is ``attach.py``'s; a spawned command's fork and exec are ``spawn.py``'s
(``spawn`` here runs it until its image is armed).

Hits of sites where a jump fits take the jump path (``jumps.py``: no stop, events
read from a ring by ``ringfeed.py``'s reader thread); ``jumphits.py`` starts and
stops that reader with the loop.

Leaving is the same code on every way out (end of the program, Ctrl-C,
SIGTERM, SIGHUP, --duration, --max-events, an exception inside uemu): stop
every thread, move threads out of XOL slots and jumped hits, restore every
byte from the files and lower every counter we raised (``Tracees.restore``),
detach each thread with the signal it is owed.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress

from . import errors, jumphits, ptrace, ring, spawn, xol
from .attach import Attacher
from .chrome import read_comm
from .consumers import Handler, Reporter
from .events import Event, LineShape
from .hits import Hits
from .jumphits import JumpHits
from .jumps import JumpPath
from .mapmode import ModeChoice
from .mappings import MappingMode
from .ownsignals import OwnSignals
from .selection import Selection
from .stops import StopKind
from .tampering import Watch
from .tasks import Task, Tracees
from .tracer import SEIZE_OPTIONS, Tracer
from .uprobes import Consumer, Uprobe, Uprobes


class Session:
    """Trace SDT probes (and raw uprobes) in a process tree.

    Use ``spawn(argv)`` or ``attach(pid)``, then ``run(handler)`` or iterate
    ``events()``; the session detaches cleanly on every way out.  ``probes`` are
    PROBE words (``[OBJECT:]PROVIDER:NAME`` globs, ``PATH:OFFSET[(REF)]``,
    ``PATH:SYMBOL[+OFF]``); none means every SDT probe.  A word that matches
    nothing yet stays pending for objects mapped later; ``strict`` makes that an
    error (``ProbeNotFound``).  ``mappings`` is a ``MappingMode`` (or its name);
    by default ``seccomp`` for spawn and ``rendezvous`` for attach.  ``jumps``
    (default) lets each site where a jump fits take the jump path; ``strings``
    (argument indexes) are copied at its hits, up to ``strsize`` bytes, for
    ``Event.read_string`` (``--format``'s %s).  ``drop``: a hit finding the ring
    full is dropped (counted) instead of waiting for room; ``ring_size``: its data
    bytes (``ring.parse_size``'s bounds; by default ``ring.DEFAULT_SIZE``).  ``count_only``: nothing
    but ``counts()`` is wanted (no handler, no events, no max_events): a jumped site
    then counts its hits in the target, without a record each (``--count``).
    """

    def __init__(
        self,
        probes: Sequence[str] = (),
        *,
        follow_forks: bool = False,
        decode_args: bool = True,
        mappings: str | None = None,
        warn: Callable[[str], None] | None = None,
        strict: bool = False,
        jumps: bool = True,
        strings: Sequence[int] = (),
        strsize: int = 256,
        drop: bool = False,
        ring_size: int | None = None,
        count_only: bool = False,
    ):
        self.warn = warn or (lambda message: print(f"uemu: warning: {message}", file=sys.stderr))
        self.uprobes = Uprobes(self.warn)
        self.selection = Selection(probes, self.uprobes, self.warn, strict)
        self.reporter = Reporter(decode_args, lambda: self.stop("max-events"), lambda: self.stop("error"))
        self._tracing_thread = threading.get_ident()
        """The thread that may use ptrace (the one that attaches or spawns)."""
        self.jump_hits: JumpHits | None = None
        self.jumps: JumpPath | None = None
        self._seize_options = SEIZE_OPTIONS
        self.modes = ModeChoice(mappings, self.uprobes, self.selection, self.warn)
        self.tracees = Tracees(self.uprobes, follow_forks, self.modes.needs_tracer, self.warn)
        self.tracer = Tracer(self.tracees, self.modes.stops_every_syscall)
        if jumps:
            self.jump_hits = JumpHits(self.uprobes, self.tracees, self.reporter, decode_args=decode_args,
                                      count_only=count_only, strings=strings, strsize=strsize, drop=drop,
                                      warn=self.warn, on_error=lambda: self.stop("error"))
            self.jumps = self.modes.jumps = self.jump_hits.path
            if ring_size is not None:
                self.jumps.ring_size = ring.checked_size(ring_size)
            self._seize_options |= jumphits.SEIZE_OPTIONS
        self.hits = Hits(self.tracer, self.uprobes, self.reporter, self.modes.on_hit, self.jumps)
        self.tracer.handlers[StopKind.SIGNAL] = self.hits.on_signal
        self.tracer.handlers[StopKind.INTERRUPT] = self.hits.on_interrupt
        if self.jump_hits is not None:
            self.tracer.handlers[StopKind.OTHER] = self.jump_hits.on_event
        self.watch = Watch(self.uprobes, self.warn)
        self.own_signals = OwnSignals(self.stop, self._look_soon, self.tracer.wake if jumps else None)
        self._attacher = Attacher(self.tracer, self.tracees, self.selection, self.modes, self.own_signals,
                                  self._seize_options, self.warn, self._tracing_began, self.close)
        self._removals: list[str] = []
        self._in_loop = False
        self._stop_reason: str | None = None
        self._traced = False
        """Tracing began (attach or spawn armed something): pending words are said at the end."""
        self._look_due = False
        self._closed = False

    # ---- public API -----------------------------------------------------------

    @property
    def exit_status(self) -> int | None:
        """The spawned command's exit status as the shell reports it (128+N for signal N)."""
        return self.tracees.exit_status

    @property
    def child_pid(self) -> int | None:
        """The spawned command's pid."""
        return self.tracees.child_pid

    @property
    def consumers(self) -> list[Consumer]:
        return self.selection.consumers

    def add_handler(self, handler: Handler) -> None:
        """Call ``handler(event)`` at each hit, while the thread is still stopped at
        the probe (so ``event.read_string`` works)."""
        self._wants_events()
        self.reporter.handlers.append(handler)

    def writes_lines(self, handler: Handler, write: Callable[[str], object], shape: LineShape) -> None:
        """``handler`` (added or given to ``run``) does nothing but ``write`` each event's
        line, made as ``shape``'s (``events.json_line``, ``events.text_line``): the jump
        path may then hand its hits to ``write`` as those lines, a batch a call, without
        an Event each (``Reporter.line_shape``; it does so only while ``handler`` is the
        one handler)."""
        self.reporter.line_out = (handler, write, shape)

    def _wants_events(self) -> None:
        if self.jumps is not None and self.jumps.count_only:
            raise errors.CountOnly()

    def attach(self, pid: int) -> Session:
        """Seize every thread of a running process and arm the probes; with
        ``follow_forks``, every process already descended from it too (children
        created later are followed as they come).  Call again for more processes."""
        self._tracing_thread = threading.get_ident()
        self._attacher.attach(pid)
        return self

    def spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> Session:
        """Start ``argv`` under trace, stopped before its first instruction, arm, resume."""
        tracker = self.modes.choose(MappingMode.SECCOMP, self.tracer).tracker
        self._tracing_thread = threading.get_ident()
        self.selection.check_spawn(argv, os.environ if env is None else env)
        self.own_signals.install()
        child = spawn.fork_waiting(argv, env, tracker.spawn_filter())
        self.tracees.child_pid = child.pid
        # Under the seccomp filter the command cannot live without a tracer (its mmaps
        # would fail): it dies with uemu.  Otherwise the net lets it outlive uemu.
        ptrace.seize(child.pid, self._seize_options | (ptrace.O_EXITKILL if tracker.needs_tracer else 0))
        self.tracees.tasks[child.pid] = Task(child.pid, child.pid, None, stopped=False)
        child.go()
        # Run until the new image is armed (or the child died trying).
        tasks = self.tracees.tasks
        self.tracer.run_until(lambda: not tasks or any(t.mm is not None and not t.arm_pending for t in tasks.values()))
        if self.exit_status is not None and not tasks:
            failure = child.exec_failure(argv)
            if failure is not None:
                raise failure
        self._tracing_began()
        return self

    def run(self, handler: Handler | None = None, *, duration: float | None = None,
            max_events: int | None = None) -> None:
        """Trace until the processes exit, a leaving signal, ``duration`` seconds or
        ``max_events`` hits; then detach (restoring everything)."""
        if handler is not None:
            self.add_handler(handler)
        if max_events is not None:
            self._wants_events()
        self.reporter.max_events = max_events
        self.own_signals.install()
        self.own_signals.start_timer(duration)
        if self.jump_hits is not None:
            self.jump_hits.start(None)
        try:
            while self._step():
                pass
        finally:
            self.close()

    def events(self, *, duration: float | None = None, max_events: int | None = None) -> Iterator[Event]:
        """Yield each hit as an Event; the session detaches when the iterator ends
        or is closed.  Events arrive after the thread resumed: arguments are
        decoded already, ``read_string`` is not available (use a handler)."""
        self._wants_events()
        queue = self.reporter.queue = deque()
        self.reporter.max_events = max_events
        self.own_signals.install()
        self.own_signals.start_timer(duration)
        if self.jump_hits is not None:
            self.jump_hits.start(self._wake)
        try:
            while True:
                while queue:
                    yield queue.popleft()
                if not self._step():
                    break
            self.close()  # the jump path's last hits join the queue
            while queue:
                yield queue.popleft()
        finally:
            self.close()

    def remove_probes(self, words: Sequence[str]) -> None:
        """Stop tracing what some PROBE words selected; the others go on.

        Kernel: ``uprobe_unregister()`` of those consumers: a site another word
        still wants keeps its breakpoint and its counter; a site nobody wants
        any more loses both.  Safe from a handler: done at the next stop, with
        every thread stopped.
        """
        self._removals.extend(words)
        if threading.get_ident() != self._tracing_thread:
            self._wake()  # a handler of the jump path's hits, in the reader thread
        elif not self._in_loop:
            self._remove_pending()

    def stop(self, reason: str = "stopped") -> None:
        """Ask the loop to end at the next stop (safe from a handler or a signal handler)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._wake()

    def thread_name(self, pid: int, tid: int) -> bytes | None:
        """A thread's name (/proc comm), as it was at its first hit where uemu read it
        then (the jump path's hits are handed out a little later)."""
        return read_comm(pid, tid) if self.jumps is None else self.jumps.thread_name(pid, tid)

    def counts(self) -> dict[str, int]:
        """Hits per probe name (``provider:name``) over all its sites."""
        totals = self.selection.counts()
        return totals if self.jump_hits is None else self.jump_hits.add_counts(totals)

    def close(self) -> None:
        """Leave: restore every process and detach (idempotent); then raise what a
        handler raised, if one did."""
        if self._closed:
            return
        self._closed = True
        try:
            try:
                self._detach_all()
            except Exception:
                self.tracer.abandon()  # never hold a thread stopped once uemu cannot go on
                raise
            if self.jump_hits is not None:
                self.jump_hits.stop()
            if self._traced:
                self.selection.report_pending()
        finally:
            if self.jumps is not None:
                self.jumps.close()
            self.own_signals.restore()
            for mm in self.tracees.unique_mms():
                mm.memory.close()
            child = self.tracees.child_pid
            if child is not None and self.exit_status is None:
                self.tracees.exit_status = spawn.wait_for_child(child)
        if self.reporter.error is not None:
            raise self.reporter.error

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _tracing_began(self) -> None:
        """Something was armed: the words still pending are said at the end."""
        self._traced = True

    # ---- uemu's own signals ----------------------------------------------------------------

    def _wake(self) -> None:
        """Make the loop's blocking wait return (an interrupt stop); from another thread
        of uemu (the ring's reader), through a signal to the tracing thread."""
        if threading.get_ident() != self._tracing_thread:
            self.own_signals.wake_from_another_thread()
            return
        self.tracer.wake()

    # ---- the loop ------------------------------------------------------------------------

    def _step(self) -> bool:
        """Wait for one stop and dispatch it, then what waits for a quiet moment;
        False when tracing is over."""
        if self._stop_reason is not None or not self.tracees.tasks:
            return False
        stop = self.tracer.next_stop()
        if stop is None:
            return False
        self._in_loop = True
        try:
            self.tracer.dispatch(stop)
        finally:
            self._in_loop = False
        if self._removals:
            self._remove_pending()
        if self.hits.waiting:
            self.hits.serve_waiting()
        if self._look_due:
            self._look_due = False
            self._look()
        return self._stop_reason is None and bool(self.tracees.tasks)

    def _remove_pending(self) -> None:
        words, self._removals = self._removals, []
        emptied = self.selection.remove(words)
        if emptied:
            self.tracer.while_parked(lambda: self._remove_uprobes(emptied))

    def _remove_uprobes(self, emptied: list[Uprobe]) -> None:
        """Kernel: ``uprobe_unregister()`` takes each uprobe out of every mm."""
        for mm in self.tracees.unique_mms():
            for uprobe in emptied:
                self.uprobes.remove_uprobe(mm, uprobe)

    def _look_soon(self) -> None:
        """The timer's turn (a signal handler: it only records and wakes)."""
        self._look_due = True
        self.tracer.wake()  # in the main thread (the timer's handler)

    def _look(self) -> None:
        """Mend what someone else changed of ours, with every thread stopped."""
        tampered = self.watch.look(self.tracees.unique_mms())
        if tampered:
            self.tracer.while_parked(lambda: self.watch.mend(tampered))

    # ---- leaving -------------------------------------------------------------------------

    def _detach_all(self) -> None:
        """Every thread stopped and out of the slots, every byte and counter back,
        then every task let go."""
        if not self.tracees.tasks or not self.tracer.stop_all():
            return
        for task in list(self.tracees.tasks.values()):
            if task.mm is not None and task.mm.xol_area is not None:
                with suppress(errors.TraceeGone):
                    xol.leave_slot(task, task.mm)
        self.hits.serve_waiting()  # each goes back to its site, the hit not taken
        if self.jump_hits is not None:
            self.jump_hits.move_out(self.tracer)  # out of the trampolines, their hits recorded
        self.tracer.drop_step_flags()  # move_out's steps too: a uemu killed once the handler is gone
        for mm in self.tracees.unique_mms():
            self.tracees.restore(mm, self.tracer.injectable)
        self.tracer.detach_all()

