"""The event loop: one tracer, many tasks; turns ptrace stops into core calls.

Shaped like strace's ``while (dispatch_event(next_event()))``: ``_next_stop``
makes the one blocking ``waitpid(-1, __WALL)``, ``_dispatch`` decides what the
stop means and ends in exactly one resume (or, while stopping everything to
leave, parks the task with the signal it still owes the program).

Leaving is the same code on every way out (end of the program, Ctrl-C,
SIGTERM, SIGHUP, --duration, --max-events, an exception inside uemu): stop
every thread, restore every byte from the files, lower every counter we
raised, re-read and check, detach each thread with its pending signal.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

from uemu.arch import Arch
from uemu.arch.base import Plan, StepOutOfLine, XolSetup

from . import errors, process, probespec, ptrace, sdt, seccomp, xol
from .events import Event
from .maps import Vma, read_maps
from .probespec import RawUprobe, SdtPattern
from .uprobes import Consumer, Mm, ProbeInfo, Uprobe, Uprobes
from .xol import ActiveStep, XolArea

Handler = Callable[[Event], None]

_SEIZE_OPTIONS = (
    ptrace.O_TRACESYSGOOD
    | ptrace.O_TRACECLONE
    | ptrace.O_TRACEFORK
    | ptrace.O_TRACEVFORK
    | ptrace.O_TRACEEXEC
    | ptrace.O_TRACESECCOMP
)
_SIGTRAP_SYSCALL = signal.SIGTRAP | 0x80
_LEAVING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)

MAPPINGS_MODES = ("seccomp", "rendezvous", "syscall", "exec")
"""How new mappings are noticed (README: "Noticing new mappings"):
seccomp     run only: a filter in the child stops exactly the mapping syscalls;
rendezvous  a breakpoint where the dynamic linker reports each dlopen/dlclose,
            with every syscall stopped until that breakpoint is armed;
