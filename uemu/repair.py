"""``uemu repair``: undo from outside what a uemu that died left in a process.

The net inside the process (``net.py``) undoes uemu's writes when a thread meets one of
its breakpoints.  Until one does, or when none ever will (a probe on a path not taken,
a program stopped by SIGSTOP when uemu was killed), the breakpoints, raised counters,
areas and uemu's SIGTRAP action stay.  ``uemu repair PID`` seizes the process with the
session's own attach machinery, undoes all of it, and lets every thread go; ``uemu
repair`` alone lists what the journals say is left behind.

Two records say what is there, and each is trusted for what it alone can know:

- The journal (``journal.py``) lives outside the process: nothing the program does to
  its own memory changes it.  It says where uemu's areas are and what uemu wrote
  (addresses, original and written bytes, counts, the program's SIGTRAP action, what
  runs in each XOL slot).  Without a journal (it could not be kept), a uemu area is
  still found by its name in /proc/PID/maps, and its table serves alone.
- The table inside the area is the only record of what the runtime's handler has
  undone since uemu died (its state, the counts it zeroed), and of how to finish a
  thread's step or injected call (slot, thread and inject records, which change at
  every hit and are not copied to the journal).

So: a byte goes back only where memory still holds exactly what uemu wrote there (the
handler, the program or another tool may have put something else since; kernel:
``verify_opcode()``); a counter is lowered by the smaller of the journal's and the
table's counts (each claims at least what uemu raised and not yet lowered, and the
table's is lowered by the handler), never below 0; the program's action goes back only
while uemu's handler is installed.  A journal whose area is no longer mapped as uemu's
(the process exec'd since) applies to nothing and is removed.  Every undo is written
to the table and the journal as uemu's own leaving does, so a repair cut short is
taken up again by the next one.

Known limits: a thread left by uemu's death inside a system call uemu injected at a
syscall instruction of the vDSO (the few calls that map the area and unmap it) has no
record to be given its registers back from; a thread running the program's own SIGTRAP
handler, chained from the runtime's, returns through the runtime's restorer and must
not lose the area under it: repair cannot tell it from its stack, as uemu's own leaving
cannot.
"""

from __future__ import annotations

import contextlib
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from uemu.arch import Arch, by_name

from . import errors, inject, journal, process, ptrace
from .events import escape
from .journal import Directory, Identity, Journal, State, Unavailable
from .jumpfacts import in_vdso_called_from, stack_called_from, vdso_symbol
from .jumps import RING_PATH
from .maps import Vma, read_maps, vma_at
from .net import AREA_PATH, SIGSET_SIZE, InjectedCall, Net, TableView, read_table
from .runtime import layout, load_blob
from .runtime.layout import InjectState, SlotFlags, TableState, ThreadFlags
from .session import Session
from .stops import StopKind, classify
from .tasks import Task
from .tracer import SEIZE_OPTIONS
from .uprobes import Mm

Warn = Callable[[str], None]

HANDLER_TIME = 2.0
"""Seconds a thread in the runtime's handler is given to return from it, beyond the
handler's own wait, before repair leaves the area in place."""
LOOK_S = 0.01
"""How often a thread run out of uemu's code is looked at between its system calls."""
HIT_FRAME_ROOM = 2048
"""Bytes of a thread's stack looked at for its trampoline's return address: the deepest
the runtime's hit goes below it (uemu_hit's frame and its callees', the vDSO's clock)
is about half of that."""
SIGNAL_FRAME_ROOM = 64 << 10
"""Bytes of a thread's stack looked at for a signal frame that returns into uemu's code:
a program's handler, and what it calls, run below it."""
UC_FLAGS_KNOWN = 0x7
"""The uc_flags a kernel writes in a signal frame's ucontext (x86: UC_FP_XSTATE,
UC_SIGCONTEXT_SS, UC_STRICT_RESTORE_SS; arm64 and riscv64 write 0)."""


@dataclass
class Report:
    """What ``uemu repair PID`` did (``lines``) and what it had to leave (``left``)."""

    lines: list[str] = field(default_factory=list)
    left: str | None = None


@dataclass(frozen=True)
class SlotFix:
    """How to take a thread out of one XOL slot: the journal's plan of what runs there,
    with the runtime's slot record where the step needs more than ip (kernel:
    ``arch_uprobe_abort_xol`` and ``default_post_xol_op``)."""

    slot: int
    site: int
    length: int
    fix_call: bool = False
    scratch: tuple[str, int] | None = None
    """A register the step borrowed, and its value at the site."""

    def way_out(self, ip: int) -> int | None:
        """Where a thread at ``ip`` goes: to the site when it has not run the instruction,
        past it when it has; None when ``ip`` is not in this slot's code."""
        if self.slot <= ip <= self.slot + self.length:
            return self.site + (ip - self.slot)
        return None


