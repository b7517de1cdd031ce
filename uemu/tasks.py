"""Tasks and address spaces we trace, and how they come and go.

Kernel: kernel/fork.c and kernel/exit.c as uprobes sees them.  A task
creation is known in two halves that come in either order, the creator's
PTRACE_EVENT_{FORK,VFORK,CLONE} and the new task's first stop; once both are
known (``_adopt``) a thread joins its creator's mm, and a process either
inherits a copy of our uprobe state (``Uprobes.dup_mmap``) and is followed,
or is cleaned (our bytes out, our counts undone) and let go before it runs a
single instruction.  exec drops the old mm (nothing to restore); an exit
forgets whatever the task held.

Every decision about a stopped task ends in a ``Resume`` the session carries
out; this module never resumes a task itself.  "Let go" is one verb per thing:
``let_go`` detaches a task that holds none of our bytes, or keeps it as a
silent tracee where a tracer must stay (the seccomp mapping filter);
``leave_mm`` forgets an mm without writing (kernel: ``uprobe_clear_state``).
What must be written back first is written by ``_clean`` (a child not
followed) and ``restore`` (every mm when uemu leaves); the order of leaving
(stop everything, out of the slots, restore, detach) is the session's.
Seizing and waiting are ``tracer.py``'s, the uprobe state itself ``uprobes.py``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from uemu.arch import Arch

from . import errors, inject, process, ptrace, xol
from .inject import INJECTABLE
from .maps import Vma, read_maps
from .objects import MappedObject, mapped_objects
from .runtime.layout import ThreadFlags
from .stops import GO_ON, KEEP, Resume, ResumeOp, Stop, StopKind, shell_status
from .uprobes import Mm, Uprobes
from .xol import ActiveStep

if TYPE_CHECKING:
    from .mappings import MappingCall
    from .net import Net
    from .sigtrap import SigactionCall


@dataclass(eq=False)
class Task:
    """One traced thread."""

    tid: int
    pid: int
    mm: Mm | None
    report: bool = True
    """False for a task we only keep safe (a child not followed): its hits are not reported."""
    stopped: bool = True
    """In a ptrace-stop that we have not resumed yet."""
    listening: bool = False
    """In a group-stop we answered with PTRACE_LISTEN."""
    single_step: bool = False
    """Last resumed with PTRACE_SINGLESTEP: the kernel keeps its trap flag set until
    another restart clears it, and a tracer's death does not (``inject.repark``)."""
    arm_pending: bool = False
    """A new image (exec) to arm at execve's syscall-exit stop, before its first
    instruction, where the net can be put in."""
    stop_kind: StopKind = StopKind.INTERRUPT
    """The kind of its current (or last) stop; a new task's first stop is an interrupt-like one."""
    exiting: bool = False
    """Stopped at PTRACE_EVENT_EXIT once: it is leaving (an exit, a fatal signal), no
    instruction of its runs again, and no stop but its end comes (``Tracer.injectable``)."""
    owed_signal: int = 0
    """A signal taken from the program while parked; given back when it resumes or at detach."""
    syscall: MappingCall | None = None
    """The mapping syscall this thread is inside (kind, arguments), between its seccomp or
    entry stop and its exit stop (``mappings.py``)."""
    sigaction: SigactionCall | None = None
    """An rt_sigaction on SIGTRAP this thread is inside, between its entry and exit stops
    (``sigtrap.py``)."""
    regs: ptrace.Regset | None = None
    xol: ActiveStep | None = None
    """The displaced instruction this thread is executing in its XOL slot."""
    held: list[tuple[int, bytes]] = field(default_factory=list)
    """Signals (number, siginfo) held back during an out-of-line step, owed afterwards."""
    _net_record: tuple[ThreadFlags, int, int, int | None] | None = field(default=None, repr=False)

    def registers(self, arch: Arch) -> ptrace.Regset:
        """This task's register buffer (reused from stop to stop)."""
        if self.regs is None:
            self.regs = ptrace.Regset(arch.regset, arch.regset_word)
        return self.regs

    def net_record(self, net: Net, flags: ThreadFlags, ip: int, sp: int, step_slot: int | None) -> None:
        """Tell the net, before uemu changes this stopped thread's registers, how to
        finish its hit if uemu dies (written only when it differs from the last)."""
        record = (flags, ip, sp, step_slot)
        if record != self._net_record:
            net.set_thread(self.tid, flags, ip, sp, step_slot)
            self._net_record = record

    def hold(self, sig: int, info: bytes) -> None:
        """Keep a signal for the program until the task is ours no more."""
        self.held.append((sig, info))

    @property
    def at_signal_stop(self) -> bool:
        """Whether its stop can deliver a signal on resume: a signal-delivery or
        syscall stop can, a PTRACE_EVENT_* stop ignores it (ptrace(2))."""
        return self.stop_kind in (StopKind.SIGNAL, StopKind.SYSCALL)

    @property
    def injectable(self) -> bool:
        """Stopped where a system call may be injected (``inject.INJECTABLE``)."""
        return self.stopped and self.stop_kind in INJECTABLE


