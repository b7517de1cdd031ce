"""The public API and the event loop: one tracer, many tasks.

Shaped like strace's ``while (dispatch_event(next_event()))``: ``_next_stop``
makes the one blocking ``waitpid(-1, __WALL)`` and classifies the status
(``stops.py``); ``_dispatch`` hands the stop to the handler of its kind, which
decides a ``Resume``; ``_resume`` carries it out, the one place a task is
resumed (or parked, while everything is being stopped to leave).  What a stop
means is decided elsewhere: the hit in ``uprobes.py`` and ``xol.py``, task
creation, exec and exit in ``tasks.py``, mapping changes in ``mappings.py``,
what the user asked for in ``selection.py``, reports in ``consumers.py``.

Hits of sites where a jump fits take the jump path (``jumps.py``: no stop, events
read from a ring by ``ringfeed.py``'s reader thread); the session only calls its seam
where only the session can tell (see jumps.py's table).

Leaving is the same code on every way out (end of the program, Ctrl-C,
SIGTERM, SIGHUP, --duration, --max-events, an exception inside uemu): stop
every thread, move threads out of XOL slots, restore every byte from the
files, lower every counter we raised, detach each thread with the signal it
is owed.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import suppress
from types import FrameType
from typing import ClassVar

from uemu.arch.base import StepEnd

from . import errors, inject, mappings, process, ptrace, sigtrap, spawn, xol
from .chrome import read_comm
from .consumers import Handler, Reporter
from .events import Event
from .journal import Journal
from .jumps import JumpPath
from .mappings import MappingMode, Tracker
from .maps import Vma, read_maps
from .net import AREA_NAME, Net, map_area
from .ringfeed import RingFeed
from .runtime.layout import AREA_SIZE
from .selection import Selection
from .stops import GO_ON, KEEP, Resume, ResumeOp, Stop, StopKind, classify, deliver
from .tasks import Task, Tracees
from .uprobes import Consumer, Hit, Mm, Uprobes

_SEIZE_OPTIONS = (
    ptrace.O_TRACESYSGOOD
    | ptrace.O_TRACECLONE
    | ptrace.O_TRACEFORK
    | ptrace.O_TRACEVFORK
    | ptrace.O_TRACEEXEC
    | ptrace.O_TRACESECCOMP
)
_LEAVING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_SignalHandler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None
"""What ``signal.signal`` returns and takes back (None: not set from Python)."""
CHECK_INTERVAL = 1.0
"""Seconds between looks for sites and counters changed behind uemu's back."""