# ---- the listing --------------------------------------------------------------------------


def left_behind(warn: Warn) -> list[str]:
    """One line per journal of a living process, saying what is left in it; a journal
    of a process that is gone is removed (and said so)."""
    found = journal.directory(create=False)
    if found is None:
        return ["nothing to repair"]
    lines: list[str] = []
    live = 0
    for name in found.names():
        try:
            identity, state = journal.read(found, name)
        except Unavailable as err:
            warn(err.message)
            continue
        if not identity.alive():
            found.remove(name)
            lines.append(f"process {identity.pid} is gone: its journal {name} is removed")
            continue
        live += 1
        lines.append(_describe(identity, state))
    if not live:
        lines.append("nothing to repair")
    return lines


def _describe(identity: Identity, state: State) -> str:
    pid = identity.pid
    things = []
    if state.area is not None:
        things.append(f"uemu's area at {state.area.base:#x}")
    if state.xol is not None:
        things.append(f"an XOL area at {state.xol[0]:#x}")
    if state.mappings:
        things.append(_count(len(state.mappings), "jump path mapping"))
    if state.sites:
        things.append(_count(len(state.sites), "breakpoint"))
    if state.counters:
        things.append(_count(len(state.counters), "raised semaphore"))
    if state.action is not None:
        things.append("uemu's SIGTRAP action")
    left = ", ".join(things) or "nothing written yet"
    done = _table_state(pid, state)
    if done in (TableState.RESTORED, TableState.DETACHED):
        left = f"{left} (its handler has put the bytes and counts back)"
    tracer = process.status(pid).tracer_pid
    if tracer:
        return f"process {pid} ({_name(pid)}): {left}; traced by {tracer} ({_name(tracer)}), in use"
    return f"process {pid} ({_name(pid)}): {left}; 'uemu repair {pid}' undoes it"


def _name(pid: int) -> str:
    """The process's name, escaped: the program chooses it (prctl PR_SET_NAME)."""
    return escape(process.comm(pid))


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("s" if n != 1 else "")


def _table_state(pid: int, state: State) -> TableState | None:
    """The table's state, read without stopping the process (None when unreadable)."""
    if state.area is None:
        return None
    memory = ptrace.Memory(pid)
    try:
        return TableState(read_table(state.area.base, memory).header.state)
    except (OSError, ValueError, errors.UemuError):
        return None
    finally:
        memory.close()


# ---- repairing one process ------------------------------------------------------------------


def repair(pid: int, warn: Warn) -> Report:
    """Undo everything uemu left in process ``pid``; say what was done, and what had to stay."""
    report = Report()
    found = journal.directory(create=False)
    try:
        identity = Identity.of(pid)
    except errors.NoSuchProcess:
        if _remove_stale(found, pid, None):
            raise errors.NotFound(f"no such process: {pid} (the journal it left is removed)") from None
        raise
    process.check_attachable(pid)  # a uemu still tracing it restores it itself: its journal is not touched
    if _remove_stale(found, pid, identity):
        report.lines.append(f"removed the journal of an earlier process {pid}, gone")
    state = _state_of(found, identity)
    vmas = read_maps(pid)
    if found is not None and state is not None and state.area is not None and not _is_area(vmas, state.area.base):
        report.lines.append(f"process {pid}: uemu's area at {state.area.base:#x} is no longer mapped (the program "
                            "exec'd since): its journal applies to nothing and is removed")
        found.remove(identity.name)
        state = None
    base = state.area.base if state is not None and state.area is not None else _find_area(vmas)
    if base is None:
        report.lines.append(f"nothing to repair in process {pid} ({_name(pid)})")
        return report
    writer = Journal.disabled()
    if found is not None and state is not None:
        writer = Journal.reopen(found, identity, state, warn)
    else:
        report.lines.append(f"process {pid}: no journal; uemu's area at {base:#x} found by its name")
    holder = _Holder()
    with holder:
        holder.hold(pid)
        _Repair(holder, pid, base, state, writer, report).run()
    return report


def _remove_stale(found: Directory | None, pid: int, identity: Identity | None) -> bool:
    """Remove the journals of earlier processes that had this pid (they are gone); whether
    there were any."""
    if found is None:
        return False
    stale = [name for name in found.names() if name.split("-")[0] == str(pid)
             and (identity is None or name != identity.name)]
    for name in stale:
        found.remove(name)
    return bool(stale)


def _state_of(found: Directory | None, identity: Identity) -> State | None:
    """The journal of this very process (one of another boot is removed)."""
    if found is None or not found.exists(identity.name):
        return None
    written_for, state = journal.read(found, identity.name)
    if written_for != identity:
        found.remove(identity.name)
        return None
    return state


