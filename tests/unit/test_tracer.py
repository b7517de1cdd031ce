"""The loop's decisions that need no system call: how a task goes on by its
state, and what a resume does while every task is being parked."""

from __future__ import annotations

import signal

import pytest
from fakes import FakeMemory, new_mm

from uemu import errors, ptrace, xol
from uemu.arch.base import MappingSyscall
from uemu.mappings import MappingCall
from uemu.stops import KEEP, Resume, ResumeOp, Stop, StopKind, deliver
from uemu.tasks import Task, Tracees
from uemu.tracer import Tracer, _going_with
from uemu.uprobes import Uprobes


def _tracer(every_syscall: bool = False, needs_tracer: bool = False) -> tuple[Tracer, Task]:
    uprobes = Uprobes(lambda message: None)
    tracees = Tracees(uprobes, follow_forks=False, needs_tracer=lambda: needs_tracer, warn=lambda message: None)
    tracer = Tracer(tracees, lambda mm: every_syscall)
    mm = new_mm(FakeMemory(100), [])
    task = Task(101, 100, mm)
    tracees.tasks[task.tid] = task
    return tracer, task


MMAP = MappingCall(MappingSyscall.MMAP, (0, 4096, 0, 0, 0, 0))


@pytest.mark.parametrize(("every_syscall", "passthrough", "syscall", "listening", "op"), [
    (False, False, None, False, ResumeOp.CONT),  # a running program
    (True, False, None, False, ResumeOp.SYSCALL),  # a mode watching every syscall
    (True, True, None, False, ResumeOp.CONT),  # passthrough watches nothing of the mode's
    (False, True, MMAP, False, ResumeOp.SYSCALL),  # a call followed to its exit, even in passthrough
    (True, False, MMAP, True, ResumeOp.LISTEN),  # a group-stop is answered by LISTEN before all else
])
def test_how_a_task_goes_on_by_its_state(every_syscall: bool, passthrough: bool, syscall: MappingCall | None,
                                         listening: bool, op: ResumeOp) -> None:
    tracer, task = _tracer(every_syscall=every_syscall)
    tracer.passthrough = passthrough
    task.syscall = syscall
    task.listening = listening
    assert tracer._auto_op(task) is op


def test_while_stopping_a_resume_parks_the_task_with_the_signal_it_is_owed() -> None:
    tracer, task = _tracer()
    tracer.stopping = True
    tracer.resume(task, deliver(signal.SIGUSR1))
    assert task.stopped and task.owed_signal == signal.SIGUSR1


def test_keep_leaves_the_task_as_it_is() -> None:
    tracer, task = _tracer()
    task.owed_signal = signal.SIGUSR2
    tracer.resume(task, KEEP)
    assert task.stopped and task.owed_signal == signal.SIGUSR2


@pytest.mark.parametrize(("kind", "listening"), [(StopKind.GROUP, True), (StopKind.SIGNAL, False),
                                                  (StopKind.SYSCALL, False)])
def test_dispatch_records_the_stop_and_carries_out_the_handlers_resume(kind: StopKind, listening: bool) -> None:
    tracer, task = _tracer()
    task.stopped = False
    task.listening = not listening
    seen: list[tuple[Task, Stop]] = []

    def handler(t: Task, stop: Stop) -> Resume:
        seen.append((t, stop))
        return deliver(signal.SIGWINCH)

    tracer.handlers[kind] = handler
    tracer.stopping = True  # parked: the resume is recorded, not made
    stop = Stop(task.tid, 0, kind, signal.SIGWINCH if kind is StopKind.SIGNAL else 0)
    tracer.dispatch(stop)
    assert seen == [(task, stop)]
    assert (task.stopped, task.stop_kind, task.listening, task.owed_signal) == (True, kind, listening,
                                                                                signal.SIGWINCH)


def test_a_handler_whose_task_died_resumes_nothing() -> None:
    tracer, task = _tracer()

    def handler(t: Task, stop: Stop) -> Resume:
        raise errors.TraceeGone(t.tid)

    tracer.handlers[StopKind.SIGNAL] = handler
    tracer.stopping = True
    tracer.dispatch(Stop(task.tid, 0, StopKind.SIGNAL, signal.SIGUSR1))
    assert task.owed_signal == 0