@dataclass
class _PendingChild:
    """Half of a task creation: the new task's first stop came before its
    creator's event (``status``), or the event before the stop (``parent``), or
    the task was let go and waits for its first stop to be detached (``release``)."""

    status: int | None = None
    parent: Task | None = None
    kind: StopKind = StopKind.FORK
    release: Task | None = None
    step: ActiveStep | None = None
    """The out-of-line step the creator was in: the new task starts in its slot."""


class Tracees:
    """Every task (thread) and mm (address space) of the traced process tree."""

    def __init__(self, uprobes: Uprobes, follow_forks: bool, needs_tracer: Callable[[], bool],
                 warn: Callable[[str], None]):
        self.uprobes = uprobes
        self.follow_forks = follow_forks
        self.needs_tracer = needs_tracer
        """Whether every task must keep a tracer until it exits (seccomp mapping filter)."""
        self.warn = warn
        self.tasks: dict[int, Task] = {}
        self.mms: dict[int, Mm] = {}
        """pid -> its mm; processes sharing one (vfork) map to the same object."""
        self._pending: dict[int, _PendingChild] = {}
        self._vforked: dict[int, Task] = {}
        """Children that share their parent's mm (vfork): its jump table names the parent."""
        self._objects: dict[int, dict[tuple[int, int], MappedObject]] = {}
        """Objects opened for a look at a process before attaching, kept for its mm."""
        self.child_pid: int | None = None
        """The spawned command's pid, whose exit status ``exit_status`` keeps."""
        self.exit_status: int | None = None

    def unique_mms(self) -> list[Mm]:
        return list({id(mm): mm for mm in self.mms.values()}.values())

    def new_mm(self, pid: int, arch: Arch) -> Mm:
        """A fresh mm for a process we are about to arm: its maps and objects now."""
        vmas = read_maps(pid)
        mm = Mm(pid, arch, ptrace.Memory(pid), vmas)
        mm.objects = {o.file_id: o for o in self.objects_of(pid, vmas)}
        self.mms[pid] = mm
        return mm

    def objects_of(self, pid: int, vmas: list[Vma]) -> list[MappedObject]:
        """The ELF objects mapped in ``vmas`` of ``pid``, each with its VMAs there.  A
        file opened at an earlier look at the same process (attach looks before it
        seizes) is not read again; its VMAs are this look's (an exec in between maps
        the same ld.so elsewhere)."""
        known = self._objects.setdefault(pid, {})
        unknown = [v for v in vmas if v.file_backed and v.file_id not in known]
        if unknown:
            objects, warnings = mapped_objects(pid, unknown)
            for warning in warnings:
                self.warn(warning)
            known.update((o.file_id, o) for o in objects)
        by_file: dict[tuple[int, int], list[Vma]] = {}
        for vma in vmas:
            if vma.file_id in known:
                by_file.setdefault(vma.file_id, []).append(vma)
        return [MappedObject(known[file_id].elf, file_id, file_vmas, known[file_id].ctime_ns)
                for file_id, file_vmas in by_file.items()]

    # ---- creation ------------------------------------------------------------------

    def on_new_task(self, parent: Task, kind: StopKind, child: int) -> list[tuple[Task, Resume]]:
        """The creator's half (fork, vfork, clone); the child's held first stop
        resumes now if it came first."""
        pending = self._pending.pop(child, None)
        if pending is None:
            self._pending[child] = _PendingChild(parent=parent, kind=kind, step=parent.xol)
            return []
        return self._adopt(child, parent, kind, pending.status, parent.xol)

    def on_unknown_stop(self, stop: Stop) -> list[tuple[Task, Resume]]:
        """A stop of a task we do not know yet: a new task's first stop, or the exit
        of one that died before its creator's event."""
        pending = self._pending.pop(stop.tid, None)
        if stop.kind is StopKind.EXITED:
            return []
        if pending is not None and pending.release is not None:
            return [(pending.release, Resume(ResumeOp.DETACH))]
        if pending is not None and pending.parent is not None:
            return self._adopt(stop.tid, pending.parent, pending.kind, stop.status, pending.step)
        # Its first stop came before its creator's event: keep it stopped until then.
        self._pending[stop.tid] = _PendingChild(status=stop.status)
        return []

    def held_first_stops(self) -> list[int]:
        """New tasks kept at their first stop until their creator's event."""
        return [tid for tid, pending in self._pending.items() if pending.status is not None]

    def _adopt(self, child: int, parent: Task, kind: StopKind, first_status: int | None,
               step: ActiveStep | None) -> list[tuple[Task, Resume]]:
        """Both halves of a task creation are known; decide the child's fate."""
        stopped = first_status is not None
        if step is not None and parent.mm is not None:
            xol.finish_step_in_child(child, parent.mm, step)
        if kind is StopKind.CLONE and process.tgid(child) == parent.pid:
            task = Task(child, parent.pid, parent.mm, report=parent.report, stopped=stopped)
            self.tasks[child] = task
            self._thread_seen(task)
            return [(task, GO_ON)] if stopped else []
        follow = self.follow_forks and parent.report
        task = Task(child, child, None, report=follow, stopped=stopped)
        self.tasks[child] = task
        mm = parent.mm
        if mm is not None:
            if process.shares_memory(parent.pid, child):
                task.mm = mm
                self.mms.setdefault(child, mm)
                self._vforked[child] = task
                self._thread_seen(task)  # its parent's thread pointer: both now ask gettid
            else:
                task.mm = self.uprobes.dup_mmap(mm, ptrace.Memory(child))
                self.mms[child] = task.mm
                self._thread_seen(task)
                if not follow:
                    self._clean(task, task.mm)
                    self.leave_mm(task.mm, child)
                    task.mm = None
        if task.mm is None:
            task.report = False
            if not follow:
                resume = self.let_go(task)
                return [(task, resume)] if stopped else []
        return [(task, GO_ON)] if stopped else []

    def reported_pid(self, pid: int, tid: int) -> int | None:
        """The pid a jump path's hit of thread ``tid`` (recorded with ``pid``: its
        mm's) is reported with; None: not reported (a vfork child not followed, as
        its trap hits).  Safe from another thread."""
        task = self._vforked.get(tid)
        if task is None:
            return pid
        return task.pid if task.report else None

    def _thread_seen(self, task: Task) -> None:
        """A new thread, stopped: the jump path names its hits by its thread pointer."""
        jumps = self.uprobes.jumps
        if jumps is not None and task.mm is not None and task.stopped:
            jumps.thread_seen(task.mm, task.tid)

    # ---- letting go -----------------------------------------------------------------------

    def _clean(self, task: Task, mm: Mm) -> None:
        """A child not followed, before it runs a single instruction (it is stopped at
        its first stop, where a syscall may be injected): our bytes out, our counts
        undone, the program's SIGTRAP action back and the net's area unmapped."""
        self.uprobes.remove_all(mm)
        self._uninstall_net(task, mm, leaving=False)

    def restore(self, mm: Mm, injectable: Callable[[Mm], Task]) -> None:
        """Leaving ``mm``, every thread parked and out of the XOL slots (``injectable``
        gives one where a system call may be injected): the jump path records nothing
        more, every byte and counter goes back (``Uprobes.remove_all``), the XOL area
        is unmapped, the program's SIGTRAP action put back and the net's area unmapped
        unless a thread is inside the jump path's part of it.  What fails is said, and
        the other mms are restored all the same."""
        jumps = self.uprobes.jumps
        try:
            if jumps is not None:
                jumps.leave(mm)
            self.uprobes.remove_all(mm)
            if mm.xol_area is None and mm.net is None:
                return
            task = injectable(mm)
            if mm.xol_area is not None:
                xol.remove_area(task, mm)
            self._uninstall_net(task, mm, leaving=True)
        except (OSError, errors.TraceeGone) as err:
            self.warn(f"process {mm.pid}: could not restore everything: {err}")

    def _uninstall_net(self, task: Task, mm: Mm, leaving: bool) -> None:
        """The program's SIGTRAP action back and the net's area unmapped, through
        ``task``; at ``leaving``, the area stays while a thread is inside the jump
        path's part of it (``keeps_area``).  The jump path forgets ``mm`` either way:
        its thread table is gone or inert, and a thread started or a process forked
        later (a command left under the seccomp filter stays traced until it ends)
        must find nothing of it to write to."""
        net, jumps = mm.net, self.uprobes.jumps
        if net is None:
            return
        try:
            call = inject.caller(task, mm)  # through the stub while the area is there
            keep_area = leaving and jumps is not None and jumps.keeps_area(
                mm, [t.tid for t in self.tasks.values() if t.mm is mm], call)
            net.uninstall(call, inject.caller(task, mm, through_net=False), keep_area)
            mm.net = None
        finally:
            if jumps is not None:
                jumps.forget(mm)

    def let_go(self, task: Task) -> Resume:
        """Stop tracing a task that holds none of our bytes: detach it now (or at
        its first stop, still to come: KEEP), or, under the seccomp filter, keep it
        as a silent tracee until it exits."""
        task.report = False
        if self.needs_tracer():
            return GO_ON
        if not task.stopped:
            # Its first stop is still to come; ``on_unknown_stop`` detaches it then.
            del self.tasks[task.tid]
            self._pending[task.tid] = _PendingChild(release=task)
            return KEEP
        return Resume(ResumeOp.DETACH)

    def exited(self, task: Task, status: int) -> None:
        """The task is gone; forget what it held (kernel: exit_mm -> uprobe_clear_state)."""
        del self.tasks[task.tid]
        mm = task.mm
        if mm is not None and mm.xol_area is not None:
            mm.xol_area.free_slot(task.tid)
        if mm is not None and mm.net is not None:
            with suppress(OSError):  # the whole process is gone with its table
                mm.net.clear_thread(task.tid)
                if self.uprobes.jumps is not None:
                    self.uprobes.jumps.thread_exited(mm, task.tid)
        if task.tid == task.pid == self.child_pid:
            self.exit_status = shell_status(status)
        if mm is not None and not any(t.mm is mm for t in self.tasks.values()):
            self.leave_mm(mm, task.pid)

    def _old_image_gone(self, task: Task) -> None:
        """The old image is gone (nothing to restore).  A non-leader thread that
        execs takes the leader's id; every other thread of the old image is gone
        without a report."""
        pid = task.pid
        for other in [t for t in self.tasks.values() if t.pid == pid and t is not task]:
            del self.tasks[other.tid]
        self.tasks.pop(task.tid, None)
        task.tid = pid
        self.tasks[pid] = task
        task.syscall = task.sigaction = None
        task.regs = None
        if task.mm is not None:
            self.leave_mm(task.mm, pid)
        task.mm = None

    def on_exec(self, task: Task, arm: bool) -> Resume:
        """An exec stop: the old image is gone; a new mm for the new one, armed at
        execve's syscall-exit stop (``arm``; False: uemu only stays as the tracer)."""
        self._old_image_gone(task)
        if not arm:
            return GO_ON
        if not task.report:
            # A child we kept only for safety (vfork, not followed): its new image
            # has none of our bytes.
            return self.let_go(task)
        try:
            task.mm = self.new_mm(task.pid, process.executable_arch(task.pid))
        except errors.UnsupportedArch as err:
            self.warn(f"process {task.pid} exec'd a program uemu cannot trace ({err.message}); leaving it alone")
            return self.let_go(task)
        # The exec stop is inside execve, where no syscall can be injected for the net:
        # arm at execve's syscall-exit stop, before the new image's first instruction.
        task.arm_pending = True
        return Resume(ResumeOp.SYSCALL)

    def leave_mm(self, mm: Mm, pid: int) -> None:
        """Process ``pid`` left ``mm`` (exit, exec, or a child cleaned and let go):
        forget it, without writing, unless another process still shares it (vfork)."""
        if self.mms.get(pid) is mm:
            del self.mms[pid]
        if not any(t.mm is mm for t in self.tasks.values() if t.pid != pid):
            self.uprobes.clear_state(mm)

    def parked(self) -> list[Task]:
        return [t for t in self.tasks.values() if t.stopped]

    def all_parked(self, pid: int | None = None) -> bool:
        """Every task (of process ``pid``) stopped, or exiting (past its exit stop it never
        stops again, and a group leader's end waits for the other threads'), and no new
        task's first stop still due: a task created while everything was being stopped
        (its creator's event seen) must be adopted too, or it would be left behind with
        our bytes."""
        return all(t.stopped or t.exiting for t in self.tasks.values() if pid is None or t.pid == pid) and not any(
            p.parent is not None and (pid is None or p.parent.pid == pid) for p in self._pending.values())