syscall     a stop at every syscall's entry and exit;
exec        nothing after exec."""


@dataclass(eq=False)
class Task:
    """One traced thread."""

    tid: int
    pid: int
    mm: Mm | None
    report: bool = True
    """False for a child we only keep safe (not followed): its hits are not reported."""
    stopped: bool = True
    """In a ptrace-stop that we have not resumed yet."""
    listening: bool = False
    """In a group-stop we answered with PTRACE_LISTEN."""
    owed_signal: int = 0
    """A signal taken from the program while parked; given back when it resumes or at detach."""
    syscall: tuple[str, tuple[int, ...]] | None = None
    """The mapping syscall this thread is inside (kind, arguments), between its seccomp or entry
    stop and its exit stop."""
    regs: ptrace.Regset | None = None
    xol: ActiveStep | None = None
    """The displaced instruction this thread is executing in its XOL slot."""
    held: list[tuple[int, bytes]] = field(default_factory=list)
    """Signals (number, siginfo) held back during an out-of-line step, owed afterwards."""


@dataclass
class _PendingChild:
    """Half of a task creation: the new task's first stop came before its
    creator's event (``status``), or the event before the stop (``parent``), or
    we let the task go and wait for its first stop to detach it (``release``)."""

    status: int | None = None
    parent: Task | None = None
    event: int = 0
    release: bool = False
    step: ActiveStep | None = None
    """The out-of-line step the creator was in: the new task starts in its slot."""


class Session:
    """Trace SDT probes (and raw uprobes) in a process tree.

    Use ``spawn(argv)`` or ``attach(pid)``, then ``run(handler)`` or iterate
    ``events()``; the session detaches cleanly on every way out.  ``probes`` are
    PROBE words (``[OBJECT:]PROVIDER:NAME`` globs, ``PATH:OFFSET[(REF)]``,
    ``PATH:SYMBOL[+OFF]``); none means every SDT probe.
    """

    def __init__(
        self,
        probes: Sequence[str] = (),
        *,
        follow_forks: bool = False,
        decode_args: bool = True,
        mappings: str | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        self.specs = [probespec.parse(text) for text in probes]
        self.follow_forks = follow_forks
        self.decode_args = decode_args
        self.mappings = mappings
        self.warn = warn or (lambda message: print(f"uemu: warning: {message}", file=sys.stderr))
        self.uprobes = Uprobes(self.warn)
        self.handlers: list[Handler] = []
        self.tasks: dict[int, Task] = {}
        self.mms: dict[int, Mm] = {}
        self.consumers: list[Consumer] = []
        self.child_pid: int | None = None
        self.exit_status: int | None = None
        """The spawned command's exit status as the shell reports it (128+N for signal N)."""
        self.event_count = 0
        self.max_events: int | None = None
        self._pending_children: dict[int, _PendingChild] = {}
        self._seen_files: set[tuple[int, int]] = set()
        self._rendezvous: set[Uprobe] = set()
        self._removals: list[str] = []
        self._in_loop = False
        self._matched: set[int] = set()
        self._queue: deque[Event] | None = None
        self._stop_reason: str | None = None
        self._stopping = False
        self._passthrough = False
        self._old_handlers: dict[int, object] = {}
        self._closed = False

    # ---- public API -----------------------------------------------------------

    def add_handler(self, handler: Handler) -> None:
        """Call ``handler(event)`` at each hit, while the thread is still stopped at
        the probe (so ``event.read_string`` works)."""
        self.handlers.append(handler)

    def attach(self, pid: int) -> Session:
        """Seize every thread of a running process and arm the probes."""
        process.check_attachable(pid)
        arch = process.executable_arch(pid)
        mappings = self.mappings or "rendezvous"
        if mappings == "seccomp":
            raise errors.BadInput("seccomp mapping tracking needs 'uemu run': a running process cannot get the filter")
        self._check_mode(mappings)
        self.mappings = mappings
        mm = self._new_mm(pid, arch)
        self._resolve_or_fail(mm)
        self._install_signal_handlers()
        self._stopping = True
        try:
            self._seize_all(pid, mm)
            # The maps read before seizing may be stale: a thread ran until its stop.
            mm.vmas = read_maps(pid)
            self._update_objects(mm, mm.vmas)
            self._arm(mm, mm.vmas)
            self._arm_rendezvous(mm)
        except BaseException:
            self.close()
            raise
        self._resume_parked()
        return self

    def spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> Session:
        """Start ``argv`` under trace, stopped before its first instruction, arm, resume."""
        mappings = self.mappings or "seccomp"
        self._check_mode(mappings)
        self.mappings = mappings
        self._check_spawn_probes(argv)
        pid = self._fork_stopped(argv, env)
        self.child_pid = pid
        self._install_signal_handlers()
        options = _SEIZE_OPTIONS | ptrace.O_EXITKILL
        ptrace.seize(pid, options)
        self.tasks[pid] = Task(pid, pid, None)
        os.kill(pid, signal.SIGCONT)
        self.tasks[pid].stopped = False
        # Run until the exec stop has armed the new image (or the child died trying).
        while self.tasks and not any(t.mm for t in self.tasks.values()):
            tid, status = ptrace.wait()
            self._dispatch(tid, status)
        if self.exit_status is not None and not self.tasks:
            self._raise_exec_failure(argv)
        return self

    def run(self, handler: Handler | None = None, *, duration: float | None = None,
            max_events: int | None = None) -> None:
        """Trace until the processes exit, a leaving signal, ``duration`` seconds or
        ``max_events`` hits; then detach (restoring everything)."""
        if handler is not None:
            self.add_handler(handler)
        self.max_events = max_events
        self._install_signal_handlers(duration)
        try:
            self._loop()
        finally:
            self.close()

    def events(self, *, duration: float | None = None, max_events: int | None = None) -> Iterator[Event]:
        """Yield each hit as an Event; the session detaches when the iterator ends
        or is closed.  Events arrive after the thread resumed: arguments are
        decoded already, ``read_string`` is not available (use a handler)."""
        self._queue = deque()
        self.max_events = max_events
        self._install_signal_handlers(duration)
        try:
            while True:
                while self._queue:
                    yield self._queue.popleft()
                if not self._step():
                    break
            while self._queue:
                yield self._queue.popleft()
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
        if not self._in_loop:
            self._remove_pending()

    def _remove_pending(self) -> None:
        words, self._removals = self._removals, []
        self.specs = [spec for spec in self.specs if spec.text not in words]
        emptied = [u for word in words for u in self.uprobes.unregister(word)]
        if not emptied or not self._stop_all():
            self._stopping = False
            return
        for mm in {id(m): m for m in self.mms.values()}.values():
            for uprobe in emptied:
                self.uprobes.remove_uprobe(mm, uprobe)
        self._resume_parked()

    def stop(self, reason: str = "stopped") -> None:
        """Ask the loop to end at the next stop (safe from a handler or a signal handler)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._wake()

    def counts(self) -> dict[str, int]:
        """Hits per probe name (``provider:name``) over all its sites."""
        totals: dict[str, int] = {}
        for consumer in self.consumers:
            name = consumer.probe.full_name
            totals[name] = totals.get(name, 0) + consumer.hits
        return totals

    def close(self) -> None:
        """Leave: restore every process and detach (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._detach_all()
        finally:
            self._restore_signal_handlers()
            for mm in {id(m): m for m in self.mms.values()}.values():
                mm.memory.close()
            if self.child_pid is not None and self.exit_status is None:
                self._wait_for_child()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- probe selection ---------------------------------------------------------

    def _resolve_or_fail(self, mm: Mm) -> None:
        """Every PROBE word must match something in the process (near matches named)."""
        for spec in self.specs:
            if not any(self._matches(spec, mapped) for mapped in mm.objects.values()):
                if isinstance(spec, SdtPattern):
                    probes = [p for m in mm.objects.values() for p in m.elf.probes]
                    raise errors.ProbeNotFound(spec.text, probespec.near_matches(spec, probes))
                raise errors.ProbeNotFound(spec.text)

    def _check_spawn_probes(self, argv: Sequence[str]) -> None:
        """Before starting anything, check that each PROBE word can match the
        program, its start-up libraries (as ``ldd`` lists them) or a named file."""
        if not self.specs:
            return
        candidates = _program_and_libraries(argv[0])
        objects = []
        for path in candidates:
            try:
                objects.append(sdt.open_elf(path))
            except errors.UemuError:
                continue
        for spec in self.specs:
            named = spec.object if isinstance(spec, SdtPattern) else spec.path
            if named and os.path.isfile(named) and named not in candidates:
                objects.append(sdt.open_elf(named))
            if not any(_file_matches(spec, obj) for obj in objects):
                if isinstance(spec, SdtPattern):
                    near = probespec.near_matches(spec, [p for o in objects for p in o.probes])
                    raise errors.ProbeNotFound(spec.text, near)
                raise errors.ProbeNotFound(spec.text)

    def _matches(self, spec: probespec.ProbeSpec, mapped: sdt.MappedObject) -> bool:
        return bool(self._selected(spec, mapped))

    def _selected(self, spec: probespec.ProbeSpec, mapped: sdt.MappedObject) -> list[tuple[int, int, ProbeInfo]]:
        """(file offset, ref_ctr_offset, what to report) for each site ``spec`` selects in ``mapped``."""
        elf = mapped.elf
        if isinstance(spec, SdtPattern):
            return [
                (p.file_offset, p.semaphore_offset or 0, _probe_info(p))
                for p in elf.probes
                if spec.matches(p) and p.file_offset is not None
            ]
        if not _same_file(spec.path, mapped.file_id):
            return []
        if isinstance(spec, RawUprobe):
            offset, ref = spec.offset, spec.ref_ctr_offset
        else:
            vaddr = elf.symbol_address(spec.symbol)
            if vaddr is None:
                raise errors.ProbeNotFound(spec.text, [f"{spec.path} has no symbol {spec.symbol!r}"])
            offset, ref = elf.file_offset(vaddr + spec.offset, executable=True), 0
            if offset is None:
                raise errors.UprobeError(f"{spec.text}: not in an executable segment")
        vaddr = elf.vaddr(offset)
        name = f"p_{_event_stem(spec.path)}_{offset:#x}"
        return [(offset, ref, ProbeInfo(elf.path, "uprobes", name, vaddr if vaddr is not None else offset, ""))]

    def _register_object(self, mm: Mm, mapped: sdt.MappedObject) -> list[Uprobe]:
        """Uprobes for the sites the PROBE words select in one object (once per file)."""
        if mapped.file_id in self._seen_files:
            return self.uprobes.by_file.get(mapped.file_id, [])
        self._seen_files.add(mapped.file_id)
        chosen: dict[tuple[int, int, ProbeInfo, str], None] = {}
        for spec in self.specs or [SdtPattern(None, "*", "*", "*:*")]:
            for offset, ref, info in self._selected(spec, mapped):
                chosen[offset, ref, info, spec.text] = None
        uprobes = []
        for offset, ref, info, word in chosen:
            uprobe = self.uprobes.register(mapped, offset, ref, info, word)
            for consumer in uprobe.consumers:
                if consumer not in self.consumers:
                    self.consumers.append(consumer)
            uprobes.append(uprobe)
        return uprobes

    # ---- processes and mappings ----------------------------------------------------

    def _new_mm(self, pid: int, arch: Arch) -> Mm:
        if arch.backend is None:
            raise errors.UnsupportedArch(arch.name, arch.elf_class, "uemu can list its probes but not trace them")
        vmas = read_maps(pid)
        mm = Mm(pid, arch, ptrace.Memory(pid), [])
        objects, warnings = sdt.mapped_objects(pid, vmas)
        for warning in warnings:
            self.warn(warning)
        mm.objects = {o.file_id: o for o in objects}
        mm.vmas = vmas
        self.mms[pid] = mm
        return mm

    def _arm(self, mm: Mm, new_vmas: list[Vma]) -> None:
        """Register what the PROBE words select in newly seen objects, then run the
        kernel's mmap hook over the new VMAs (delayed counters, then breakpoints)."""
        for mapped in list(mm.objects.values()):
            if any(v.file_id == mapped.file_id for v in new_vmas):
                self._register_object(mm, mapped)
        self.uprobes.mmap(mm, sorted(new_vmas, key=lambda v: v.start))

    def _refresh_mappings(self, mm: Mm, kind: str | None, args: tuple[int, ...], result: int) -> None:
        """Bring ``mm`` up to date after a mapping syscall (or exec) and run the hooks.

        The kind decides what happened to the pages: munmap/mmap/remap drop our
        breakpoints in the range (the pages went away or were replaced), mremap
        moves them with the pages, mprotect keeps them.  Every VMA an mmap
        created is new, even one that replaced a mapping of the same shape
        (MAP_FIXED): the kernel runs its mmap hook on it.
        """
        old_keys = {_vma_key(v) for v in mm.vmas}
        vmas = read_maps(mm.pid)
        mapped = (0, 0)
        if kind in ("munmap", "remap_file_pages"):
            self.uprobes.munmap(mm, args[0], args[0] + args[1])
        elif kind in ("mmap", "old_mmap") and not _failed(result):
            mapped = (result, result + args[1])
            self.uprobes.munmap(mm, *mapped)
        elif kind == "mremap" and not _failed(result):
            self.uprobes.mremap(mm, args[0], args[1], result)
        elif kind is None:
            self._drop_vanished_breakpoints(mm, vmas)
        mm.vmas = vmas
        new_vmas = [v for v in vmas if _vma_key(v) not in old_keys or (v.start < mapped[1] and v.end > mapped[0])]
        self._update_objects(mm, new_vmas)
        if new_vmas:
            self._arm(mm, new_vmas)

    def _drop_vanished_breakpoints(self, mm: Mm, vmas: list[Vma]) -> None:
        """Without the syscall at hand (a rendezvous), tell from memory which of our
        breakpoints went away: one stays ours only where the same file offset is
        still mapped there and still holds our trap (an mprotect keeps the pages;
        a munmap or a remap does not)."""
        for vaddr, uprobe in list(mm.installed.items()):
            vma = next((v for v in vmas if v.start <= vaddr < v.end), None)
            kept = vma is not None and vma.file_id == uprobe.file_id and vma.vaddr_to_offset(vaddr) == uprobe.offset
            if kept:
                trap = mm.backend.trap_bytes(uprobe.original)
                try:
                    kept = mm.memory.read(vaddr, len(trap)) == trap
                except OSError:
                    kept = False
            if not kept:
                self.uprobes.munmap(mm, vaddr, vaddr + 1)

    def _update_objects(self, mm: Mm, new_vmas: list[Vma]) -> None:
        """Open objects seen for the first time; give every object its current VMAs.
        Argument readers of an object that moved are rebuilt (its symbols moved too)."""
        unknown = [v for v in new_vmas if v.file_backed and v.file_id not in mm.objects]
        if unknown:
            objects, warnings = sdt.mapped_objects(mm.pid, unknown)
            for warning in warnings:
                self.warn(warning)
            for mapped in objects:
                mm.objects[mapped.file_id] = mapped
        for mapped in mm.objects.values():
            vmas = [v for v in mm.vmas if v.file_id == mapped.file_id]
            if vmas != mapped.vmas:
                mapped.vmas = vmas
                for consumer in [c for c in mm.readers if c.probe.object == mapped.elf.path]:
                    del mm.readers[consumer]

    # ---- attaching -------------------------------------------------------------------

    def _seize_all(self, pid: int, mm: Mm) -> None:
        """Seize and stop every thread, repeating until no new thread appears
        (threads created meanwhile by seized threads are auto-attached)."""
        seized: set[int] = set()
        while True:
            fresh = [t for t in process.threads(pid) if t not in seized and t not in self.tasks]
            if not fresh:
                break
            for tid in fresh:
                try:
                    ptrace.seize(tid, _SEIZE_OPTIONS)
                except errors.TraceeGone:
                    continue
                except OSError as err:
                    if tid == pid:
                        if err.errno == errno.EPERM:
                            status = process.status(pid)
                            if status.tracer_pid:
                                raise errors.AttachRefused(
                                    f"process {pid} is already traced by {status.tracer_pid} "
                                    f"({process.comm(status.tracer_pid)})"
                                ) from None
                            raise process.attach_denied(pid) from None
                        raise
                    continue
                seized.add(tid)
                self.tasks[tid] = Task(tid, pid, mm, stopped=False)
                ptrace.interrupt(tid)
        self._wait_until_parked()

    def _wait_until_parked(self) -> None:
        while any(not t.stopped for t in self.tasks.values()):
            tid, status = ptrace.wait()
            self._dispatch(tid, status)

    def _resume_parked(self) -> None:
        self._stopping = False
        for task in list(self.tasks.values()):
            if task.stopped:
                self._resume(task, task.owed_signal)

    # ---- spawning ----------------------------------------------------------------------

    def _fork_stopped(self, argv: Sequence[str], env: dict[str, str] | None) -> int:
        """fork; the child stops itself, so we can seize it, then installs the
        mapping filter and execs.  An exec failure comes back through a pipe."""
        program = None
        if self.mappings == "seccomp":
            from uemu import arch as arches

            program = seccomp.mapping_filter(a for a in arches.all_arches() if a.backend and a.mapping_syscalls)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # the child
            try:
                os.close(read_end)
                for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)  # as the shell would have left them
                os.kill(os.getpid(), signal.SIGSTOP)
                if program is not None:
                    seccomp.install(program)
                if env is None:
                    os.execvp(argv[0], list(argv))
                os.execvpe(argv[0], list(argv), env)
            except OSError as err:
                os.write(write_end, str(err.errno).encode())
            finally:
                os._exit(127)
        os.close(write_end)
        self._exec_error_fd = read_end
        _, status = os.waitpid(pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            raise errors.UemuError(f"could not start {argv[0]}")
        return pid

    def _raise_exec_failure(self, argv: Sequence[str]) -> None:
        data = os.read(self._exec_error_fd, 64)
        os.close(self._exec_error_fd)
        code = int(data) if data else errno.ENOEXEC
        error = errors.NoSuchFile(argv[0]) if code == errno.ENOENT else errors.UemuError(
            f"cannot run {argv[0]}: {os.strerror(code)}"
        )
        error.exit_code = 127 if code == errno.ENOENT else 126
        raise error

    def _wait_for_child(self) -> None:
        """After detaching from a spawned command, wait for it as its parent."""
        while True:
            try:
                pid, status = os.waitpid(self.child_pid, 0)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == self.child_pid and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
                self.exit_status = _shell_status(status)
                return

    # ---- the loop --------------------------------------------------------------------

    def _loop(self) -> None:
        while self._step():
            pass

    def _step(self) -> bool:
        """Wait for one stop and dispatch it; False when tracing is over."""
        if self._stop_reason is not None or not self.tasks:
            return False
        try:
            tid, status = ptrace.wait()
        except ChildProcessError:
            self.tasks.clear()
            return False
        self._in_loop = True
        try:
            self._dispatch(tid, status)
        finally:
            self._in_loop = False
        if self._removals:
            self._remove_pending()
        return self._stop_reason is None and bool(self.tasks)

    def _dispatch(self, tid: int, status: int) -> None:
        task = self.tasks.get(tid)
        if task is None:
            self._unknown_task_stop(tid, status)
            return
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._task_gone(task, status)
            return
        task.stopped = True
        sig = os.WSTOPSIG(status)
        event = ptrace.stop_event(status)
        try:
            fetched = False
            if event == 0 and task.mm is not None and task.mm.xol_area is not None and sig != _SIGTRAP_SYSCALL:
                handled = self._on_signal_near_xol(task, sig)
                if handled is not None:
                    if task.tid in self.tasks:
                        self._resume(task, handled)
                    return
                fetched = True  # _on_signal_near_xol read the registers, nothing changed them
            if event == 0:
                if sig == signal.SIGTRAP:
                    sig = self._on_sigtrap(task, fetched)
                elif sig == _SIGTRAP_SYSCALL:
                    sig = self._on_syscall_stop(task)
            elif event == ptrace.EVENT_STOP:
                if ptrace.is_group_stop(status):
                    self._on_group_stop(task)
                    return
                if self._trap_still_queued(task):
                    return
                sig = 0  # an interrupt we asked for, a new task's first stop, or SIGCONT after LISTEN
                task.listening = False
            elif event in (ptrace.EVENT_CLONE, ptrace.EVENT_FORK, ptrace.EVENT_VFORK):
                sig = 0
                self._on_new_task(task, event, ptrace.event_message(tid))
            elif event == ptrace.EVENT_EXEC:
                sig = 0
                self._on_exec(task)
            elif event == ptrace.EVENT_SECCOMP:
                sig = 0
                self._on_seccomp(task)
                return
            else:
                sig = 0
        except errors.TraceeGone:
            return  # the task died under us; its exit status comes next
        if task.tid in self.tasks:
            self._resume(task, sig)

    def _trap_still_queued(self, task: Task) -> bool:
        """An interrupt stop is reported before a signal already queued: a thread
        may stop there right after our int3 or its out-of-line step, the SIGTRAP
        still pending.  Parked and detached so, it would die of it (and stand
        mid-instruction after an int3).  Let it run to its trap stop first, which
        handles that SIGTRAP; True when it was resumed so."""
        mm = task.mm
        if mm is None or not _sigtrap_pending(task.tid):
            return False
        step = task.xol
        if step is not None and step.setup.ends != "jump":
            self._resume_step(task)
        else:
            regs = self._regs(task, mm.arch)
            regs.fetch(task.tid)
            if mm.backend.trap_address(regs[mm.arch.ip_reg]) not in mm.installed:
                return False
            ptrace.cont(task.tid)
        task.stopped = False
        return True

    def _resume(self, task: Task, sig: int, event_stop: bool = False) -> None:
        """The one place a task is resumed (or parked while we are stopping everything).
        An ``event_stop`` (PTRACE_EVENT_*) cannot deliver a signal: held ones wait
        for the next stop that can."""
        if self._stopping:
            task.owed_signal = sig
            return
        task.owed_signal = 0
        if task.xol is None and task.held and not sig and not event_stop:
            sig = self._give_back_held(task)
        try:
            if task.xol is not None:
                self._resume_step(task)
            elif task.listening:
                ptrace.listen(task.tid)
            elif task.syscall is not None or self._traces_every_syscall(task):
                ptrace.syscall(task.tid, sig)
            else:
                ptrace.cont(task.tid, sig)
            task.stopped = False
        except errors.TraceeGone:
            pass

    def _resume_step(self, task: Task) -> None:
        """A thread stepping out of line goes on by its step's ending.  A system call
        stepped so is resumed with its syscall stops (seccomp's exit stop, or every
        syscall's) where they are wanted: mappings are noticed there, and its exit
        stop ends the step (``_finish_syscall_step``)."""
        step = task.xol
        sees_syscalls = task.syscall is not None or self._traces_every_syscall(task)
        if step.setup.ends == "step" and not (step.plan.syscall and sees_syscalls):
            ptrace.singlestep(task.tid)
        elif sees_syscalls:
            ptrace.syscall(task.tid)
        else:
            ptrace.cont(task.tid)

    def _traces_every_syscall(self, task: Task) -> bool:
        mm = task.mm
        if mm is None or self._passthrough:
            return False
        return self.mappings == "syscall" or (self.mappings == "rendezvous" and not mm.rendezvous_armed)

    def _arm_rendezvous(self, mm: Mm) -> None:
        """Put uemu's own breakpoint on the dynamic linker's ``r_brk`` (glibc's
        ``_dl_debug_state``), which it calls around every change of its object list,
        mapped and before the new objects' constructors run (gdb's method).

        ``r_brk`` is set once ld.so has started; until then (at exec) every syscall
        stops so start-up libraries are still seen.  A process with no dynamic
        linker has nothing to watch.
        """
        if self.mappings != "rendezvous" or mm.rendezvous_armed:
            return
        linker = next((m for m in mm.objects.values() if os.path.basename(m.elf.path).startswith("ld")
                       and m.symbol_runtime_address("_r_debug") is not None), None)
        if linker is None:
            mm.rendezvous_armed = not any(os.path.basename(m.elf.path).startswith("ld") for m in mm.objects.values())
            return
        word = mm.arch.word_size
        order = "little" if mm.arch.little_endian is not False else "big"
        r_debug = linker.symbol_runtime_address("_r_debug")
        # struct r_debug { int r_version; struct link_map *r_map; ElfW(Addr) r_brk; ... }
        r_brk = int.from_bytes(mm.memory.read(r_debug + 2 * word, word), order)
        vma = next((v for v in mm.vmas if v.start <= r_brk < v.end and v.file_id == linker.file_id), None)
        if vma is None:
            return  # not initialised yet
        uprobe = self.uprobes.register(linker, vma.vaddr_to_offset(r_brk), 0, None)
        self.uprobes.install_breakpoint(mm, uprobe, r_brk)
        self._rendezvous.add(uprobe)
        mm.rendezvous_armed = True

    # ---- stops -------------------------------------------------------------------------

    def _on_sigtrap(self, task: Task, fetched: bool = False) -> int:
        """A SIGTRAP signal-delivery stop: our breakpoint, or the program's own trap.
        ``fetched``: the task's registers were already read at this stop."""
        mm = task.mm
        if mm is None:
            return signal.SIGTRAP
        arch = mm.arch
        regs = self._regs(task, arch)
        if not fetched:
            regs.fetch(task.tid)
        ip = regs[arch.ip_reg]
        site = mm.backend.trap_address(ip)
        uprobe = mm.installed.get(site)
        if uprobe is None:
            return signal.SIGTRAP  # not ours: the program's int3, raise(SIGTRAP), a debugger-style test
        if uprobe in self._rendezvous and not self._stopping:
            self._refresh_mappings(mm, None, (), 0)
        if self._stopping:
            # Leaving: the breakpoint is about to be restored; run the instruction again.
            regs[arch.ip_reg] = site
            regs.store(task.tid)
            return 0
        if task.report:
            self._run_consumers(task, mm, uprobe, site, regs)
        plan = uprobe.plan_at(mm.backend, site)
        self._finish_hit(task, mm, plan, site, regs)
        return 0

    def _finish_hit(self, task: Task, mm: Mm, plan: Plan, site: int, regs: ptrace.Regset) -> None:
        """Carry out the probed instruction: emulate it (the SDT nop: no second stop),
        or set up its out-of-line step."""
        arch = mm.arch
        if isinstance(plan, StepOutOfLine):
            self._start_xol(task, mm, plan, site, regs)
            return
        effects = mm.backend.emulate(plan, _RegsView(regs, arch.ip_reg, site))
        for address, data in effects.writes:
            mm.memory.write(address, data)
        _set_registers(task, regs, effects.regs)

    # ---- out-of-line steps ------------------------------------------------------------

    def _start_xol(self, task: Task, mm: Mm, plan: StepOutOfLine, site: int, regs: ptrace.Regset) -> None:
        """Kernel: ``pre_ssout()``: a slot for this thread, the backend's bytes and
        registers; "step"/"trap" leave an ActiveStep to finish at the next stop."""
        area = mm.xol_area or self._create_xol_area(task, mm, site, regs)
        slot = area.take_slot(task.tid)
        if slot is None:
            raise errors.UemuError(f"process {mm.pid}: every XOL slot is taken ({len(area.slots)} threads)")
        last = area.plans.get(slot)
        if last is not None and last[0] is plan and not last[1].restore:
            setup = last[1]  # it borrows no register: the same bytes, already in the slot
        else:
            setup = mm.backend.prepare_xol(plan, slot, _RegsView(regs, mm.arch.ip_reg, site))
            if area.code.get(slot) != setup.code:
                mm.memory.write(slot, setup.code)
                area.code[slot] = setup.code
            area.plans[slot] = (plan, setup)
        _set_registers(task, regs, setup.regs)
        if setup.ends != "jump":
            task.xol = ActiveStep(plan, slot, setup)

    def _create_xol_area(self, task: Task, mm: Mm, near: int, regs: ptrace.Regset) -> XolArea:
        hold = lambda sig, info: task.held.append((sig, info))  # noqa: E731
        regs_now = regs.snapshot()
        mm.xol_area = xol.create_area(task.tid, regs, mm.arch, mm.vmas, mm.memory, near,
                                      mm.backend.slot_size, hold)
        assert regs.snapshot() == regs_now
        mm.vmas = read_maps(mm.pid)
        return mm.xol_area

    def _on_signal_near_xol(self, task: Task, sig: int) -> int | None:
        """A signal stop of a thread that is stepping out of line or stands in a slot.

        Kernel: ``handle_singlestep()`` and ``uprobe_deny_signal()``: the step's own
        trap finishes it; a fault raised by the displaced instruction aborts it
        (ip back to the site, the signal delivered there); any other signal is held
        until the step is over.  Returns the signal to resume with, or None when
        the stop has nothing to do with XOL.
        """
        mm = task.mm
        area = mm.xol_area
        regs = self._regs(task, mm.arch)
        regs.fetch(task.tid)
        ip = regs[mm.arch.ip_reg]
        step = task.xol
        if step is None:
            if not area.contains(ip):
                return None
            plan, setup = area.plans[area.slot_at(ip)]
            step = ActiveStep(plan, area.slot_at(ip), setup)
            if ip != step.slot:
                # A "jump" slot: the instruction ran; only the jump back is left.
                _set_registers(task, regs, {mm.arch.ip_reg: plan.vaddr + plan.size})
                return sig
            task.xol = step = ActiveStep(plan, step.slot, XolSetup(setup.code, {}, "step", setup.restore))
        if self._step_done(mm, step, sig, ip):
            self._end_step(task, regs, mm.backend.finish_xol)
            return 0
        info = ptrace.signal_info_bytes(task.tid)
        if _is_fault(sig, info) and ip == step.slot:
            self._end_step(task, regs, mm.backend.abort_xol)
            return sig
        task.held.append((sig, info))
        return 0

    def _step_done(self, mm: Mm, step: ActiveStep, sig: int, ip: int) -> bool:
        if sig != signal.SIGTRAP:
            return False
        if step.setup.ends == "trap":
            return mm.backend.trap_address(ip) == step.slot + step.plan.size
        return ip != step.slot

    def _end_step(self, task: Task, regs: ptrace.Regset, fix: Callable) -> None:
        """Put back what the setup borrowed, then the backend's finish or abort fix-ups."""
        step = task.xol
        task.xol = None
        mm = task.mm
        for name, value in step.setup.restore.items():
            regs[name] = value
        effects = fix(step.plan, step.slot, _RegsView(regs, mm.arch.ip_reg, regs[mm.arch.ip_reg]))
        for address, data in effects.writes:
            mm.memory.write(address, data)
        _set_registers(task, regs, effects.regs, force=True)

    def _give_back_held(self, task: Task) -> int:
        """Resume with the first held signal (its own siginfo); re-raise the others."""
        sig, info = task.held.pop(0)
        try:
            ptrace.set_signal_info(task.tid, info)
        except OSError:
            pass  # not in a signal-delivery stop: the kernel makes its own siginfo
        for other, _ in task.held:
            _tgkill(task.pid, task.tid, other)
        task.held.clear()
        return sig

    def _leave_slot(self, task: Task) -> None:
        """Leaving: a thread inside a slot goes back to its site (instruction not run)
        or past it (it ran), with borrowed registers restored."""
        mm = task.mm
        area = mm.xol_area
        regs = self._regs(task, mm.arch)
        regs.fetch(task.tid)
        ip = regs[mm.arch.ip_reg]
        if task.xol is None and not area.contains(ip):
            return
        if task.xol is None:
            plan, setup = area.plans[area.slot_at(ip)]
            task.xol = ActiveStep(plan, area.slot_at(ip), setup)
        step = task.xol
        if ip == step.slot:
            self._end_step(task, regs, mm.backend.abort_xol)
        elif step.setup.ends == "jump":
            task.xol = None
            _set_registers(task, regs, {mm.arch.ip_reg: step.plan.vaddr + step.plan.size})
        else:
            self._end_step(task, regs, mm.backend.finish_xol)

    def _run_consumers(self, task: Task, mm: Mm, uprobe: Uprobe, site: int, regs: ptrace.Regset) -> None:
        memory = mm.memory
        wants_events = bool(self.handlers) or self._queue is not None
        for consumer in uprobe.consumers:
            consumer.hits += 1
            self.event_count += 1
            if wants_events:
                args = None
                if self.decode_args:
                    view = _RegsView(regs, mm.arch.ip_reg, site)
                    args = [read(view, memory.read) for read in mm.arg_readers(consumer)]
                probe = consumer.probe
                event = Event(
                    time.monotonic_ns(), task.pid, task.tid, probe.object, probe.provider, probe.name, site,
                    probe.args.split() if probe.args else [], args, memory.read_string,
                )
                for handler in self.handlers:
                    handler(event)
                if self._queue is not None:
                    event.read_string = None
                    self._queue.append(event)
            if self.max_events is not None and self.event_count >= self.max_events:
                self.stop("max-events")

    def _on_group_stop(self, task: Task) -> None:
        """SIGSTOP/SIGTSTP/SIGTTIN/SIGTTOU stopped the program: keep it stopped as
        without us, and hear of SIGCONT (PTRACE_LISTEN)."""
        task.listening = True
        if self._stopping:
            return
        try:
            ptrace.listen(task.tid)
            task.stopped = False
        except errors.TraceeGone:
            pass

    def _on_seccomp(self, task: Task) -> None:
        """A mapping syscall is about to run: remember it and stop again at its exit."""
        info = ptrace.syscall_info(task.tid)
        if not self._passthrough:
            self._note_mapping_syscall(task, info)
        self._resume(task, 0, event_stop=True)

    def _on_syscall_stop(self, task: Task) -> int:
        """Syscall entry or exit (PTRACE_SYSCALL): mapping syscalls refresh at exit."""
        info = ptrace.syscall_info(task.tid)
        if info.op == ptrace.SYSCALL_INFO_ENTRY:
            self._note_mapping_syscall(task, info)
            return 0
        if info.op == ptrace.SYSCALL_INFO_EXIT and task.syscall is not None and task.mm is not None:
            kind, args = task.syscall
            task.syscall = None
            if not self._passthrough:
                self._refresh_mappings(task.mm, kind, args, info.rval)
                self._arm_rendezvous(task.mm)
        task.syscall = None
        if info.op == ptrace.SYSCALL_INFO_EXIT and task.xol is not None:
            self._finish_syscall_step(task)
        return 0

    def _finish_syscall_step(self, task: Task) -> None:
        """At the exit stop of a system call stepped out of line (resumed with
        PTRACE_SYSCALL, not single-stepped): the instruction is done, ip just
        after it in the slot, so the step ends here."""
        step = task.xol
        mm = task.mm
        if step.setup.ends != "step" or not step.plan.syscall:
            return
        regs = self._regs(task, mm.arch)
        regs.fetch(task.tid)
        if regs[mm.arch.ip_reg] == step.slot + step.plan.size:
            self._end_step(task, regs, mm.backend.finish_xol)

    def _note_mapping_syscall(self, task: Task, info: ptrace.SyscallInfo) -> None:
        """At a syscall's entry: if it may change file mappings, keep its kind and
        arguments for its exit stop."""
        kind = task.mm.arch.mapping_syscalls.get(info.nr) if task.mm is not None else None
        if kind is not None:
            task.syscall = (kind, self._syscall_args(task, kind, info.args))

    def _syscall_args(self, task: Task, kind: str, args: tuple[int, ...]) -> tuple[int, ...]:
        if kind == "old_mmap":
            # i386 old_mmap passes one pointer to six 32-bit arguments.
            raw = task.mm.memory.read(args[0], 24)
            return tuple(int.from_bytes(raw[i : i + 4], "little") for i in range(0, 24, 4))
        return args

    def _on_exec(self, task: Task) -> None:
        """The old image is gone (nothing to restore); scan and arm the new one.

        A non-leader thread that execs takes the leader's id; every other
        thread of the old image is gone without a report.
        """
        pid = task.pid
        old_mm = task.mm
        for other in [t for t in self.tasks.values() if t.pid == pid and t is not task]:
            del self.tasks[other.tid]
        former = task.tid
        task.tid = pid
        self.tasks.pop(former, None)
        self.tasks[pid] = task
        task.syscall = None
        task.regs = None
        if old_mm is not None:
            self._drop_mm_user(old_mm, pid)
        task.mm = None
        if self._passthrough:
            return
        if not task.report:
            # A child we kept only for safety (vfork, not followed): its new image
            # has none of our bytes.
            self._let_go(task)
            return
        try:
            arch = process.executable_arch(pid)
            task.mm = self._new_mm(pid, arch)
        except errors.UnsupportedArch as err:
            self.warn(f"process {pid} exec'd a program uemu cannot trace ({err.message}); leaving it alone")
            self._let_go(task)
            return
        self._arm(task.mm, task.mm.vmas)

    def _let_go(self, task: Task) -> None:
        """Stop tracing a task that holds none of our bytes: detach it, or, under the
        seccomp filter, keep it as a silent tracee until it exits."""
        task.report = False
        if not self._needs_tracer():
            self._release(task)

    def _on_new_task(self, parent: Task, event: int, child: int) -> None:
        """fork, vfork or clone: a thread joins its mm; a process inherits our bytes
        and raised counters, and is followed (-f) or cleaned and let go."""
        pending = self._pending_children.pop(child, None)
        if pending is None:
            self._pending_children[child] = _PendingChild(parent=parent, event=event, step=parent.xol)
            return
        self._adopt(child, parent, event, pending.status, parent.xol)

    def _unknown_task_stop(self, tid: int, status: int) -> None:
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._pending_children.pop(tid, None)
            return
        pending = self._pending_children.pop(tid, None)
        if pending is not None and pending.release:
            try:
                ptrace.detach(tid)
            except errors.TraceeGone:
                pass
        elif pending is not None and pending.parent is not None:
            self._adopt(tid, pending.parent, pending.event, status, pending.step)
        else:
            # Its first stop came before its creator's event: keep it stopped until then.
            self._pending_children[tid] = _PendingChild(status=status)

    def _adopt(self, child: int, parent: Task, event: int, first_status: int | None,
               step: ActiveStep | None = None) -> None:
        """Both halves of a task creation are known; decide the child's fate."""
        if step is not None:
            self._finish_step_in_child(child, parent.mm, step)
        is_thread = event == ptrace.EVENT_CLONE and process.tgid(child) == parent.pid
        if is_thread:
            task = Task(child, parent.pid, parent.mm, report=parent.report, stopped=first_status is not None)
            self.tasks[child] = task
            if first_status is not None:
                self._resume(task, 0)
            return
        mm = parent.mm
        shares = mm is not None and process.shares_memory(parent.pid, child)
        follow = self.follow_forks and parent.report
        task = Task(child, child, None, report=follow, stopped=first_status is not None)
        self.tasks[child] = task
        if mm is not None:
            if shares:
                task.mm = mm
                self.mms.setdefault(child, mm)
            else:
                task.mm = self._dup_mm(mm, child)
                if not follow:
                    # Clean it before it runs a single instruction: our bytes out, our counts undone.
                    self.uprobes.remove_all(task.mm)
                    self._forget_mm(task.mm, child)
                    task.mm = None
        if task.mm is None and not follow and not self._needs_tracer():
            self._release(task, wait_first_stop=first_status is None)
            return
        if task.mm is None:
            task.report = False
        if first_status is not None:
            self._resume(task, 0)

    def _finish_step_in_child(self, child: int, mm: Mm, step: ActiveStep) -> None:
        """A task created by a system call its creator ran out of line (a probe on
        fork's or clone's ``syscall``) starts in the creator's slot, after the
        instruction: a forked child has no such slot (MADV_DONTFORK), a thread's
        slot has nothing to run after it.  Finish the step in the child as in the
        creator: borrowed registers back, ip after the probed instruction.  (The
        kernel kills parent and child here, Linux 6.18.)"""
        regs = ptrace.Regset(mm.arch.regset, mm.arch.regset_word)
        regs.fetch(child)
        for name, value in step.setup.restore.items():
            regs[name] = value
        ip = mm.arch.ip_reg
        effects = mm.backend.finish_xol(step.plan, step.slot, _RegsView(regs, ip, regs[ip]))
        for name, value in effects.regs.items():
            regs[name] = value
        regs.store(child)

    def _needs_tracer(self) -> bool:
        """Under the seccomp filter every descendant needs a tracer until it exits."""
        return self.mappings == "seccomp"

    def _dup_mm(self, parent: Mm, child: int) -> Mm:
        """Kernel: ``uprobe_dup_mmap()``: the child has our breakpoints and the counter
        values in its copied pages; delayed entries are not copied."""
        mm = Mm(child, parent.arch, ptrace.Memory(child), list(parent.vmas), dict(parent.objects))
        mm.installed = dict(parent.installed)
        mm.rendezvous_armed = parent.rendezvous_armed
        self.mms[child] = mm
        return mm

    def _release(self, task: Task, wait_first_stop: bool = False) -> None:
        """Detach a task we do not keep (it holds none of our bytes)."""
        if wait_first_stop:
            # Its first stop is still to come; the unknown-task path detaches it then.
            self.tasks.pop(task.tid, None)
            self._pending_children[task.tid] = _PendingChild(release=True)
            return
        self.tasks.pop(task.tid, None)
        sig = task.owed_signal or (self._give_back_held(task) if task.held else 0)
        try:
            ptrace.detach(task.tid, sig)
        except errors.TraceeGone:
            pass

    def _task_gone(self, task: Task, status: int) -> None:
        del self.tasks[task.tid]
        if task.mm is not None and task.mm.xol_area is not None:
            task.mm.xol_area.free_slot(task.tid)
        if task.tid == task.pid and task.pid == self.child_pid:
            self.exit_status = _shell_status(status)
        mm = task.mm
        if mm is not None and not any(t.mm is mm for t in self.tasks.values()):
            self._drop_mm_user(mm, task.pid)

    def _drop_mm_user(self, mm: Mm, pid: int) -> None:
        """A process left ``mm`` (exit or exec): forget it, without writing."""
        if self.mms.get(pid) is mm:
            del self.mms[pid]
        if not any(t.mm is mm for t in self.tasks.values() if t.pid != pid):
            self._forget_mm(mm, pid)

    def _forget_mm(self, mm: Mm, pid: int) -> None:
        """Kernel: ``uprobe_clear_state()``: delayed entries dropped, nothing written."""
        mm.delayed.clear()
        mm.installed.clear()
        mm.memory.close()
        if self.mms.get(pid) is mm:
            del self.mms[pid]

    # ---- leaving -------------------------------------------------------------------------

    def _stop_all(self) -> bool:
        """Park every task (interrupting the running ones); False if none is left."""
        self._stopping = True
        for task in self.tasks.values():
            if not task.stopped:
                try:
                    ptrace.interrupt(task.tid)
                except errors.TraceeGone:
                    task.stopped = True
        try:
            self._wait_until_parked()
        except ChildProcessError:
            self.tasks.clear()
        return bool(self.tasks)

    def _detach_all(self) -> None:
        if not self.tasks or not self._stop_all():
            return
        for task in list(self.tasks.values()):
            if task.mm is not None and task.mm.xol_area is not None:
                try:
                    self._leave_slot(task)
                except errors.TraceeGone:
                    pass
        restored = set()
        for mm in self.mms.values():
            if id(mm) in restored:
                continue
            restored.add(id(mm))
            try:
                self.uprobes.remove_all(mm)
                self._unmap_xol_area(mm)
            except (OSError, errors.TraceeGone) as err:
                self.warn(f"process {mm.pid}: could not restore everything: {err}")
        if self._needs_tracer():
            self._pass_through()
            return
        for task in list(self.tasks.values()):
            self._release(task)

    def _unmap_xol_area(self, mm: Mm) -> None:
        """Unmap the XOL area, making one of the process's parked threads call munmap."""
        area = mm.xol_area
        if area is None:
            return
        task = next(t for t in self.tasks.values() if t.mm is mm and t.stopped)
        regs = self._regs(task, mm.arch)
        regs.fetch(task.tid)
        xol.remove_area(task.tid, regs, mm.arch, mm.vmas, mm.memory, area,
                        lambda sig, info: task.held.append((sig, info)))
        mm.xol_area = None

    def _pass_through(self) -> None:
        """Stay the tracer, doing nothing, until every task has exited: under our
        seccomp filter a process without a tracer would get ENOSYS from mmap."""
        self._passthrough = True
        self._resume_parked()
        while self.tasks:
            try:
                tid, status = ptrace.wait()
            except ChildProcessError:
                break
            self._dispatch(tid, status)

    # ---- signals to uemu itself -------------------------------------------------------------

    def _install_signal_handlers(self, duration: float | None = None) -> None:
        """From the first ptrace call on, a leaving signal only records why we leave
        (installed once; the session's close puts the old handlers back)."""
        if threading.current_thread() is not threading.main_thread():
            return
        if not self._old_handlers:
            for sig in _LEAVING_SIGNALS:
                self._old_handlers[sig] = signal.signal(sig, self._on_leaving_signal)
        if duration is not None:
            signal.setitimer(signal.ITIMER_REAL, duration)

    def _restore_signal_handlers(self) -> None:
        if self._old_handlers:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()

    def _on_leaving_signal(self, signum: int, frame: FrameType | None) -> None:
        """Never raise here: the loop may be in the middle of a hit.  Record why and
        wake the blocking wait with an interrupt stop instead."""
        self.stop("duration" if signum == signal.SIGALRM else signal.Signals(signum).name)

    def _wake(self) -> None:
        for task in self.tasks.values():
            if not task.stopped:
                try:
                    ptrace.interrupt(task.tid)
                    return
                except errors.TraceeGone:
                    continue

    def _regs(self, task: Task, arch: Arch) -> ptrace.Regset:
        if task.regs is None:
            task.regs = ptrace.Regset(arch.regset, arch.regset_word)
        return task.regs

    @staticmethod
    def _check_mode(mappings: str) -> None:
        if mappings not in MAPPINGS_MODES:
            raise errors.BadInput(f"unknown mapping tracking {mappings!r}; one of {', '.join(MAPPINGS_MODES)}")


def _set_registers(task: Task, regs: ptrace.Regset, values: Mapping[str, int], force: bool = False) -> None:
    """Write registers back only if something changed (an SDT nop after int3 needs nothing)."""
    dirty = force
    for name, value in values.items():
        if regs[name] != value:
            regs[name] = value
            dirty = True
    if dirty:
        regs.store(task.tid)


_FAULT_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP})