MAPPINGS_MODES = tuple(mode.value for mode in MappingMode)
WAKE_SIGNAL = signal.SIGURG
"""Sent by another thread of uemu (the ring's reader) to the tracing thread, whose
handler then wakes the loop: only the tracing thread may use ptrace."""


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
    full is dropped (counted) instead of waiting for room.
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
    ):
        self.warn = warn or (lambda message: print(f"uemu: warning: {message}", file=sys.stderr))
        self.uprobes = Uprobes(self.warn)
        self.selection = Selection(probes, self.uprobes, self.warn, strict)
        self.reporter = Reporter(decode_args, lambda: self.stop("max-events"))
        self.tracees = Tracees(self.uprobes, follow_forks, self._needs_tracer, self.warn)
        self._mode = _mode(mappings) if mappings is not None else None
        self.tracker: Tracker | None = None
        """The mapping mode's decisions, chosen by ``attach`` or ``spawn``."""
        self._removals: list[str] = []
        self._in_loop = False
        self._stop_reason: str | None = None
        self._stopping = False
        self._passthrough = False
        self._old_handlers: dict[int, _SignalHandler] = {}
        self._deadline: float | None = None
        self._waiting: list[tuple[Task, Hit]] = []
        """Threads stopped at a hit until an XOL slot is free."""
        self._traced = False
        """Tracing began (attach or spawn armed something): pending words are said at the end."""
        self._check_due = False
        self._kernel_uprobes_said: set[int] = set()
        self._closed = False
        self._tracer = threading.get_ident()
        """The thread that may use ptrace (the one that attaches or spawns)."""
        self.jumps: JumpPath | None = None
        self._feed: RingFeed | None = None
        self._seize_options = _SEIZE_OPTIONS
        if jumps:
            self.jumps = JumpPath(self.uprobes, decode_args=decode_args, strings=strings, strsize=strsize,
                                  drop=drop, warn=self.warn)
            self.uprobes.jumps = self.jumps
            self.jumps.reported_pid = self.tracees.reported_pid
            self._feed = RingFeed(self.jumps.drain, self.jumps.wait, self.reporter.deliver,
                                  on_error=lambda: self.stop("error"))
            self.reporter.lock = self._feed.lock
            self.reporter.before = self._feed.before
            self._seize_options |= ptrace.O_TRACEEXIT

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
        self.reporter.handlers.append(handler)

    def attach(self, pid: int) -> Session:
        """Seize every thread of a running process and arm the probes; with
        ``follow_forks``, every process already descended from it too (children
        created later are followed as they come).  Call again for more processes."""
        self._tracer = threading.get_ident()
        self._attach_process(pid)
        if self.tracees.follow_forks:
            self._attach_descendants(pid)
        return self

    def _attach_descendants(self, root: int) -> None:
        """Every process whose parent chain reaches ``root``, found from /proc and
        attached by the same rules, until a look finds no new one (a process
        forked meanwhile by a traced one is auto-attached already)."""
        tried: set[int] = set()
        while True:
            traced = {task.pid for task in self.tracees.tasks.values()}
            fresh = [pid for pid in process.descendants(root) if pid not in tried and pid not in traced]
            if not fresh:
                return
            for pid in fresh:
                tried.add(pid)
                try:
                    self._attach_process(pid, descendant=True)
                except (errors.NotFound, errors.TraceeGone):
                    continue  # it ended meanwhile
                except (errors.AttachRefused, errors.AccessDenied, errors.UnsupportedArch) as err:
                    self.warn(f"{err.message}; its probes are not traced")

    def _attach_process(self, pid: int, descendant: bool = False) -> None:
        process.check_attachable(pid)
        self._choose_mode(MappingMode.RENDEZVOUS)
        assert self.tracker is not None
        if not self.tracker.attachable:
            raise errors.BadInput(f"{self.tracker.mode} mapping tracking needs 'uemu run': "
                                  "a running process cannot get the filter")
        # Each word must match before the process is touched; the objects are read
        # again once it is stopped (it may have exec'd or mapped more meanwhile).
        process.executable_arch(pid)
        if not descendant:
            self.selection.check_process(self.tracees.objects_of(pid, read_maps(pid)), pid)
        self._install_signal_handlers()
        self._stopping = True
        try:
            self._seize_all(pid)
            mm = self.tracees.tasks[pid].mm or self.tracees.new_mm(pid, process.executable_arch(pid))
            for task in self.tracees.tasks.values():
                if task.pid == pid and task.mm is None:
                    task.mm = mm
            self._arm(mm, mm.vmas, self._injectable(mm))
            if mm.net is not None:
                self._warn_sigtrap_blocked(pid)
        except (errors.NotFound, errors.TraceeGone):
            if not descendant:
                self.close()
            raise  # a descendant that ended meanwhile: its tasks report their exits
        except BaseException:
            self.close()
            raise
        self._traced = True
        self._resume_parked()

    def _warn_sigtrap_blocked(self, pid: int) -> None:
        """What the kernel leaves no way around: a thread that blocks SIGTRAP when it
        meets a breakpoint of a tracer that is gone is killed (force_sig_fault() resets
        the action to the default), whatever the net inside the process could do."""
        blocking = [t.tid for t in self.tracees.tasks.values() if t.pid == pid and process.blocks_sigtrap(t.tid)]
        if blocking:
            self.warn(f"process {pid}: thread{'s' if len(blocking) > 1 else ''} "
                      f"{', '.join(map(str, blocking))} block{'' if len(blocking) > 1 else 's'} SIGTRAP: "
                      "if uemu dies, such a thread meeting one of its breakpoints is killed by the kernel")

    def spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> Session:
        """Start ``argv`` under trace, stopped before its first instruction, arm, resume."""
        self._choose_mode(MappingMode.SECCOMP)
        assert self.tracker is not None
        self._tracer = threading.get_ident()
        self.selection.check_spawn(argv, os.environ if env is None else env)
        self._install_signal_handlers()
        child = spawn.fork_waiting(argv, env, self.tracker.spawn_filter())
        self.tracees.child_pid = child.pid
        # Under the seccomp filter the command cannot live without a tracer (its mmaps
        # would fail): it dies with uemu.  Otherwise the net lets it outlive uemu.
        ptrace.seize(child.pid, self._seize_options | (ptrace.O_EXITKILL if self.tracker.needs_tracer else 0))
        self.tracees.tasks[child.pid] = Task(child.pid, child.pid, None, stopped=False)
        child.go()
        # Run until the new image is armed (or the child died trying).
        tasks = self.tracees.tasks
        self._run_until(lambda: not tasks or any(t.mm is not None and not t.arm_pending for t in tasks.values()))
        if self.exit_status is not None and not tasks:
            failure = child.exec_failure(argv)
            if failure is not None:
                raise failure
        self._traced = True
        return self

    def run(self, handler: Handler | None = None, *, duration: float | None = None,
            max_events: int | None = None) -> None:
        """Trace until the processes exit, a leaving signal, ``duration`` seconds or
        ``max_events`` hits; then detach (restoring everything)."""
        if handler is not None:
            self.add_handler(handler)
        self.reporter.max_events = max_events
        self._install_signal_handlers()
        self._start_timer(duration)
        self._start_feed(None)
        try:
            while self._step():
                pass
        finally:
            self.close()

    def events(self, *, duration: float | None = None, max_events: int | None = None) -> Iterator[Event]:
        """Yield each hit as an Event; the session detaches when the iterator ends
        or is closed.  Events arrive after the thread resumed: arguments are
        decoded already, ``read_string`` is not available (use a handler)."""
        queue = self.reporter.queue = deque()
        self.reporter.max_events = max_events
        self._install_signal_handlers()
        self._start_timer(duration)
        self._start_feed(self._wake)
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
        if threading.get_ident() != self._tracer:
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
        return self.selection.counts()

    def close(self) -> None:
        """Leave: restore every process and detach (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._detach_all()
            self._stop_feed()
            if self._traced:
                self.selection.report_pending()
        finally:
            if self.jumps is not None:
                self.jumps.close()
            self._restore_signal_handlers()
            for mm in self.tracees.unique_mms():
                mm.memory.close()
            child = self.tracees.child_pid
            if child is not None and self.exit_status is None:
                self.tracees.exit_status = spawn.wait_for_child(child)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- the jump path's events ---------------------------------------------------------

    def _start_feed(self, on_ready: Callable[[], None] | None) -> None:
        """The reader thread hands the jump path's hits to the reporter (in it, for
        handlers; ``on_ready`` wakes the loop for ``events()``'s queue)."""
        if self._feed is not None and not self._feed.running:
            self._feed.on_ready = on_ready
            self._feed.start()

    def _stop_feed(self) -> None:
        """Every hit left in the rings (the sites are restored: no new one comes), and
        the losses, said exactly."""
        if self._feed is None or self.jumps is None:
            return
        jumps = self.jumps
        self._feed.stop(lambda deliver: jumps.drain(deliver, final=True))
        lost = jumps.lost()
        if lost:
            self.warn(f"{lost} hit{'s' if lost > 1 else ''} of the jump path lost (the event ring was full "
                      "under --drop, or a thread left a hit midway)")

    # ---- mapping modes ---------------------------------------------------------------

    def _choose_mode(self, default: MappingMode) -> None:
        if self.tracker is None:
            self.tracker = mappings.tracker(self._mode or default)

    def _needs_tracer(self) -> bool:
        return self.tracker is not None and self.tracker.needs_tracer

    def _stops_every_syscall(self, task: Task) -> bool:
        mm = task.mm
        if mm is None or self._passthrough or self.tracker is None:
            return False
        return self.tracker.stops_every_syscall(mm)

    # ---- arming ------------------------------------------------------------------------

    def _arm(self, mm: Mm, new_vmas: list[Vma], task: Task) -> None:
        """Register what the PROBE words select in newly seen objects, put the net in
        before the first breakpoint, then run the kernel's mmap hook over the new
        VMAs (delayed counters, then breakpoints).  ``task`` is a thread of ``mm``
        stopped where a syscall may be injected (``inject.py``)."""
        for mapped in list(mm.objects.values()):
            if any(v.file_id == mapped.file_id for v in new_vmas):
                self.selection.register_object(mapped)
        assert self.tracker is not None
        if mm.net is None and (self.tracker.wants_breakpoint(mm) or any(
                u.consumers for v in new_vmas for u in self.uprobes.by_file.get(v.file_id, ()))):
            self._set_net(task, mm)
        if self.jumps is not None and mm.net is not None:
            self.jumps.calling(mm, inject.caller(task, mm))
            self.jumps.thread_seen(mm, task.tid)  # a thread pointer set since (a new image's TLS)
        self.uprobes.mmap(mm, sorted(new_vmas, key=lambda v: v.start))
        self.tracker.armed(mm, self.uprobes)

    def _set_net(self, task: Task, mm: Mm) -> None:
        """The in-target runtime (``net.py``): mapped near the probed code (XOL slots
        reach it with rel32), its handler installed, before any breakpoint."""
        call = inject.caller(task, mm)
        near = next((v.start for v in mm.vmas if v.executable and v.file_id in self.uprobes.by_file), 0)
        hint = xol.gap_near(mm.vmas, near, AREA_SIZE) if near else None
        journal = Journal.for_process(mm.pid, self.warn)  # before anything goes in (``uemu repair``)
        try:
            mm.net = Net(mm.arch, map_area(mm.arch, call, hint or 0, _scratch_string(task, mm, AREA_NAME)),
                         mm.memory, journal=journal)
            mm.net.install(call, os.getpid())
        except errors.UemuError as err:
            mm.net = None
            raise errors.UemuError(f"process {mm.pid}: cannot install uemu's safety net: {err.message}") from None
        mm.vmas = read_maps(mm.pid)
        if self.jumps is not None:
            try:
                self.jumps.setup(mm, mm.net, call)
            except errors.UemuError as err:
                self.warn(f"process {mm.pid}: no jump path, every site takes a breakpoint: {err.message}")

    def _mappings_changed(self, task: Task, mm: Mm, call: mappings.MappingCall | None, result: int) -> None:
        new_vmas = mappings.refresh(mm, call, result, self.uprobes, self.warn)
        self._arm(mm, new_vmas, task)

    def _remove_pending(self) -> None:
        words, self._removals = self._removals, []
        emptied = self.selection.remove(words)
        if not emptied or not self._stop_all():
            self._stopping = False
            return
        for mm in self.tracees.unique_mms():
            for uprobe in emptied:
                self.uprobes.remove_uprobe(mm, uprobe)
        self._resume_parked()

    def _check_tampering(self) -> None:
        """Look for sites and counters of ours that someone else changed (a kernel
        uprobe or bpftrace leaving a site we share), and mend them with every
        thread stopped.  Also say once when kernel uprobes are at work in a
        traced process: a site probed by both is theirs while they stay."""
        tampered = []
        for mm in self.tracees.unique_mms():
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
        if not tampered or not self._stop_all():
            self._stopping = False
            return
        for mm in tampered:
            self.uprobes.mend(mm, self.uprobes.find_tampering(mm))  # again, with every thread stopped
        self._resume_parked()

    # ---- attaching -----------------------------------------------------------------------

    def _seize_all(self, pid: int) -> None:
        """Seize and stop every thread, repeating until no new thread appears
        (threads created meanwhile by seized threads are auto-attached).  A thread
        that another tracer holds refuses the whole attach, naming the tracer."""
        tasks = self.tracees.tasks
        while True:
            fresh = [t for t in process.threads(pid) if t not in tasks]
            if not fresh:
                break
            for tid in fresh:
                try:
                    ptrace.seize(tid, self._seize_options)
                except errors.TraceeGone:
                    continue
                except OSError as err:
                    if err.errno != errno.EPERM:
                        raise
                    process.check_untraced(pid, tid)
                    if tid != pid:
                        continue  # a thread exiting as we came: it is gone next time
                    raise process.attach_denied(pid) from None
                tasks[tid] = Task(tid, pid, None, stopped=False)
                ptrace.interrupt(tid)
        self._run_until(lambda: self.tracees.all_parked(pid))

    # ---- the loop ------------------------------------------------------------------------

    def _next_stop(self) -> Stop | None:
        """The one blocking wait; None when no task is left to wait for."""
        try:
            tid, status = ptrace.wait()
        except ChildProcessError:
            self.tracees.tasks.clear()
            return None
        return classify(tid, status)

    def _run_until(self, done: Callable[[], bool]) -> None:
        while not done():
            stop = self._next_stop()
            if stop is None:
                return
            self._dispatch(stop)

    def _step(self) -> bool:
        """Wait for one stop and dispatch it; False when tracing is over."""
        if self._stop_reason is not None or not self.tracees.tasks:
            return False
        stop = self._next_stop()
        if stop is None:
            return False
        self._in_loop = True
        try:
            self._dispatch(stop)
        finally:
            self._in_loop = False
        if self._removals:
            self._remove_pending()
        if self._waiting:
            self._serve_waiting()
        if self._check_due:
            self._check_due = False
            self._check_tampering()
        return self._stop_reason is None and bool(self.tracees.tasks)

    def _dispatch(self, stop: Stop) -> None:
        task = self.tracees.tasks.get(stop.tid)
        if task is None:
            self._resume_all(self.tracees.on_unknown_stop(stop))
            return
        if stop.kind is StopKind.EXITED:
            self.tracees.exited(task, stop.status)
            return
        task.stopped = True
        task.stop_kind = stop.kind
        task.listening = stop.kind is StopKind.GROUP  # LISTEN answers a group-stop and nothing else (EIO)
        try:
            resume = self._handlers[stop.kind](self, task, stop)
        except errors.TraceeGone:
            return  # the task died under us; its exit status comes next
        self._resume(task, resume)

    def _resume(self, task: Task, resume: Resume) -> None:
        """The one place a task is resumed, detached, or parked while we are
        stopping everything (with the signal it is owed kept for later)."""
        op = resume.op
        if op is ResumeOp.NONE:
            return
        if op is ResumeOp.DETACH:
            self._detach(task, resume.sig)
            return
        if self._stopping and not resume.urgent:
            task.owed_signal = resume.sig
            return
        sig = resume.sig
        task.owed_signal = 0
        if task.xol is None and task.held and not sig and task.at_signal_stop:
            sig = xol.give_back_held(task)
        if op is ResumeOp.AUTO:
            op = self._auto_op(task)
        try:
            if op is ResumeOp.LISTEN:
                ptrace.listen(task.tid)
            else:
                _RESTART[op](task.tid, sig)
            task.stopped = False
        except errors.TraceeGone:
            pass

    def _auto_op(self, task: Task) -> ResumeOp:
        """How a task goes on by its state: LISTEN in a group-stop, its out-of-line
        step, syscall stops where mappings are watched, else CONT.

        A group-stop comes first, even in the middle of a step: any other restart would
        let the thread run while its program is stopped, and its next stop would not be
        one LISTEN may answer.  Differs: the kernel holds the stop until the step is over
        (``uprobe_deny_signal()``); here the thread stays stopped in its slot, and the
        step goes on after SIGCONT (``_on_interrupt``)."""
        if task.listening:
            return ResumeOp.LISTEN
        sees_syscalls = task.syscall is not None or task.sigaction is not None or self._stops_every_syscall(task)
        if task.xol is not None:
            return xol.resume_op(task.xol, sees_syscalls)
        return ResumeOp.SYSCALL if sees_syscalls else ResumeOp.CONT

    def _resume_all(self, resumes: list[tuple[Task, Resume]]) -> None:
        for task, resume in resumes:
            self._resume(task, resume)

    def _resume_parked(self) -> None:
        self._stopping = False
        for task in list(self.tracees.tasks.values()):
            if task.stopped:
                self._resume(task, Resume(sig=task.owed_signal))

    def _detach(self, task: Task, sig: int) -> None:
        """Let a task go (it holds none of our bytes) with the signal it is owed."""
        self.tracees.tasks.pop(task.tid, None)
        sig = sig or task.owed_signal or (xol.give_back_held(task) if task.held else 0)
        with suppress(errors.TraceeGone):
            ptrace.detach(task.tid, sig)

    # ---- stops ---------------------------------------------------------------------------

    def _on_signal(self, task: Task, stop: Stop) -> Resume:
        """A signal-delivery stop: a step's trap or fault, our breakpoint, or the
        program's own signal (delivered unchanged)."""
        mm = task.mm
        fetched = False
        if mm is not None and mm.xol_area is not None:
            handled = xol.on_signal(task, mm, stop.sig)
            if handled is not None:
                return deliver(handled)
            fetched = True  # on_signal read the registers, nothing changed them
        if stop.sig == signal.SIGTRAP:
            return self._on_sigtrap(task, fetched)
        return deliver(stop.sig)

    def _on_sigtrap(self, task: Task, fetched: bool) -> Resume:
        """Our breakpoint, or the program's own trap."""
        mm = task.mm
        if mm is None:
            return deliver(signal.SIGTRAP)
        regs = task.registers(mm.arch)
        if not fetched:
            regs.fetch(task.tid)
        hit = self.uprobes.find_active_uprobe(mm, regs)
        if hit is None:
            if self._jump_being_written(task, mm, regs):
                return GO_ON
            return deliver(signal.SIGTRAP)  # not ours: the program's int3, raise(SIGTRAP), a debugger
        if self._stopping:
            self.uprobes.restart_at_site(task, mm, hit, regs)
            return GO_ON
        assert self.tracker is not None
        if self.tracker.owns(hit.uprobe):
            self._mappings_changed(task, mm, None, 0)
        return self._handle_hit(task, mm, hit, regs)

    def _jump_being_written(self, task: Task, mm: Mm, regs: ptrace.Regset) -> bool:
        """The int3 in front of a jump uemu was writing or removing (jumps.py): the
        thread goes back to run what is whole there now."""
        if self.jumps is None:
            return False
        resume = self.jumps.trap_at(mm, mm.backend.trap_address(regs[mm.arch.ip_reg]))
        if resume is None:
            return False
        regs[mm.arch.ip_reg] = resume
        regs.store(task.tid)
        return True

    def _handle_hit(self, task: Task, mm: Mm, hit: Hit, regs: ptrace.Regset) -> Resume:
        """The hit proper; a thread that finds every XOL slot taken waits, stopped,
        for one (kernel: ``xol_get_insn_slot()`` sleeps) and is handled again."""
        report = self.reporter.report if task.report else None
        if self.uprobes.handle_swbp(task, mm, hit, regs, report):
            return GO_ON
        assert mm.xol_area is not None
        if self._reclaim_slots(mm) and self.uprobes.handle_swbp(task, mm, hit, regs, report):
            return GO_ON
        self._waiting.append((task, hit))
        return KEEP

    def _reclaim_slots(self, mm: Mm) -> bool:
        """Slots of JUMP steps (which need no second stop) stay with their threads, which
        may still be inside; a stopped thread whose ip is elsewhere gives its slot back."""
        area = mm.xol_area
        assert area is not None
        freed = False
        for tid, slot in list(area.slots.items()):
            task = self.tracees.tasks.get(tid)
            if task is None or not task.stopped or task.xol is not None:
                continue
            regs = task.registers(mm.arch)
            regs.fetch(tid)
            if not slot <= regs[mm.arch.ip_reg] < slot + area.slot_size:
                area.free_slot(tid)
                freed = True
        return freed

    def _serve_waiting(self) -> None:
        """Threads waiting for an XOL slot try again (one may have been freed)."""
        waiting, self._waiting = self._waiting, []
        for task, hit in waiting:
            if task.tid not in self.tracees.tasks or task.mm is None:
                continue
            if self._stopping:
                self.uprobes.restart_at_site(task, task.mm, hit, task.registers(task.mm.arch))
                continue
            resume = self._handle_hit(task, task.mm, hit, task.registers(task.mm.arch))
            if resume is GO_ON:
                self._resume(task, resume)

    def _on_syscall(self, task: Task, stop: Stop) -> Resume:
        """Syscall entry or exit (PTRACE_SYSCALL): mapping syscalls refresh at exit."""
        info = ptrace.syscall_info(task.tid)
        if info.op == ptrace.SYSCALL_INFO_ENTRY:
            mappings.note_syscall(task, info, self.uprobes)
            sigtrap.at_entry(task, info)
            return GO_ON
        if task.sigaction is not None:
            sigtrap.at_exit(task, info)
        call, task.syscall = task.syscall, None
        mm = task.mm
        if info.op == ptrace.SYSCALL_INFO_EXIT and mm is not None and task.arm_pending:
            task.arm_pending = False  # execve's exit: the new image before its first instruction
            self._arm(mm, mm.vmas, task)
            return GO_ON
        if info.op == ptrace.SYSCALL_INFO_EXIT and mm is not None:
            if call is not None and not self._passthrough:
                self._mappings_changed(task, mm, call, info.rval)
            if task.xol is not None:
                xol.finish_syscall_step(task, mm)
        return GO_ON

    def _on_seccomp(self, task: Task, stop: Stop) -> Resume:
        """A mapping syscall is about to run: remember it and stop again at its exit."""
        info = ptrace.syscall_info(task.tid)
        if not self._passthrough:
            mappings.note_syscall(task, info, self.uprobes)
        sigtrap.at_entry(task, info)
        return GO_ON

    def _on_group_stop(self, task: Task, stop: Stop) -> Resume:
        """SIGSTOP/SIGTSTP/SIGTTIN/SIGTTOU stopped the program: keep it stopped as
        without us, and hear of SIGCONT (PTRACE_LISTEN: ``task.listening``)."""
        return GO_ON

    def _on_interrupt(self, task: Task, stop: Stop) -> Resume:
        """An interrupt we asked for, a new task's first stop, or SIGCONT after LISTEN."""
        urgent = self._trap_still_queued(task)
        if urgent is not None:
            return urgent
        return GO_ON

    def _trap_still_queued(self, task: Task) -> Resume | None:
        """An interrupt stop is reported before a signal already queued: a thread
        may stop there right after our int3 or its out-of-line step, the SIGTRAP
        still pending.  Parked and detached so, it would die of it (and stand
        mid-instruction after an int3).  Let it run to its trap stop first, which
        handles that SIGTRAP, even while everything is being stopped."""
        mm = task.mm
        if mm is None or not process.sigtrap_pending(task.tid):
            return None
        step = task.xol
        if step is not None and step.setup.ends is not StepEnd.JUMP:
            sees_syscalls = task.syscall is not None or task.sigaction is not None or self._stops_every_syscall(task)
            return Resume(xol.resume_op(step, sees_syscalls), urgent=True)
        regs = task.registers(mm.arch)
        regs.fetch(task.tid)
        if self.uprobes.find_active_uprobe(mm, regs) is None:
            return None
        return Resume(ResumeOp.CONT, urgent=True)

    def _on_new_task(self, task: Task, stop: Stop) -> Resume:
        """fork, vfork or clone: see ``Tracees.on_new_task``."""
        self._resume_all(self.tracees.on_new_task(task, stop.kind, ptrace.event_message(task.tid)))
        return GO_ON

    def _on_exec(self, task: Task, stop: Stop) -> Resume:
        """The old image is gone; scan and arm the new one."""
        self.tracees.exec(task)
        if self._passthrough:
            return GO_ON
        if not task.report:
            # A child we kept only for safety (vfork, not followed): its new image
            # has none of our bytes.
            return self.tracees.let_go(task)
        try:
            arch = process.executable_arch(task.pid)
            task.mm = self.tracees.new_mm(task.pid, arch)
        except errors.UnsupportedArch as err:
            self.warn(f"process {task.pid} exec'd a program uemu cannot trace ({err.message}); leaving it alone")
            return self.tracees.let_go(task)
        # The exec stop is inside execve, where no syscall can be injected for the net:
        # arm at execve's syscall-exit stop, before the new image's first instruction.
        task.arm_pending = True
        return Resume(ResumeOp.SYSCALL)

    def _on_other_event(self, task: Task, stop: Stop) -> Resume:
        if self._feed is not None and stop.status >> 16 == ptrace.EVENT_EXIT:
            # A thread about to exit: its jump path hits go out while /proc still
            # names it (chrome's thread names).
            self._feed.before(time.monotonic_ns())
        return GO_ON

    _handlers: ClassVar[Mapping[StopKind, Callable[[Session, Task, Stop], Resume]]] = {
        StopKind.SIGNAL: _on_signal,
        StopKind.SYSCALL: _on_syscall,
        StopKind.SECCOMP: _on_seccomp,
        StopKind.GROUP: _on_group_stop,
        StopKind.INTERRUPT: _on_interrupt,
        StopKind.CLONE: _on_new_task,
        StopKind.FORK: _on_new_task,
        StopKind.VFORK: _on_new_task,
        StopKind.EXEC: _on_exec,
        StopKind.OTHER: _on_other_event,
    }

    # ---- leaving -------------------------------------------------------------------------

    def _stop_all(self) -> bool:
        """Park every task (interrupting the running ones); False if none is left."""
        self._stopping = True
        for task in self.tracees.tasks.values():
            if not task.stopped:
                try:
                    ptrace.interrupt(task.tid)
                except errors.TraceeGone:
                    task.stopped = True
        self._run_until(self.tracees.all_parked)
        return bool(self.tracees.tasks)

    def _detach_all(self) -> None:
        if not self.tracees.tasks or not self._stop_all():
            return
        tasks = self.tracees.tasks
        for task in list(tasks.values()):
            if task.mm is not None and task.mm.xol_area is not None:
                with suppress(errors.TraceeGone):
                    xol.leave_slot(task, task.mm)
        self._serve_waiting()  # each goes back to its site, the hit not taken
        for mm in self.tracees.unique_mms():
            try:
                if self.jumps is not None:
                    self.jumps.leave(mm)
                self.uprobes.remove_all(mm)
                if mm.xol_area is not None:
                    xol.remove_area(self._injectable(mm), mm)
                if mm.net is not None:
                    call = inject.caller(self._injectable(mm), mm, through_net=False)
                    keep_area = self.jumps is not None and self.jumps.keeps_area(
                        mm, [t.tid for t in tasks.values() if t.mm is mm], call)
                    mm.net.uninstall(call, keep_area)
                    mm.net = None
            except (OSError, errors.TraceeGone) as err:
                self.warn(f"process {mm.pid}: could not restore everything: {err}")
        if self._needs_tracer():
            self._pass_through()
            return
        for task in list(tasks.values()):
            self._resume(task, Resume(ResumeOp.DETACH))

    def _injectable(self, mm: Mm) -> Task:
        """A parked thread of ``mm`` a syscall may be injected into (``inject.py``),
        preferably one outside any call.  If every one is parked inside its own
        syscall (a clone or exec event stop), one goes on to an interrupt stop."""
        parked = [t for t in self.tracees.tasks.values() if t.mm is mm and t.stopped]
        if not parked:
            raise errors.TraceeGone(mm.pid)
        ready = [t for t in parked if t.injectable]
        if ready:
            return min(ready, key=lambda t: process.in_syscall(t.tid))
        task = parked[0]
        ptrace.interrupt(task.tid)
        self._resume(task, Resume(ResumeOp.CONT, urgent=True))
        self._run_until(lambda: task.stopped or task.tid not in self.tracees.tasks)
        return self._injectable(mm)

    def _pass_through(self) -> None:
        """Stay the tracer, doing nothing, until every task has exited: under our
        seccomp filter a process without a tracer would get ENOSYS from mmap."""
        self._passthrough = True
        self._resume_parked()
        tasks = self.tracees.tasks
        self._run_until(lambda: not tasks)

    # ---- signals to uemu itself -------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        """From the first ptrace call on, a leaving signal only records why we leave
        (installed once; the session's close puts the old handlers back)."""
        if threading.current_thread() is not threading.main_thread() or self._old_handlers:
            return
        for sig in _LEAVING_SIGNALS:
            self._old_handlers[sig] = signal.signal(sig, self._on_leaving_signal)
        self._old_handlers[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_alarm)
        self._old_handlers[WAKE_SIGNAL] = signal.signal(WAKE_SIGNAL, self._on_wake_signal)

    def _start_timer(self, duration: float | None) -> None:
        """One timer serves --duration and the look for changes behind our back."""
        if not self._old_handlers:
            return  # not the main thread: no signals, no timer
        if duration is not None:
            self._deadline = time.monotonic() + duration
        self._arm_timer()

    def _arm_timer(self) -> None:
        delay = CHECK_INTERVAL
        if self._deadline is not None:
            delay = min(delay, max(self._deadline - time.monotonic(), 1e-6))
        signal.setitimer(signal.ITIMER_REAL, delay)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self.stop("duration")
            return
        self._check_due = True
        self._wake()
        self._arm_timer()

    def _restore_signal_handlers(self) -> None:
        if self._old_handlers:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()

    def _on_leaving_signal(self, signum: int, frame: FrameType | None) -> None:
        """Never raise here: the loop may be in the middle of a hit.  Record why and
        wake the blocking wait with an interrupt stop instead."""
        self.stop(signal.Signals(signum).name)

    def _on_wake_signal(self, signum: int, frame: FrameType | None) -> None:
        self._wake()

    def _wake(self) -> None:
        """Make the loop's blocking wait return (an interrupt stop); from another thread
        of uemu (the ring's reader), through a signal to the tracing thread."""
        if threading.get_ident() != self._tracer:
            if self._old_handlers:
                signal.pthread_kill(self._tracer, WAKE_SIGNAL)
            return
        for task in self.tracees.tasks.values():
            if not task.stopped:
                try:
                    ptrace.interrupt(task.tid)
                    return
                except errors.TraceeGone:
                    continue


_RESTART: dict[ResumeOp, Callable[[int, int], None]] = {
    ResumeOp.CONT: ptrace.cont,
    ResumeOp.SYSCALL: ptrace.syscall,
    ResumeOp.SINGLESTEP: ptrace.singlestep,
}


def _mode(name: str | MappingMode) -> MappingMode:
    try:
        return MappingMode(name)
    except ValueError:
        raise errors.BadInput(f"unknown mapping tracking {name!r}; one of {', '.join(MAPPINGS_MODES)}") from None


def _scratch_string(task: Task, mm: Mm, text: bytes) -> int:
    """Put a NUL-terminated string where a stopped thread's stack has room for a
    system call to read it: below the stack pointer and the x86-64 red zone, where
    the program keeps nothing while the thread is stopped."""
    regs = task.registers(mm.arch)
    regs.fetch(task.tid)
    address = (regs[mm.arch.sp_reg] - 512 - len(text)) & ~15
    mm.memory.write(address, text + b"\0")
    return address
