"""A test's own tracer over the jump path's components, without the session: it seizes a
running sample (stopped at a sync point), installs the net, sets the jump path up, arms
the selected SDT sites as uemu's core would (the semaphore raised first, the net told),
then forwards the program's stops while the ring's events come in, and leaves.

It handles what the samples used here do: threads (their first stop names their thread
pointer), signals (forwarded as they are), the int3 a 5-byte jump is written behind;
no fork, no exec, no new mappings.
"""

from __future__ import annotations

import fnmatch
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tracee import Tracee, wait_until

from uemu import inject, ptrace
from uemu.arch import by_name
from uemu.events import Event
from uemu.jumpfacts import thread_pointer
from uemu.jumpplan import Trap
from uemu.jumps import Jump, JumpPath
from uemu.maps import read_maps
from uemu.net import Net, map_area
from uemu.objects import MappedObject, mapped_objects
from uemu.ringfeed import RingEvent
from uemu.stops import StopKind, classify
from uemu.uprobes import Mm, ProbeInfo, Uprobe, Uprobes

OPTIONS = ptrace.O_TRACESYSGOOD | ptrace.O_TRACECLONE


@dataclass
class Armed:
    uprobe: Uprobe
    vaddr: int
    how: Jump | Trap


@dataclass
class JumpTrace:
    pid: int
    patterns: Sequence[str] = ("*",)
    options: dict[str, object] = field(default_factory=dict)
    raw: Sequence[int] = ()
    """File offsets in the program itself for raw uprobes (their events' names: the
    offset in hex, as tracefs names raw probes)."""
    require_jumps: bool = False
    """Every selected site must take a jump (else the test says which and why); by default
    sites the process refuses (a pun target inside a mapping) are left alone (no trap
    path here) and ``jumped_names`` says which probes are wholly jumped."""

    def __post_init__(self) -> None:
        self.events: list[Event] = []
        self.counts: dict[str, int] = {}
        self.warnings: list[str] = []
        self.tids: set[int] = set()
        self.sites: list[Armed] = []
        self.owed: dict[int, int] = {}
        self._seize()
        vmas = read_maps(self.pid)
        memory = ptrace.Memory(self.pid)
        objects, _ = mapped_objects(self.pid, vmas)
        arch = by_name(next(o.elf.arch_name for o in objects if o.elf.path == os.readlink(f"/proc/{self.pid}/exe")))
        self.arch = arch
        self.regs = ptrace.Regset(arch.regset, arch.regset_word)
        self.regs.fetch(self.pid)
        self.mm = Mm(self.pid, arch, memory, vmas, {o.file_id: o for o in objects})
        self.uprobes = Uprobes(self.warnings.append)
        self.path = JumpPath(self.uprobes, warn=self.warnings.append, **self.options)  # type: ignore[arg-type]
        at = inject.find_syscall_insn(arch, vmas, memory)

        def hold(sig: int, info: bytes) -> None:
            self.owed[self.pid] = sig

        def call(name: str, *args: int) -> int:
            return inject.inject_syscall(self.pid, self.regs, arch, at, arch.syscall_numbers[name], args, hold)

        self.call = call
        self.net = Net(arch, map_area(arch, call).start, memory)
        self.net.install(call, tracer_pid=os.getpid())
        self.path.setup(self.mm, self.net, call)
        for tid in self.tids:
            self._thread_started(tid)
        self._select(objects)
        for armed in self.sites:
            self._arm(armed)
        if self.require_jumps:
            assert not self.refused, f"sites that keep the trap: {self.refused}"
        for tid in self.tids:
            ptrace.cont(tid, self.owed.pop(tid, 0))

    @property
    def jumped_names(self) -> set[str]:
        """Probes every selected site of which took a jump."""
        names: dict[str, bool] = {}
        for armed in self.sites:
            name = armed.uprobe.consumers[0].probe.full_name
            names[name] = names.get(name, True) and isinstance(armed.how, Jump)
        return {name for name, jumped in names.items() if jumped}

    @property
    def refused(self) -> list[str]:
        return [f"{a.vaddr:#x} {a.uprobe.consumers[0].probe.full_name}: {a.how.why}"
                for a in self.sites if isinstance(a.how, Trap)]

    # ---- attaching and arming ---------------------------------------------------------

    def _seize(self) -> None:
        for name in os.listdir(f"/proc/{self.pid}/task"):
            tid = int(name)
            ptrace.seize(tid, OPTIONS)
            ptrace.interrupt(tid)
            self.tids.add(tid)
        for tid in self.tids:
            self._stop(tid)

    def _stop(self, tid: int) -> None:
        """Wait for the interrupt stop of ``tid``, keeping a signal that came first."""
        self._stop_or_exit(tid)

    def _thread_started(self, tid: int) -> None:
        regs = ptrace.Regset(self.arch.regset, self.arch.regset_word)
        regs.fetch(tid)
        self.path.thread_started(self.mm, tid, thread_pointer(self.arch, tid, regs))

    def _select(self, objects: Sequence[MappedObject]) -> None:
        exe = os.readlink(f"/proc/{self.pid}/exe")
        program = next(o for o in objects if o.elf.path == exe)
        for offset in self.raw:
            vaddr = program.runtime_address(offset)
            info = ProbeInfo(program.elf.path, "raw", f"{offset:x}", program.elf.vaddr(offset), "")
            uprobe = self.uprobes.register(program, offset, 0, info, f"{exe}:{offset:#x}")
            if vaddr is not None:
                self.sites.append(Armed(uprobe, vaddr, Trap("not planned")))
        for mapped in objects:
            for probe in mapped.elf.probes:
                if probe.file_offset is None or not any(fnmatch.fnmatch(probe.full_name, p) for p in self.patterns):
                    continue
                info = ProbeInfo(mapped.elf.path, probe.provider, probe.name, probe.address, probe.args)
                uprobe = self.uprobes.register(mapped, probe.file_offset, probe.semaphore_offset or 0, info,
                                               probe.full_name)
                vaddr = mapped.runtime_address(probe.file_offset)
                if vaddr is not None:
                    self.sites.append(Armed(uprobe, vaddr, Trap("not planned")))

    def _arm(self, armed: Armed) -> None:
        armed.how = self.path.plan(self.mm, armed.uprobe, armed.vaddr)
        if not isinstance(armed.how, Jump):
            return
        self._raise(armed.uprobe, +1)
        refused = self.path.arm(self.mm, armed.how, self.call)
        if refused is not None:
            self._raise(armed.uprobe, -1)
            armed.how = refused

    def _raise(self, uprobe: Uprobe, delta: int) -> None:
        """The core's counter, the net told first (as uemu's core will do it)."""
        if not uprobe.ref_ctr_offset:
            return
        obj = next(o for o in self.mm.objects.values() if o.file_id == uprobe.file_id)
        address = obj.runtime_semaphore(uprobe.ref_ctr_offset)
        if delta > 0:
            self.net.raise_counter(address)
        self.uprobes.update_ref_ctr(self.mm, uprobe, delta)
        if delta < 0:
            self.net.lower_counter(address)

    # ---- running ------------------------------------------------------------------------

    def emit(self, ring_events: list[RingEvent]) -> None:
        for _, consumer, event in ring_events:
            self.counts[consumer.probe.full_name] = self.counts.get(consumer.probe.full_name, 0) + 1
            if isinstance(event, Event):
                self.events.append(event)

    def drain(self) -> None:
        self.path.drain(self.emit)

    def pump(self, until: Callable[[], object], timeout: float = 30.0) -> None:
        """Forward the program's stops and read the ring until ``until()``."""
        def step() -> object:
            while True:
                try:
                    tid, status = os.waitpid(-1, ptrace.WALL | os.WNOHANG)
                except ChildProcessError:
                    break
                if tid == 0:
                    break
                self._handle(classify(tid, status))
            self.drain()
            return until()

        wait_until(step, timeout=timeout, what="the traced program")

    def _handle(self, stop) -> None:
        tid = stop.tid
        if stop.kind is StopKind.EXITED:
            self.tids.discard(tid)
            self.path.thread_exited(self.mm, tid)
            return
        if stop.kind is StopKind.CLONE:
            ptrace.cont(tid)
            return
        if tid not in self.tids:  # a new thread's first stop
            self.tids.add(tid)
            self._thread_started(tid)
            ptrace.cont(tid)
            return
        if stop.kind is StopKind.SIGNAL and stop.sig == signal.SIGTRAP:
            regs = ptrace.Regset(self.arch.regset, self.arch.regset_word)
            regs.fetch(tid)
            site = self.mm.backend.trap_address(regs[self.arch.ip_reg])
            resume = self.path.trap_at(self.mm, site)
            if resume is not None:
                regs[self.arch.ip_reg] = resume
                regs.store(tid)
                ptrace.cont(tid)
                return
        if stop.kind is StopKind.GROUP:
            ptrace.listen(tid)
            return
        ptrace.cont(tid, stop.sig if stop.kind is StopKind.SIGNAL else 0)

    # ---- leaving ------------------------------------------------------------------------

    def detach(self) -> None:
        """Stop every thread, recording off, every jump and counter undone, detach."""
        live = set(self.tids)
        for tid in live:
            try:
                ptrace.interrupt(tid)
            except OSError:
                self.tids.discard(tid)
        for tid in list(self.tids):
            self._stop_or_exit(tid)
        if not self.tids:
            self.drain()
            return
        self.path.leave(self.mm)
        for armed in self.sites:
            if isinstance(armed.how, Jump) and self.path.is_jumped(self.mm, armed.vaddr):
                self.path.disarm(self.mm, armed.vaddr)
                self._raise(armed.uprobe, -1)
        for tid in self.tids:
            ptrace.detach(tid, self.owed.pop(tid, 0))
        self.path.drain(self.emit, final=True)
        self.tids.clear()

    def _stop_or_exit(self, tid: int) -> None:
        while True:
            stop = classify(tid, ptrace.wait_for(tid))
            if stop.kind is StopKind.EXITED:
                self.tids.discard(tid)
                return
            if stop.kind is StopKind.SIGNAL:
                self.owed[tid] = stop.sig
                ptrace.interrupt(tid)
                ptrace.cont(tid)
                continue
            return

    def close(self) -> None:
        self.path.close()


@contextmanager
def started_sample(program: Path) -> Iterator[Tracee]:
    """``program 2`` stopped at its "start" sync; after the block, its two passes let go
    and its exit status checked (0)."""
    tracee = Tracee([program, "2"])
    try:
        tracee.wait_sync("start")
        yield tracee
        tracee.release()
        tracee.release()
        assert tracee.finish() == 0
    finally:
        tracee.close()


@contextmanager
def jump_traced(pid: int) -> Iterator[JumpTrace]:
    """Every SDT site of ``pid`` armed on the jump path for the block, left after it."""
    trace = JumpTrace(pid, ("*",), {})
    try:
        yield trace
    finally:
        trace.detach()
        trace.close()