def _is_area(vmas: list[Vma], base: int) -> bool:
    """Whether uemu's area is still mapped at ``base``: the memfd named so (or anonymous
    memory, where no memfd could be had) over all of it, executable first."""
    end = base + layout.AREA_SIZE
    covering = sorted((v for v in vmas if v.start < end and v.end > base), key=lambda v: v.start)
    at = base
    for vma in covering:
        if vma.start != at or vma.path not in (AREA_PATH, "") or (vma.file_backed and vma.path != AREA_PATH):
            return False
        at = vma.end
    return at >= end and covering[0].executable


def _find_area(vmas: list[Vma]) -> int | None:
    return next((v.start for v in vmas if v.path == AREA_PATH and v.offset == 0 and v.executable
                 and _is_area(vmas, v.start)), None)


class _Holder(Session):
    """A session that arms nothing: every thread of one process seized and parked by the
    session's own attach machinery, system calls injected into one of them, and the
    session's own way out (each thread detached with the signals it is owed)."""

    def hold(self, pid: int) -> None:
        process.check_attachable(pid)
        self.own_signals.install()
        self.tracer.stopping = True
        try:
            self.tracer.seize_all(pid, SEIZE_OPTIONS)
        except BaseException:
            self.close()
            raise

    @property
    def threads(self) -> list[Task]:
        return list(self.tracees.tasks.values())

    def caller(self, mm: Mm) -> tuple[Task, InjectedCall]:
        """A parked thread and its system calls, made at a syscall instruction of the vDSO
        (the area goes: its stub is not used)."""
        task = self.tracer.injectable(mm)
        return task, inject.caller(task, mm, through_net=False)


