"""The ptrace glue of the loop: the one blocking wait, a stop handed to its
handler, the one place a task is resumed, parking every task, seizing a process.

strace's split: ``next_event()`` (``next_stop`` here), the restart that
``dispatch_event()`` decides and ``ptrace_restart()`` applies once (``resume``).
This module knows tasks and stops, not probes: the stops of tasks (a group-stop,
fork, vfork, clone, exec) go to ``tasks.py``'s decisions from here; what any other
stop means is decided by the handlers the session registers (``hits.py``,
``syscalls.py`` through ``mapmode.py``, ``jumphits.py``); whether a task must stop
at every system call is asked of the mapping mode (``every_syscall``).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from contextlib import suppress

from . import errors, inject, process, ptrace, xol
from .stops import GO_ON, Resume, ResumeOp, Stop, StopKind, classify, shell_status
from .tasks import Task, Tracees
from .uprobes import Mm

StopHandler = Callable[[Task, Stop], Resume]

SEIZE_OPTIONS = (
    ptrace.O_TRACESYSGOOD
    | ptrace.O_TRACECLONE
    | ptrace.O_TRACEFORK
    | ptrace.O_TRACEVFORK
    | ptrace.O_TRACEEXEC
    | ptrace.O_TRACESECCOMP
)
"""The stops a session hears of: syscall stops told apart, task creation, exec, the
seccomp filter's; the jump path adds the exit stop (``jumphits.py``)."""

_RESTART: dict[ResumeOp, Callable[[int, int], None]] = {
    ResumeOp.CONT: ptrace.cont,
    ResumeOp.SYSCALL: ptrace.syscall,
    ResumeOp.SINGLESTEP: ptrace.singlestep,
}