def test_an_exit_forgets_the_task_without_a_handler() -> None:
    tracer, task = _tracer()
    tracer.dispatch(Stop(task.tid, 0, StopKind.EXITED))
    assert task.tid not in tracer.tracees.tasks


def test_a_group_stop_keeps_the_program_stopped_with_no_signal_owed() -> None:
    tracer, task = _tracer()
    task.stopped = False
    tracer.stopping = True  # parked: the resume is recorded, not made
    tracer.dispatch(Stop(task.tid, 0, StopKind.GROUP, signal.SIGSTOP))
    assert task.stopped and task.listening and task.owed_signal == 0
    assert tracer._auto_op(task) is ResumeOp.LISTEN


@pytest.mark.parametrize("stop_kind", [StopKind.INTERRUPT, StopKind.GROUP])
def test_signals_held_at_a_stop_that_cannot_deliver_are_raised_again(monkeypatch: pytest.MonkeyPatch,
                                                                    stop_kind: StopKind) -> None:
    """A task let go from an interrupt or group-stop: the kernel ignores the detach's
    signal there, so the first held signal, given to the detach, was lost; every one is
    raised again instead (tgkill) and the detach carries none."""
    _, task = _tracer()
    raised: list[int] = []
    monkeypatch.setattr(xol, "_tgkill", lambda pid, tid, sig: raised.append(sig))
    task.stop_kind = stop_kind
    task.held = [(signal.SIGUSR1, b""), (signal.SIGUSR2, b"")]
    assert _going_with(task, 0) == 0
    assert raised == [signal.SIGUSR1, signal.SIGUSR2] and not task.held


def test_an_exit_stop_marks_the_task_exiting_for_good() -> None:
    tracer, task = _tracer()
    tracer.stopping = True  # parked: the resume is recorded, not made
    tracer.dispatch(Stop(task.tid, (ptrace.EVENT_EXIT << 16) | (signal.SIGTRAP << 8) | 0x7F, StopKind.OTHER))
    assert task.stopped and task.exiting
    tracer.dispatch(Stop(task.tid, 0, StopKind.OTHER))  # a later stop of another kind (none comes)
    assert task.exiting


def test_a_task_past_its_exit_stop_counts_as_parked_and_is_never_injected_into() -> None:
    """A process killed as uemu leaves: its leader past its exit stop (let go, it never
    stops again, and its end waits for the other threads'), a thread parked at its own
    exit stop.  Waiting for either to stop would wait for ever."""
    tracer, leader = _tracer()
    leader.stopped, leader.exiting = False, True
    thread = Task(102, 100, leader.mm, stopped=True, stop_kind=StopKind.OTHER, exiting=True)
    tracer.tracees.tasks[thread.tid] = thread
    assert tracer.tracees.all_parked()
    assert leader.mm is not None
    with pytest.raises(errors.TraceeGone):
        tracer.injectable(leader.mm)


@pytest.mark.parametrize("group", [True, False])
def test_an_exit_stop_of_a_group_exit_marks_every_thread_of_the_process(monkeypatch: pytest.MonkeyPatch,
                                                                        group: bool) -> None:
    """SIGKILL queued for the stopped thread (what the kernel queues for every thread of a
    group that exits) marks its whole process exiting: its leader may never stop again;
    one thread's own exit marks itself alone."""
    monkeypatch.setattr("uemu.tracer.process.group_exiting", lambda tid: group)
    tracer, leader = _tracer()
    leader.stopped = False
    thread = Task(102, 100, leader.mm, stopped=False)
    other = Task(201, 200, leader.mm, stopped=False)
    tracer.tracees.tasks.update({thread.tid: thread, other.tid: other})
    tracer.stopping = True
    tracer.dispatch(Stop(thread.tid, (ptrace.EVENT_EXIT << 16) | (signal.SIGTRAP << 8) | 0x7F, StopKind.OTHER))
    assert (thread.exiting, leader.exiting, other.exiting) == (True, group, False)
    assert tracer.tracees.all_parked(100) is group