class _Repair:
    """One repair, every thread of the process parked."""

    def __init__(self, holder: _Holder, pid: int, base: int, state: State | None, writer: Journal,
                 report: Report):
        self.holder = holder
        self.pid = pid
        self.base = base
        self.journaled = state is not None
        state = state or State()
        self.state = state
        self.writer = writer
        self.report = report
        arch = by_name(state.area.arch) if state.area is not None else process.executable_arch(pid)
        self.arch: Arch = arch
        self.mm = Mm(pid, arch, ptrace.Memory(pid), read_maps(pid))
        for task in holder.threads:
            task.mm = self.mm
        self.view = _view(base, self.mm.memory)
        self.net: Net | None = None
        if self.view is not None:
            self.net = Net.adopt(arch, base, self.mm.memory)
            self.net.journal = writer
        self.blob = load_blob(arch.name)
        self.backend = self.mm.backend
        self.stayed: list[int] = []
        """Threads run out of uemu's code that did not come out (``_wait_for_the_runtime``)."""
        self.code = _JumpCode(self.mm, base, tuple(
            (start, start + size) for start, size in state.mappings.items()
            if any(v.executable and v.start < start + size and v.end > start for v in self.mm.vmas)))
        self.done: list[str] = []
        if self.view is not None and self.view.header.state in (TableState.RESTORED, TableState.DETACHED):
            self.done.append("its handler had put the bytes and counts back")

    def run(self) -> None:
        try:
            self._wait_for_the_runtime()
            self._take_back_traps()
            self._threads_out()
            self._restore_sites()
            self._lower_counters()
            if self.net is not None:
                self.net.set_state(TableState.DETACHED)
            self._action_back()
            self._unmap()
        finally:
            self.mm.memory.close()
        pid = self.pid
        self.report.lines.append(f"process {pid} ({_name(pid)}): " + ("; ".join(self.done) or "nothing left"))

    # ---- the threads ---------------------------------------------------------------------

    def _in_stub(self, ip: int) -> bool:
        """At the inject stub's syscall instruction or its trap (before or after it ran)."""
        syscall = self.base + self.blob.inject_syscall
        trap = syscall + len(self.arch.syscall_insn)
        return ip in (syscall, trap) or self.backend.trap_address(ip) == trap

    def _ips(self) -> dict[int, int]:
        ips = {}
        for task in self.holder.threads:
            regs = task.registers(self.arch)
            regs.fetch(task.tid)
            ips[task.tid] = regs[self.arch.ip_reg]
        return ips

    def _wait_for_the_runtime(self) -> None:
        """A thread in the runtime's handler (uemu died under it, or it waits before it
        puts the program's action back) or in a jump path's hit (a trampoline, the
        runtime, the vDSO's clock called from there) runs alone until it has returned
        from it; the holder of the table's lock first, as the others wait for it.  One
        that does not return in time keeps the area in place (``_unmap``)."""
        lock = self.view.header.lock if self.view is not None else 0
        delay = self.view.header.restore_delay_ms / 1000 if self.view is not None else 0
        restorer = self._handler_return()
        inside: dict[Task, int | None] = {}
        for task in self.holder.threads:
            regs = task.registers(self.arch)
            regs.fetch(task.tid)
            if self.code.inside(regs) and not self._in_stub(regs[self.arch.ip_reg]):  # _give_back_injected's
                inside[task] = None
            elif (frame := self.code.signal_frame(regs[self.arch.sp_reg])) is not None:
                inside[task] = frame
        for task in sorted(inside, key=lambda t: t.tid != lock):
            if not _run_out(task, self.code, restorer, delay + HANDLER_TIME, inside[task]):
                self.stayed.append(task.tid)
        if len(inside) > len(self.stayed):
            self.done.append(f"{_count(len(inside) - len(self.stayed), 'thread')} run out of uemu's code")

    def _handler_return(self) -> int | None:
        """Where the runtime's handler returns to: its restorer, or the vDSO's where the
        kernel takes none (riscv)."""
        sigaction = self.arch.sigaction
        if self.net is None or sigaction is None:
            return None
        if sigaction.restorer is not None:
            return self.net.restorer
        return vdso_symbol(self.mm.memory, self.mm.vmas, (sigaction.vdso_restorer,)) or None

    def _take_back_traps(self) -> None:
        """A thread that met a breakpoint or a slot's trap of ours just before it was
        seized has that SIGTRAP still to come: taken here, with ip put back at the trap
        (the site runs its own instruction once restored); a SIGTRAP that is not ours is
        kept for the program."""
        traps = set(self._sites()) | {fix.slot + fix.length for fix in self._slot_fixes()}
        for task in self.holder.threads:
            if task.owed_signal == signal.SIGTRAP:
                task.owed_signal = 0
            elif not process.sigtrap_pending(task.tid) or not _to_sigtrap_stop(task):
                continue
            info = ptrace.signal_info_bytes(task.tid)
            regs = task.registers(self.arch)
            regs.fetch(task.tid)
            at = self.backend.trap_address(regs[self.arch.ip_reg])
            if ptrace.signal_code(info) > 0 and at in traps:
                regs[self.arch.ip_reg] = at
                regs.store(task.tid)
            else:
                task.hold(signal.SIGTRAP, info)

    def _slot_fixes(self) -> list[SlotFix]:
        records = {s.slot: s for _, s in self.view.slots} if self.view is not None else {}
        offsets = {offset: name for name, offset in self.arch.ucontext_regs.items()}
        plans = self.state.slots or {slot: journal.SlotPlan(r.site, r.insn_len, "step") for slot, r in records.items()}
        fixes = []
        for slot, plan in plans.items():
            record = records.get(slot)
            if plan.ends == "jump" or record is None or (record.site, record.insn_len) != (plan.site, plan.length):
                fixes.append(SlotFix(slot, plan.site, plan.length))
                continue
            scratch = None
            if record.flags & SlotFlags.SCRATCH and record.scratch_off in offsets:
                scratch = (offsets[record.scratch_off], record.scratch_value)
            fixes.append(SlotFix(slot, plan.site, plan.length, bool(record.flags & SlotFlags.FIX_CALL), scratch))
        return fixes

    def _threads_out(self) -> None:
        """Threads inside an XOL slot or the inject stub go where their step or call would
        have left them.  One that no record tells how to move stays, and so does the area
        it is in (``_unmap``)."""
        fixes = self._slot_fixes()
        xol_area = self.state.xol
        inside_sites = self._inside_sites()
        for task in self.holder.threads:
            regs = task.registers(self.arch)
            regs.fetch(task.tid)
            ip = regs[self.arch.ip_reg]
            changes: dict[str, int] = {}
            if xol_area is not None and xol_area[0] <= ip < xol_area[0] + xol_area[1]:
                for fix in fixes:
                    out = fix.way_out(ip)
                    if out is not None:
                        changes[self.arch.ip_reg] = out
                        if fix.scratch is not None:
                            changes[fix.scratch[0]] = fix.scratch[1]
                        break
            elif self._in_stub(ip):
                self._give_back_injected(task.tid, changes)
            elif ip in inside_sites:
                changes[self.arch.ip_reg] = inside_sites[ip]
            else:
                self._fix_return_address(task.tid, regs[self.arch.sp_reg], fixes)
            if regs.update(changes):
                regs.store(task.tid)

    def _inside_sites(self) -> dict[int, int]:
        """Addresses inside an instruction that uemu's trap covers (x86 writes a second
        int3 one byte into one of two bytes or more) -> its site.  The kernel drops the
        SIGTRAP of a thread stopped at uemu's int3 when uemu dies and leaves it there,
        one byte in: once the bytes are back, it must start the instruction again."""
        return {addr + offset: addr for addr, (_, trap) in self._sites().items() for offset in range(1, len(trap))}

    def _give_back_injected(self, tid: int, changes: dict[str, int]) -> None:
        """A thread uemu left in a call it injected through the runtime's stub: the
        registers the inject record holds (the runtime's R5)."""
        view = self.view
        if self.net is None or view is None or view.inject.state != InjectState.ACTIVE or view.inject.tid != tid:
            return
        names = {offset: name for name, offset in self.arch.ucontext_regs.items()}
        changes.update({names[r.offset]: r.value for r in view.inject_regs if r.offset in names})
        self.net.end_inject()

    def _fix_return_address(self, tid: int, sp: int, fixes: list[SlotFix]) -> None:
        """A thread that stepped a call out of line and was not finished: its return
        address points into the slot (the runtime's R4; kernel: UPROBE_FIX_CALL)."""
        view = self.view
        if view is None:
            return
        record = next((t for _, t in view.threads if t.tid == tid and t.flags & ThreadFlags.STEP), None)
        step = next((s for i, s in view.slots if record is not None and i == record.step_slot), None)
        fix = next((f for f in fixes if step is not None and f.slot == step.slot and f.fix_call), None)
        if fix is None:
            return
        word = self.arch.word_size
        order = self.arch.byte_order
        try:
            if int.from_bytes(self.mm.memory.read(sp, word), order) == fix.slot + fix.length:
                self.mm.memory.write(sp, (fix.site + fix.length).to_bytes(word, order))
        except OSError:
            pass

    # ---- the bytes ----------------------------------------------------------------------------

    def _sites(self) -> dict[int, tuple[bytes, bytes]]:
        """Breakpoint address -> (original, written bytes): the table's entries, and the
        journal's over them (the same bytes, unless the program wrote into its table)."""
        sites = {s.addr: (bytes(s.orig[:s.len]), bytes(s.trap[:s.len])) for _, s in self.view.sites} \
            if self.view is not None else {}
        sites.update(self.state.sites)
        return sites

    def _restore_sites(self) -> None:
        """One-byte writes first, as the runtime's restore_all: a pun's displacement may be
        the start of the jump over its evicted successor."""
        restored = 0
        for addr, (orig, trap) in sorted(self._sites().items(), key=lambda site: len(site[1][1]) != 1):
            try:
                if self.mm.memory.read(addr, len(trap)) == trap:
                    self.mm.memory.write(addr, orig)
                    restored += 1
            except OSError:
                pass  # its page is gone: nothing of ours there any more
            if self.net is not None:
                self.net.remove_site(addr)
            else:
                self.writer.note_site_gone(addr)
        if restored:
            self.done.append(f"{_count(restored, 'breakpoint')} restored")

    def _lower_counters(self) -> None:
        table = {c.addr: c.raised for _, c in self.view.counters} if self.view is not None else None
        journaled = self.state.counters if self.journaled else None
        lowered = 0
        for addr in set(table or ()) | set(journaled or ()):
            counts = [source.get(addr, 0) for source in (table, journaled) if source is not None]
            if self._lower(addr, min(counts)):
                lowered += 1
            if self.net is not None:
                self.net.forget_counter(addr)
            else:
                self.writer.note_counter(addr, 0)
        if lowered:
            self.done.append(f"{_count(lowered, 'semaphore')} lowered")

    def _lower(self, addr: int, times: int) -> bool:
        """Kernel: ``__update_ref_ctr()``, which never takes a counter below 0."""
        form = "<h" if self.arch.byte_order == "little" else ">h"
        try:
            (value,) = struct.unpack(form, self.mm.memory.read(addr, 2))
        except OSError:
            return False
        lowered = value - min(times, max(value, 0))
        if lowered == value:
            return False
        self.mm.memory.write(addr, struct.pack(form, lowered))
        return True

    def _action_back(self) -> None:
        """The program's SIGTRAP action back, if uemu's handler is still installed (the
        handler may have put it back, and the program changed it since)."""
        sigaction = self.arch.sigaction
        saved = self.state.action if self.state.action is not None else (
            self.view.header.saved_action if self.view is not None else None)
        if sigaction is None or saved is None:
            return
        task, call = self.holder.caller(self.mm)
        regs = task.registers(self.arch)
        regs.fetch(task.tid)
        scratch = (regs[self.arch.sp_reg] - 512 - layout.ACTION_SIZE) & ~15  # below any red zone
        if call("rt_sigaction", signal.SIGTRAP, 0, scratch, SIGSET_SIZE) < 0:
            return
        current = self.mm.memory.read(scratch, sigaction.size)
        handler = int.from_bytes(current[sigaction.handler:sigaction.handler + sigaction.word], self.arch.byte_order)
        if handler != self.base + self.blob.trap_handler:
            return
        self.mm.memory.write(scratch, saved[:sigaction.size])
        if call("rt_sigaction", signal.SIGTRAP, scratch, 0, SIGSET_SIZE) == 0:
            self.done.append("the program's SIGTRAP action put back")

    def _unmap(self) -> None:
        """The XOL area, then the jump path's mappings and uemu's area, unless a thread is
        still inside; the journal goes with the last."""
        vmas = read_maps(self.pid)
        ips = self._ips()
        xol_area = self.state.xol
        if xol_area is not None:
            start, size = xol_area
            inside = [tid for tid, ip in ips.items() if start <= ip < start + size]
            if inside:
                self.report.left = (f"process {self.pid}: the XOL area at {start:#x} is left: thread {inside[0]} is "
                                    f"in it; 'uemu repair {self.pid}' again later")
                return
            if _is_anonymous_code(vmas, start, size):
                _, call = self.holder.caller(self.mm)
                if call("munmap", start, size) == 0:
                    self.done.append(f"XOL area at {start:#x} unmapped")
            self.writer.note_xol_area_gone()
        inside = [tid for tid, ip in ips.items() if self.base <= ip < self.base + layout.AREA_SIZE] + self.stayed
        # a thread left in a hit may go on to the ring (the runtime loaded its address
        # before a signal's handler ran on top of it): the jump path's mappings stay too
        if not inside and not self._unmap_jump_mappings(vmas, ips):
            return
        if inside:
            tid = inside[0]
            where = f"at +{ips[tid] - self.base:#x}" if tid not in self.stayed else "on its way out of it"
            self.report.left = (f"process {self.pid}: uemu's area at {self.base:#x} is left: thread {tid} is in "
                                f"it ({where}); 'uemu repair {self.pid}' again once it has run")
            return
        _, call = self.holder.caller(self.mm)
        if call("munmap", self.base, layout.AREA_SIZE) == 0:
            self.done.append(f"uemu's area at {self.base:#x} unmapped")
            self.writer.remove()


    def _unmap_jump_mappings(self, vmas: list[Vma], ips: dict[int, int]) -> bool:
        """The jump path's landing pages and event ring (the sites that lead there are
        restored already); False: a thread is in one, which stays with the area."""
        unmapped = 0
        for start, size in sorted(self.state.mappings.items()):
            inside = [tid for tid, ip in ips.items() if start <= ip < start + size]
            if inside:
                self.report.left = (f"process {self.pid}: the jump path's page at {start:#x} is left: thread "
                                    f"{inside[0]} is in it; 'uemu repair {self.pid}' again later")
                return False
            if _is_jump_mapping(vmas, start, size):
                _, call = self.holder.caller(self.mm)
                unmapped += call("munmap", start, size) == 0
            self.writer.note_mapping_gone(start)
        if unmapped:
            self.done.append(f"{_count(unmapped, 'jump path mapping')} unmapped")
        return True