class Tracer:
    """The tasks of a session as ptrace sees them, and how each goes on.

    ``stopping``: every task is being parked (to leave, to change sites with
    every thread stopped); a resume then keeps the task stopped with the signal
    it is owed, unless urgent.  ``passthrough``: uemu stays the tracer only
    because the program cannot live without one, and does nothing else."""

    def __init__(self, tracees: Tracees, every_syscall: Callable[[Mm], bool]):
        self.tracees = tracees
        self.handlers: dict[StopKind, StopHandler] = {
            StopKind.GROUP: _keep_stopped,
            StopKind.CLONE: self._on_new_task,
            StopKind.FORK: self._on_new_task,
            StopKind.VFORK: self._on_new_task,
            StopKind.EXEC: self._on_exec,
            StopKind.OTHER: _go_on,
        }
        """The task-level stops' handlers are this module's; the session adds those of
        signals and interrupts (``hits.py``), the mapping mode those of syscalls."""
        self.stopping = False
        self.passthrough = False
        self._every_syscall = every_syscall

    # ---- waiting and dispatching --------------------------------------------------------

    def next_stop(self) -> Stop | None:
        """The one blocking wait; None when no task is left to wait for."""
        try:
            tid, status = ptrace.wait()
        except ChildProcessError:
            self.tracees.tasks.clear()
            return None
        return classify(tid, status)

    def _exiting(self, task: Task) -> None:
        """``task`` stopped at its exit: it is exiting, and so is every thread of its
        process when the whole group goes (SIGKILL, exit_group).  Kernel: a thread that
        a group exit finds past where it would stop for it (a group leader already
        exiting) never reports that stop, and a leader's end waits for the other
        threads': waiting for it to stop (``stop_all``) would wait for ever."""
        task.exiting = True
        if process.group_exiting(task.tid):
            for other in self.tracees.tasks.values():
                if other.pid == task.pid:
                    other.exiting = True

    def run_until(self, done: Callable[[], bool]) -> None:
        while not done():
            stop = self.next_stop()
            if stop is None:
                return
            self.dispatch(stop)

    def dispatch(self, stop: Stop) -> None:
        """The stop to its handler, the handler's ``Resume`` to ``resume``."""
        task = self.tracees.tasks.get(stop.tid)
        if task is None:
            self.resume_all(self.tracees.on_unknown_stop(stop))
            return
        if stop.kind is StopKind.EXITED:
            self.tracees.exited(task, stop.status)
            return
        task.stopped = True
        task.stop_kind = stop.kind
        if stop.kind is StopKind.OTHER and stop.status >> 16 == ptrace.EVENT_EXIT:
            self._exiting(task)
        task.listening = stop.kind is StopKind.GROUP  # LISTEN answers a group-stop and nothing else (EIO)
        try:
            resume = self.handlers[stop.kind](task, stop)
        except errors.TraceeGone:
            return  # the task died under us; its exit status comes next
        self.resume(task, resume)

    # ---- the stops of tasks (``tasks.py`` decides) ---------------------------------------

    def _on_new_task(self, task: Task, stop: Stop) -> Resume:
        """fork, vfork or clone: see ``Tracees.on_new_task``."""
        self.resume_all(self.tracees.on_new_task(task, stop.kind, ptrace.event_message(task.tid)))
        return GO_ON

    def _on_exec(self, task: Task, stop: Stop) -> Resume:
        return self.tracees.on_exec(task, arm=not self.passthrough)

    # ---- going on ---------------------------------------------------------------------------

    def resume(self, task: Task, resume: Resume) -> None:
        """The one place a task is resumed, detached, or parked while we are
        stopping everything (with the signal it is owed kept for later)."""
        op = resume.op
        if op is ResumeOp.NONE:
            return
        if op is ResumeOp.DETACH:
            self._detach(task, resume.sig)
            return
        if self.stopping and not resume.urgent:
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
            task.single_step = op is ResumeOp.SINGLESTEP
        except errors.TraceeGone:
            pass

    def sees_syscalls(self, task: Task) -> bool:
        """The task must stop at its next system call: one in progress that we
        follow, or a mapping mode that watches every one."""
        if task.syscall is not None or task.sigaction is not None:
            return True
        return task.mm is not None and not self.passthrough and self._every_syscall(task.mm)

    def _auto_op(self, task: Task) -> ResumeOp:
        """How a task goes on by its state: LISTEN in a group-stop, its out-of-line
        step, syscall stops where mappings are watched, else CONT.

        A group-stop comes first, even in the middle of a step: any other restart would
        let the thread run while its program is stopped, and its next stop would not be
        one LISTEN may answer.  Differs: the kernel holds the stop until the step is over
        (``uprobe_deny_signal()``); here the thread stays stopped in its slot, and the
        step goes on after SIGCONT (``hits.py``'s interrupt handling)."""
        if task.listening:
            return ResumeOp.LISTEN
        if task.xol is not None:
            return xol.resume_op(task.xol, self.sees_syscalls(task))
        return ResumeOp.SYSCALL if self.sees_syscalls(task) else ResumeOp.CONT

    def resume_all(self, resumes: list[tuple[Task, Resume]]) -> None:
        for task, resume in resumes:
            self.resume(task, resume)

    def resume_parked(self) -> None:
        """End a stop-all: every parked task goes on with the signal it is owed."""
        self.stopping = False
        for task in list(self.tracees.tasks.values()):
            if task.stopped:
                self.resume(task, Resume(sig=task.owed_signal))

    def _detach(self, task: Task, sig: int) -> None:
        """Let a task go (it holds none of our bytes) with the signal it is owed."""
        self.tracees.tasks.pop(task.tid, None)
        sig = _going_with(task, sig)
        with suppress(errors.TraceeGone):
            ptrace.detach(task.tid, sig)

    # ---- every task at once -------------------------------------------------------------

    def stop_all(self) -> bool:
        """Park every task (interrupting the running ones); False if none is left."""
        self.stopping = True
        for task in self.tracees.tasks.values():
            if not task.stopped:
                try:
                    ptrace.interrupt(task.tid)
                except errors.TraceeGone:
                    task.stopped = True
        self.run_until(self.tracees.all_parked)
        self.drop_step_flags()
        return bool(self.tracees.tasks)

    def drop_step_flags(self) -> None:
        """Every parked thread whose out-of-line step is over loses the step's trap flag.

        Kernel: the flag lives from ``arch_uprobe_pre_xol()`` to ``arch_uprobe_post_xol()``
        and never outlives the step.  Differs: only a restart clears what PTRACE_SINGLESTEP
        set, and a thread parked at its step's own trap stop has had none: should uemu die
        while it is parked, it would trap after its next instruction with no tracer left,
        a trap the net can only guess about.  ``inject.repark`` clears it without the
        thread running an instruction.  A thread still inside its step keeps the flag: with
        uemu dead, the trap after its one instruction is how the net finishes the step
        exactly (the runtime's R2 and R4).  A thread owed a signal keeps its stop, the one
        place its signal can be delivered from (an interrupt stop would drop it); the restart
        or the detach that delivers it clears the flag."""
        for task in [t for t in self.tracees.tasks.values() if _step_over(t)]:
            with suppress(errors.TraceeGone):
                inject.repark(task)

    def while_parked(self, work: Callable[[], None]) -> None:
        """``work`` with every task parked (sites and counters change only while every
        thread of their mm is stopped), then each goes on with the signal it is owed."""
        if not self.stop_all():
            self.stopping = False
            return
        work()
        self.resume_parked()

    def detach_all(self) -> None:
        """Let every (parked) task go, or, where the program cannot live without a
        tracer, stay its tracer doing nothing until every task has exited."""
        if self.tracees.needs_tracer():
            # Under our seccomp filter a process without a tracer would get ENOSYS from mmap.
            self.passthrough = True
            self.resume_parked()
            tasks = self.tracees.tasks
            self.run_until(lambda: not tasks)
            return
        for task in list(self.tracees.tasks.values()):
            self.resume(task, Resume(ResumeOp.DETACH))

    def abandon(self) -> None:
        """After an error of uemu's while leaving, with tasks still traced: let each go
        as its stop stands and run no handler any more, so nothing can fail again.  A
        task is detached with the signal its stop holds, or with those it is owed and
        holds (the net undoes at its next trap what is left of ours), or, where the
        program cannot live without a tracer, kept going bare (CONT with that signal,
        LISTEN in a group-stop) until every task has exited.  A task created meanwhile
        is let go at its first stop.  Without this, ``uemu run`` would wait for ever for
        a command whose threads it holds stopped.  A thread uemu single-stepped is first
        parked again as ``drop_step_flags`` does: a step into a blocking system call
        queues its trap behind the stop, and a detach would hand it to the program."""
        bare = self.tracees.needs_tracer()
        for task in [t for t in self.tracees.tasks.values() if t.stopped and _step_over(t)]:
            try:
                inject.repark(task)
            except (errors.UemuError, OSError):
                task.stopped = False  # where it stands is unknown: let go below at its next stop
        for task in [t for t in self.tracees.tasks.values() if t.stopped]:
            _let_go(task.tid, _going_with(task, 0), bare)
        for tid in self.tracees.held_first_stops():
            _let_go(tid, 0, bare)
        left = {tid for tid, task in self.tracees.tasks.items() if not task.stopped}
        for tid in left:
            with suppress(errors.TraceeGone):
                ptrace.interrupt(tid)
        self.tracees.tasks.clear()
        while left or bare:
            try:
                tid, status = ptrace.wait()
            except ChildProcessError:
                return
            stop = classify(tid, status)
            left.discard(tid)
            if stop.kind is StopKind.EXITED:
                if tid == self.tracees.child_pid:
                    self.tracees.exit_status = shell_status(status)
                continue
            if stop.creates_task:
                with suppress(errors.TraceeGone):
                    left.add(ptrace.event_message(tid))
            if stop.kind is StopKind.GROUP and bare:
                with suppress(errors.TraceeGone):
                    ptrace.listen(tid)
            else:
                _let_go(tid, stop.sig if stop.kind is StopKind.SIGNAL else 0, bare)

    def wake(self) -> None:
        """End the blocking wait soon: an interrupt stop of some running task."""
        for task in self.tracees.tasks.values():
            if not task.stopped:
                try:
                    ptrace.interrupt(task.tid)
                    return
                except errors.TraceeGone:
                    continue

    def seize_all(self, pid: int, options: int) -> None:
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
                    ptrace.seize(tid, options)
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
        self.run_until(lambda: self.tracees.all_parked(pid))

    def injectable(self, mm: Mm) -> Task:
        """A parked thread of ``mm`` a syscall may be injected into (``inject.py``),
        preferably one outside any call.  If every one is parked inside its own
        syscall (a clone or exec event stop), one goes on to an interrupt stop.  Not one
        that is exiting: let go, it never stops again, and a group leader's end is not
        reported while other threads live (a process killed by SIGKILL as uemu leaves has
        them all parked at their exit stops: waiting for the leader's stop would wait
        for ever)."""
        parked = [t for t in self.tracees.tasks.values() if t.mm is mm and t.stopped and not t.exiting]
        if not parked:
            raise errors.TraceeGone(mm.pid)
        ready = [t for t in parked if t.injectable]
        if ready:
            return min(ready, key=lambda t: process.in_syscall(t.tid))
        task = parked[0]
        ptrace.interrupt(task.tid)
        self.resume(task, Resume(ResumeOp.CONT, urgent=True))
        self.run_until(lambda: task.stopped or task.tid not in self.tracees.tasks)
        return self.injectable(mm)