def _sigtrap_pending(tid: int) -> bool:
    """Whether SIGTRAP is queued for this thread (``SigPnd`` of /proc/TID/status)."""
    with open(f"/proc/{tid}/status") as stream:
        for line in stream:
            if line.startswith("SigPnd:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTRAP - 1)))
    return False


def _is_fault(sig: int, info: bytes) -> bool:
    """Raised by the instruction itself (the kernel's si_code > 0), not sent by someone."""
    return sig in _FAULT_SIGNALS and ptrace.signal_code(info) > 0


_libc = ctypes.CDLL(None, use_errno=True)


def _tgkill(pid: int, tid: int, sig: int) -> None:
    """Send ``sig`` to one thread of another process (glibc's tgkill)."""
    _libc.tgkill(pid, tid, sig)


class _RegsView:
    """Registers as consumers and the backend must see them: as at the site
    (ip = breakpoint address, not after the trap)."""

    __slots__ = ("regs", "ip_reg", "ip")

    def __init__(self, regs: ptrace.Regset, ip_reg: str, ip: int):
        self.regs = regs
        self.ip_reg = ip_reg
        self.ip = ip

    def __call__(self, name: str) -> int:
        return self.ip if name == self.ip_reg else self.regs[name]

    __getitem__ = __call__

    def get(self, name: str, default: int | None = None) -> int | None:
        try:
            return self(name)
        except KeyError:
            return default


def _probe_info(probe: sdt.Probe) -> ProbeInfo:
    return ProbeInfo(probe.object, probe.provider, probe.name, probe.address, probe.args)


def _same_file(path: str, file_id: tuple[int, int]) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == file_id


def _file_matches(spec: probespec.ProbeSpec, obj: sdt.ElfObject) -> bool:
    if isinstance(spec, SdtPattern):
        return any(spec.matches(p) for p in obj.probes)
    return os.path.exists(spec.path) and os.path.samefile(spec.path, obj.source or obj.path)


def _event_stem(path: str) -> str:
    """tracefs' default event name stem: the basename up to the first . - or _."""
    base = os.path.basename(path)
    for i, char in enumerate(base):
        if char in ".-_":
            return base[:i]
    return base


def _vma_key(vma: Vma) -> tuple:
    return (vma.start, vma.end, vma.perms, vma.offset, vma.file_id)


def _failed(result: int) -> bool:
    return -4096 < result < 0


def _shell_status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _program_and_libraries(program: str) -> list[str]:
    """The program's path and the shared libraries ``ldd`` says it loads at start."""
    import shutil
    import subprocess

    path = program if "/" in program else (shutil.which(program) or program)
    paths = [path]
    ldd = shutil.which("ldd")
    if ldd is None or not os.path.isfile(path):
        return paths
    try:
        out = subprocess.run([ldd, path], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return paths
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target.startswith("/"):
                paths.append(target)
        elif parts and parts[0].startswith("/"):
            paths.append(parts[0])
    return paths