def _is_jump_mapping(vmas: list[Vma], start: int, size: int) -> bool:
    """Whether [start, start + size) is still what the jump path mapped: anonymous (a
    landing page) or its ring's memfd."""
    covering = [v for v in vmas if v.start < start + size and v.end > start]
    return bool(covering) and all(v.path.startswith(RING_PATH) or not (v.file_backed or v.path) for v in covering) \
        and min(v.start for v in covering) == start and max(v.end for v in covering) == start + size


def _view(base: int, memory: ptrace.Memory) -> TableView | None:
    try:
        return read_table(base, memory)
    except (OSError, ValueError, errors.UemuError):
        return None  # cut short before its header was written: no handler was installed


def _is_anonymous_code(vmas: list[Vma], start: int, size: int) -> bool:
    """Whether [start, start + size) is still the XOL area uemu made: anonymous, executable."""
    covering = [v for v in vmas if v.start < start + size and v.end > start]
    return bool(covering) and all(not v.file_backed and not v.path and v.executable for v in covering) and \
        min(v.start for v in covering) == start and max(v.end for v in covering) == start + size


@dataclass(frozen=True)
class _JumpCode:
    """Where uemu's code is in the process, to tell a thread still inside it from one back
    in the program: uemu's area, whose trampolines (and the landing pages') make a hit's
    frame, and the vDSO's clock a hit calls from there."""

    mm: Mm
    base: int
    pages: tuple[tuple[int, int], ...]
    """[start, end) of each landing page (anonymous code of the jump path's)."""

    @property
    def code(self) -> list[tuple[int, int]]:
        return [(self.base, self.base + layout.CODE_SIZE), *self.pages]

    @property
    def trampolines(self) -> list[tuple[int, int]]:
        return [(self.base + layout.TRAMP_OFF, self.base + layout.CODE_SIZE), *self.pages]

    def holds(self, ip: int) -> bool:
        return any(start <= ip < end for start, end in self.code)

    def inside(self, regs: ptrace.Regset) -> bool:
        """In uemu's code, or in the vDSO called from there (the runtime's clock)."""
        return self.holds(regs[self.mm.arch.ip_reg]) or in_vdso_called_from(self.mm, regs, self.code)

    def in_hit(self, sp: int, restorer: int | None) -> bool:
        """Whether the thread whose stack starts at ``sp`` is in a jump path's hit (its
        trampoline's return address comes first up its stack), not in the runtime's
        signal handler (the handler's return address, ``restorer``, comes first, or
        neither)."""
        arch = self.mm.arch
        try:
            stack = self.mm.memory.read(sp, HIT_FRAME_ROOM)
        except OSError:
            return False
        for at in range(0, len(stack) - arch.word_size + 1, arch.word_size):
            word = int.from_bytes(stack[at:at + arch.word_size], arch.byte_order)
            if word == restorer:
                return False
            if any(start <= word < end for start, end in self.trampolines):
                return True
        return False

    def signal_frame(self, sp: int) -> int | None:
        """Where, up the stack from ``sp`` (a thread outside uemu's code), a signal frame
        saved an ip in uemu's code or in the vDSO called from there: the address of that
        saved ip, or None.  A program's handler entered inside a hit runs in the program,
        and its frame returns into the hit (uemu's own leaving learns of it as the signal
        is delivered: ``JumpPath.signal_delivered``; repair, after uemu's death, only from
        the frame).  A frame is told by its ucontext around that word: uc_flags among
        those the kernel writes, no uc_link, and a saved stack pointer in a writable
        mapping (a stale word of an old hit has none of these beside it).  Every thread
        of the process is looked at (a JVM parks hundreds): the words are read as one
        array and tested by page first."""
        arch, vmas = self.mm.arch, self.mm.vmas
        offsets, width = arch.ucontext_regs, arch.word_size
        stack_vma = vma_at(vmas, sp)
        if arch.ip_reg not in offsets or arch.sp_reg not in offsets or stack_vma is None:
            return None
        ip_at = offsets[arch.ip_reg]
        low = max(stack_vma.start, sp - sp % width - ip_at)  # a ucontext whose ip is at sp starts here
        try:
            stack = self.mm.memory.read(low, min(stack_vma.end, sp + SIGNAL_FRAME_ROOM) - low)
        except OSError:
            return None
        first = (sp - sp % width - low) // width
        words = memoryview(stack)[:len(stack) - len(stack) % width].cast("Q" if width == 8 else "I").tolist()
        pages = self._places

        def word(address: int) -> int | None:
            at, rest = divmod(address - low, width)
            return words[at] if not rest and 0 <= at < len(words) else None

        for at in (i for i in range(first, len(words)) if words[i] // layout.PAGE in pages):
            saved_ip, uc = words[at], low + at * width - ip_at
            saved = {name: word(uc + offset) for name, offset in offsets.items()}
            flags, link, saved_sp = word(uc), word(uc + width), saved[arch.sp_reg]
            if flags is None or flags & ~UC_FLAGS_KNOWN or link != 0 or saved_sp is None:
                continue
            sp_vma = vma_at(vmas, saved_sp)
            if sp_vma is not None and sp_vma.writable and (self.holds(saved_ip) or self._vdso_called_from(saved)):
                return low + at * width
        return None

    @cached_property
    def _places(self) -> frozenset[int]:
        """The pages a saved ip of a frame into a hit is in: uemu's code and the vDSO (all
        of them whole pages).  Native words: uemu runs where the program does."""
        vdso = [(v.start, v.end) for v in self.mm.vmas if v.path == "[vdso]"]
        return frozenset(page for start, end in self.code + vdso
                         for page in range(start // layout.PAGE, -(-end // layout.PAGE)))

    def _vdso_called_from(self, saved: dict[str, int | None]) -> bool:
        """The vDSO's clock, called from uemu's code, as a signal frame saved it (in no
        system call: the frame has no orig_ax, and the clock makes none)."""
        arch = self.mm.arch
        regs = {name: value for name, value in saved.items() if value is not None}
        if arch.syscall_orig_reg:
            regs[arch.syscall_orig_reg] = (1 << 8 * arch.regset_word) - 1
        return stack_called_from(self.mm, regs, self.code)


def _run_out(task: Task, code: _JumpCode, restorer: int | None, seconds: float, frame: int | None = None) -> bool:
    """Resume one thread alone, from system call to system call, until it is out of
    uemu's code, back where the program runs.  The others stay parked, a stopped program
    stopped.

    In the runtime's signal handler, the way out is the rt_sigreturn that takes it out
    of the handler's frame: back where the trap was, no instruction of the program run
    (unless the handler chains to the program's own, which the thread was about to run).
    That frame is left when ip is outside the area and sp above where the thread stood
    in the handler (the program's handler, chained, runs below).  On a signal stack of
    the program's the frame may sit below the interrupted stack: then the thread is
    stopped at its time limit, inside, and the area stays.

    In a jump path's hit (no signal frame: ``_JumpCode.in_hit``), or in a trampoline
    (straight code that only the program jumps to: an evicted successor's has no hit,
    and a trampoline's jump back leaves sp as it was), the way out is its trampoline's
    jump back: the thread is out once it is neither in uemu's code nor in the vDSO's
    clock called from there, at its next system call or at the next look (every
    ``LOOK_S``: a program that makes none is interrupted to be looked at).

    In a program's handler entered inside a hit (``frame``: where its signal frame saved
    the ip in uemu's code, ``_JumpCode.signal_frame``), the thread first returns into the
    hit (sp above the frame: the handler returned, or jumped out past it), then runs out
    of the hit as above.  On a signal stack above the thread's own the frame looks never
    left: the thread stays at its time limit, and the area with it.
    False: still inside at its time limit."""
    arch = code.mm.arch
    regs = task.registers(arch)
    regs.fetch(task.tid)
    floor = regs[arch.sp_reg]
    ip = regs[arch.ip_reg]
    in_hit = frame is not None or any(start <= ip < end for start, end in code.trampolines) \
        or code.in_hit(floor, restorer)
    _hold_owed(task)
    deadline = time.monotonic() + seconds
    expired = False

    def out() -> bool:
        regs.fetch(task.tid)
        if frame is not None and regs[arch.sp_reg] <= frame:
            return False  # still in the handler, under its frame
        if in_hit:
            return not code.inside(regs)
        return not code.holds(regs[arch.ip_reg]) and regs[arch.sp_reg] > floor

    def look(signum: int, frame: object) -> None:
        nonlocal expired
        expired = time.monotonic() >= deadline
        with contextlib.suppress(errors.TraceeGone):  # it ended meanwhile: its exit comes next
            ptrace.interrupt(task.tid)

    old = signal.signal(signal.SIGALRM, look)
    signal.setitimer(signal.ITIMER_REAL, LOOK_S, LOOK_S)
    try:
        ptrace.syscall(task.tid)
        while True:
            stop = classify(task.tid, ptrace.wait_for(task.tid))
            task.stop_kind = stop.kind
            if stop.kind is StopKind.EXITED:
                return True
            if stop.kind is StopKind.INTERRUPT and out():
                return True
            if stop.kind is StopKind.INTERRUPT and expired:
                return False
            if stop.kind is StopKind.SYSCALL and ptrace.syscall_info(task.tid).op != ptrace.SYSCALL_INFO_ENTRY \
                    and out():
                return True
            if stop.kind is StopKind.SIGNAL:
                task.hold(stop.sig, ptrace.signal_info_bytes(task.tid))
            if expired:
                # A syscall stop took the interrupt (kernel: ptrace_stop(), "any trap clears
                # pending STOP trap"): asked again, and no syscall stop to take it this time.
                ptrace.interrupt(task.tid)
                ptrace.cont(task.tid)
            else:
                ptrace.syscall(task.tid)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _hold_owed(task: Task) -> None:
    """The signal a parked thread was stopped with, kept for the program before it is
    resumed without it."""
    if task.owed_signal and task.stop_kind is StopKind.SIGNAL:
        task.hold(task.owed_signal, ptrace.signal_info_bytes(task.tid))
        task.owed_signal = 0


def _to_sigtrap_stop(task: Task) -> bool:
    """Run a parked thread to the signal-delivery stop of its pending SIGTRAP (other
    signals, the one it is parked with included, are held for the program); False if it
    exits."""
    _hold_owed(task)
    ptrace.cont(task.tid)
    while True:
        stop = classify(task.tid, ptrace.wait_for(task.tid))
        if stop.kind is StopKind.EXITED:
            return False
        if stop.kind is StopKind.SIGNAL and stop.sig == signal.SIGTRAP:
            task.stop_kind = StopKind.SIGNAL
            return True
        if stop.kind is StopKind.SIGNAL:
            task.hold(stop.sig, ptrace.signal_info_bytes(task.tid))
        ptrace.cont(task.tid)