def _step_over(task: Task) -> bool:
    """A thread last resumed with a single step, not inside an out-of-line step, parked
    where ``inject.repark`` can take it, with no signal to deliver from its stop."""
    return (task.single_step and task.xol is None and task.stop_kind in inject.INJECTABLE
            and not task.owed_signal and not task.held)


def _going_with(task: Task, sig: int) -> int:
    """The signal a task goes on with as it is let go: ``sig``, else the one it is owed,
    else the first it holds; any other it holds is raised again after it, never dropped.
    From a stop that cannot deliver a signal (an interrupt or group-stop: the kernel
    ignores a detach's signal there, ptrace(2)) every held signal is raised again."""
    sig = sig or task.owed_signal
    if task.held and (sig or not task.at_signal_stop):
        xol.raise_held(task)
    elif task.held:
        sig = xol.give_back_held(task)
    return sig


def _let_go(tid: int, sig: int, bare: bool) -> None:
    """``abandon``'s one restart: CONT where a tracer must stay, else DETACH."""
    with suppress(errors.TraceeGone):
        if bare:
            ptrace.cont(tid, sig)
        else:
            ptrace.detach(tid, sig)


def _keep_stopped(task: Task, stop: Stop) -> Resume:
    """SIGSTOP/SIGTSTP/SIGTTIN/SIGTTOU stopped the program: keep it stopped as
    without us, and hear of SIGCONT (PTRACE_LISTEN: ``task.listening``)."""
    return GO_ON


def _go_on(task: Task, stop: Stop) -> Resume:
    """An event stop with nothing to do (vfork-done; an exit without the jump path)."""
    return GO_ON
