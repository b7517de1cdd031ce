"""The jump path (issue 12): hits that run through a trampoline in the target, no stop.

Where a jump fits (arch/jump.py decides from the instruction, uemu/jumpplan.py from the
sites around it and the process's mappings, this module from what else only the process
can tell, which uemu/jumpfacts.py reads), the site gets a jump to a
trampoline instead of the trap path's breakpoint.  The trampoline calls the in-target
runtime's ``hit_entry``, which writes the hit into the event ring (uemu/ring.py) with
its arguments fetched at the hit (uemu/fetch.py); uemu reads the ring without any
ptrace stop.  Everything else stays the trap path's: uemu keeps every thread seized,
and the core keeps the life cycle (semaphores, delayed increments, fork, exec,
mappings) exactly as it is.

``JumpPath`` is the one seam.  The core (uemu/uprobes.py) calls it as ``Uprobes.jumps``
where it writes and forgets breakpoints; the loop's modules (arming.py, hits.py,
tasks.py, jumphits.py) where only they can tell.  What is called, and when:

=============================  ==========================================================
the net is installed in an mm  ``setup(mm, net, call)`` (arming), before any site is
(attach, exec, first probe)    armed: the ring, the table's header, every stopped
                               thread's thread pointer.
arming (``Arming.arm``)        ``calling(mm, call)`` (arming): how to inject the mmaps
                               of landing pages while ``Uprobes.mmap`` arms.
a site is armed                ``install(mm, uprobe, vaddr)`` (core, the counter raised
                               already): True jumped; else the core writes a breakpoint.
a site is removed              ``remove(mm, vaddr)`` (core), then the counter.
munmap of a site's page        ``unmapped(mm, vaddr)`` (core): nothing written.
a new thread (clone stop)      ``thread_seen(mm, tid)`` (tasks.py) before resuming it;
                               ``thread_exited(mm, tid)`` at its exit.
a SIGTRAP not at a breakpoint  ``trap_at(mm, address)`` (hits.py): where to resume a
                               thread that met the int3 a 5-byte jump is written behind.
fork (child stopped)           ``dup(parent, child)`` (core, in ``dup_mmap``); a child not
                               followed then loses its jumps with its breakpoints.
exec, exit                     ``forget(mm)`` (core, in ``clear_state``).
detach                         first ``inside``, ``trap_ways_back`` and
                               ``untrap_ways_back`` (uemu/jumpout.py: threads inside a
                               hit run out of it, recording on); then ``leave(mm)``
                               (``Tracees.restore``) before the sites go (recording
                               off); then ``keeps_area(mm, tids, call)``: the landing
                               pages and the ring are unmapped, and the net's area
                               too, unless a thread's ip is still inside (it could not
                               be moved): then all stays mapped, inert, and the thread
                               goes on through it and back to the program by itself.
any time, from any thread      ``drain(take)``: the hits recorded since (the reader
                               thread of uemu/ringfeed.py calls it).
the end                        ``drain(take, final=True)``, ``lost()``, ``close()``.
uemu's death                   nothing: the in-target net lists every jump as a site and
                               restores it at the first hit or trap after uemu is gone.
=============================  ==========================================================

Kernel: the nop5 optimisation of uprobes (arch/x86/kernel/uprobes.c, 2025) writes a
5-byte jump with text_poke_bp's int3-first protocol and runs the consumers in the
kernel; here they run in the target (recording only) and in uemu (the rest).
Differs: a punned site's jump depends on the four program bytes after it; a breakpoint
another tool puts there (gdb, a kernel uprobe) sends the jump elsewhere.  uemu never
puts one there itself (``plan`` refuses sites whose neighbours it writes).
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from signal import SIGSEGV

from uemu.arch.jump import Eviction, JumpBackend, JumpForm, SiteJump

from . import argspec, errors, process, ptrace, ring
from .chrome import read_comm
from .events import Event, LineShape, SiteLines
from .fetch import FetchProgram, NotFetchable, compile_args
from .jumpfacts import (
    counter_is_the_clock,
    counter_of,
    in_vdso_called_from,
    stack_of,
    thread_pointer,
    thread_pointer_readable,
    vdso_clock,
)
from .jumpplan import (
    LANDING_SIZE,
    NO_ROOM_FOR_LEAD,
    NOT_RELOCATABLE,
    Neighbours,
    Trap,
    choose,
    evictable,
    first_fit,
    kept_room,
    landing_refused,
    meeting,
    outward,
    punned_leads,
    refusals,
    refused_until,
    window_pages,
)
from .jumptable import JumpTable
from .maps import PROT_EXEC, PROT_READ, Vma, is_probe_vma, prot_at, read_maps
from .net import MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE, InjectedCall, Net
from .ringfeed import RingEvent, Take
from .runtime import layout
from .runtime.layout import JumpsFlags, JumpsState
from .uprobes import Consumer, Mm, Uprobe, Uprobes
from .xol import is_fault

PAGE = layout.PAGE
RING_NAME = b"uemu-ring\0"
RING_PATH = "/memfd:uemu-ring"
"""How /proc/PID/maps begins the ring's line (`` (deleted)`` follows)."""
TRAP_BRANCH = "uemu's own breakpoint: it must stop the thread"


@dataclass(frozen=True)
class Jump:
    """A site that takes the jump path (``plan``), not yet written (``arm``)."""

    site: SiteJump
    uprobe: Uprobe
    program: FetchProgram

    @property
    def why(self) -> str:
        return self.site.why


@dataclass(frozen=True)
class _Recorded:
    """What a record's id stands for (kept after the site goes: its records may still wait)."""

    vaddr: int
    consumers: tuple[tuple[Consumer, str, str, str, list[str]], ...]
    """Each consumer with what its events say: object, provider, name, specs."""
    program: FetchProgram
    _lines: dict[LineShape, tuple[tuple[Consumer, SiteLines], ...]] = field(default_factory=dict, compare=False,
                                                                           repr=False)

    def lines(self, shape: LineShape) -> tuple[tuple[Consumer, SiteLines], ...]:
        """Each consumer with what its lines repeat, made at the first hit wanted as lines."""
        made = self._lines.get(shape)
        if made is None:
            made = self._lines[shape] = tuple((c, shape(obj, provider, name, self.vaddr, specs))
                                              for c, obj, provider, name, specs in self.consumers)
        return made


@dataclass(frozen=True)
class _Evicted:
    """The instruction after a punned site, moved to a trampoline of its own (E9Patch's
    successor eviction): the pun's displacement is then the start of the jump uemu
    writes over it, and uemu chose it (``JumpPath._evict``)."""

    site: SiteJump
    """The jump over the successor (``jumpplan.evictable``)."""
    trampoline: int
    """Where that jump leads: the successor's instruction and a jump back, no hit."""
    written: bytes
    original: bytes


@dataclass
class _Site:
    """A jumped site of one mm."""

    jump: Jump
    index: int
    trampoline: int
    written: bytes
    """What uemu wrote at ``jump.site.at``."""
    original: bytes
    armed: bool = True
    landing: int | None = None
    """A pun's target, where a whole jump leads on to the trampoline."""
    evicted: _Evicted | None = None
    """Its successor, when the pun's own target was refused."""

    def writes(self) -> list[tuple[int, bytes, bytes]]:
        """(address, written, original) of each of uemu's writes for the site, in the order
        they come off: the pun first, whose displacement the successor's jump holds."""
        own = (self.jump.site.at, self.written, self.original)
        if self.evicted is None:
            return [own]
        return [own, (self.evicted.site.at, self.evicted.written, self.evicted.original)]


@dataclass
class _MmJumps:
    """The jump path's state of one address space."""

    mm: Mm
    net: Net
    table: JumpTable
    ring: ring.Ring
    backend: JumpBackend
    sites: dict[int, _Site] = field(default_factory=dict)
    """By the probe's address; disarmed ones stay: their trampoline and index are reused."""
    int3_first: set[int] = field(default_factory=set)
    """Where a jump was ever written behind an int3 (``trap_at``)."""
    next_trampoline: int = 0
    pages: set[int] = field(default_factory=set)
    """Landing pages uemu mapped (pun targets, trampolines near sites out of the area's reach)."""
    used: list[tuple[int, int]] = field(default_factory=list)
    """[start, end) of every landing and every trampoline on a landing page, sorted."""
    full: set[int] = field(default_factory=set)
    """Landing pages with no room left for a trampoline."""
    targets: tuple[tuple[object, ...], list[tuple[int, int]]] = ((), [])
    """The landings of every pun known in the mm (``_pun_landings``), with what they were
    found from."""
    brk: int | None = None
    """The process's start_brk: no landing page where the heap may grow (``landing_refused``)."""
    traps: dict[int, bytes] = field(default_factory=dict)
    """Leaving: a trap over a trampoline's jump back -> the bytes under it (``trap_ways_back``)."""
    handlers: dict[int, int] = field(default_factory=dict)
    """Thread -> the stack pointer it had when a signal was delivered to it inside the jump
    path's code (``signal_delivered``): the handler's frame, below, returns there."""

    def holds_code(self, address: int) -> bool:
        """Whether ``address`` is in the jump path's code here (``JumpPath.code``), asked
        without listing every landing page: the program's every signal asks."""
        return self.net.base <= address < self.net.base + layout.CODE_SIZE or address - address % PAGE in self.pages


class JumpPath:
    """The jump path of one session (see the module's docstring for when to call what)."""

    def __init__(self, uprobes: Uprobes, *, decode_args: bool = True, count_only: bool = False,
                 strings: Sequence[int] = (), strsize: int = 256, ring_size: int = ring.DEFAULT_SIZE,
                 drop: bool = False, warn: Callable[[str], None] = print):
        self.uprobes = uprobes
        self.decode_args = decode_args
        self.count_only = count_only
        """Nothing but the number of hits is wanted (``--count``): a site's hits add to a
        counter in the ring, no record (``counted``)."""
        self._counters: dict[ring.Ring, list[tuple[str, ...]]] = {}
        """A ring's counters, by index: the probes (``provider:name``) each one counts for."""
        self._closed_counts: dict[str, int] = {}
        self.strings = tuple(strings)
        self.strsize = strsize
        self.ring_size = ring_size
        self.drop = drop
        self.warn = warn
        self._mms: dict[Mm, _MmJumps] = {}
        self._rings: list[ring.Ring] = []
        self._recorded: dict[int, _Recorded] = {}
        self._next_id = 1
        self._plans: dict[tuple[int, int, int], Jump | Trap] = {}
        self._draining = threading.Lock()
        """drain() may be called by the reader thread and by the loop (at the end)."""
        self._callers: dict[Mm, InjectedCall] = {}
        self.reported_pid: Callable[[int, int], int | None] = lambda pid, tid: pid
        """(pid, tid) of a record -> the pid its hit is reported with, None: not at all
        (the session knows vfork children: they share their parent's table)."""
        self.line_shape: Callable[[], LineShape | None] = lambda: None
        """How a drain hands out each event as its line, None: as an Event (uemu/jumphits.py
        asks the reporter: ``Reporter.line_shape``)."""
        self.names: dict[tuple[int, int], bytes | None] = {}
        """(pid, tid) -> the thread's name, read when its first record is (its hits reach
        the output a little later, when it may be gone): ``thread_name``."""
        self.read = 0
        """Records read from the rings so far (hits that took the jump path), counted as
        each take is given back: leaving's progress (uemu/jumpout.py), which a drain of a
        whole ring would otherwise hide for as long as it takes."""

    # ---- deciding ------------------------------------------------------------------------

    def plan(self, mm: Mm, uprobe: Uprobe, vaddr: int) -> Jump | Trap:
        """Whether the site of ``uprobe`` at ``vaddr`` in ``mm`` can take a jump, decided
        once per site and image (like the backend's plan).  Pure but for reading the mm's
        objects: nothing is written."""
        key = (id(mm), id(uprobe), vaddr)
        decided = self._plans.get(key)
        if decided is None:
            decided = self._plans[key] = self._plan(mm, uprobe, vaddr)
        return decided

    def _plan(self, mm: Mm, uprobe: Uprobe, vaddr: int) -> Jump | Trap:
        if uprobe.internal:
            return Trap(TRAP_BRANCH)
        choice = choose(mm.arch, uprobe.plan_at(mm.backend, vaddr), uprobe.original, self._neighbours(uprobe, vaddr))
        if isinstance(choice, Trap):
            return choice
        try:
            program = self._program(mm, uprobe)
        except NotFetchable as why:
            return Trap(str(why))
        return Jump(choice, uprobe, program)

    def _neighbours(self, uprobe: Uprobe, vaddr: int) -> Neighbours:
        """The sites uemu writes in the object of ``uprobe`` (at ``vaddr``), as it sees them."""
        return Neighbours(self.uprobes.offsets_by_file.get(uprobe.file_id, []), vaddr - uprobe.offset)

    def _program(self, mm: Mm, uprobe: Uprobe) -> FetchProgram:
        """The fetch program of the uprobe's consumers (one record serves them all)."""
        backend = mm.arch.jumps
        assert backend is not None
        argument_strings = {c.probe.args for c in uprobe.consumers}
        if len(argument_strings) > 1:
            raise NotFetchable("consumers of one site with different argument specs")
        args = argument_strings.pop() if argument_strings and self.decode_args else ""
        probe = uprobe.consumers[0].probe if uprobe.consumers else None
        obj = mm.object_of(probe.object) if probe is not None else None
        resolve = None
        if obj is not None and probe is not None:
            near = probe.address

            def resolve(name: str) -> int | None:
                assert obj is not None
                return obj.symbol_runtime_address(name, near)

        little = obj.elf.little_endian if obj is not None else None
        return compile_args(args, mm.arch, backend.frame, resolve, little, self.strings, self.strsize)

    # ---- setting up --------------------------------------------------------------------------

    def setup(self, mm: Mm, net: Net, call: InjectedCall) -> None:
        """The jump path's part of ``mm``'s area and a ring of its own (every thread of
        ``mm`` stopped, ``net`` installed, ``call`` injecting system calls)."""
        backend = mm.arch.jumps
        if backend is None or mm in self._mms:
            return
        table = JumpTable(mm.arch, net.base, mm.memory)
        flags = JumpsFlags(0)
        if thread_pointer_readable(mm.pid, mm.arch):
            flags |= JumpsFlags.THREAD_POINTER
        if net.blob.read_counter and counter_is_the_clock(mm.arch):
            flags |= JumpsFlags.COUNTER
        table.install(pid=mm.pid, ring=0, clock=vdso_clock(mm.memory, mm.vmas), flags=flags)
        mm.memory.write(table.name_address, RING_NAME)
        events = ring.create(mm.pid, mm.arch, call, table.name_address, self.ring_size, self.drop,
                             populate=not self.count_only)
        # journalled once mapped (its address is the kernel's choice): a kill in between leaves it unsaid
        net.journal.note_mapping(events.target_address, PAGE + events.size)
        table.set_ring(events.target_address)
        table.set_state(JumpsState.ON)
        self._rings.append(events)
        self._mms[mm] = _MmJumps(mm, net, table, events, backend, next_trampoline=net.base + layout.TRAMP_OFF,
                                 brk=process.start_brk(mm.pid))
        mm.vmas = read_maps(mm.pid)
        for name in os.listdir(f"/proc/{mm.pid}/task"):
            self.thread_seen(mm, int(name))

    # ---- the core's calls (uprobes.JumpSites) ----------------------------------------------

    def calling(self, mm: Mm, call: InjectedCall) -> None:
        """How to make system calls in ``mm`` (a stopped thread's) while the core arms."""
        self._callers[mm] = call

    def install(self, mm: Mm, uprobe: Uprobe, vaddr: int) -> bool | None:
        decided = self.plan(mm, uprobe, vaddr)
        call = self._callers.get(mm)
        if isinstance(decided, Trap) or call is None or mm not in self._mms:
            return None
        return self.arm(mm, decided, call) is None

    def remove(self, mm: Mm, vaddr: int) -> None:
        self.disarm(mm, vaddr)

    def unmapped(self, mm: Mm, vaddr: int) -> None:
        state = self._mms.get(mm)
        placed = state.sites.get(vaddr) if state is not None else None
        if state is None or placed is None or not placed.armed:
            return
        for at, _, _ in placed.writes():
            state.net.remove_site(at)
        state.table.remove_site(placed.index)
        placed.armed = False

    def holds(self, mm: Mm, vaddr: int) -> bool:
        """Whether the jump uemu wrote for site ``vaddr`` is still in memory (a rendezvous
        does not tell an unmapped and mapped again text from one left alone)."""
        state = self._mms.get(mm)
        placed = state.sites.get(vaddr) if state is not None else None
        if placed is None or not placed.armed:
            return False
        try:
            return all(mm.memory.read(at, len(written)) == written for at, written, _ in placed.writes())
        except OSError:
            return False

    def moved(self, mm: Mm, vaddr: int, new_vaddr: int) -> None:
        """mremap moved the text of the jumped site ``vaddr`` to ``new_vaddr``: the old
        place is gone (as ``unmapped``), and the bytes that came along are a jump whose
        displacement was made for the old place: the file's bytes go back at the new one,
        so that the caller may probe it afresh.
        Differs: the kernel's moved breakpoint works anywhere (copy_vma); a jump does not."""
        state = self._mms.get(mm)
        placed = state.sites.get(vaddr) if state is not None else None
        if state is None or placed is None or not placed.armed:
            return
        self.unmapped(mm, vaddr)
        for old, written, original in placed.writes():
            at = old - vaddr + new_vaddr
            try:
                current = mm.memory.read(at, len(written))
            except OSError:
                return
            if current == written:
                self._write_jump(state, at, original)

    def keeps_area(self, mm: Mm, tids: Iterable[int], call: InjectedCall) -> bool:
        """Leaving ``mm`` (recording off, its jumps removed, its threads ``tids``
        stopped, those that were inside a hit moved out: uemu/jumpout.py): whether the
        net's area must stay mapped, inert, because a thread's ip is still in a
        trampoline or the runtime (one that could not be moved: a fault, the bound):
        it goes on through it and back to the program by itself.  Otherwise the
        landing pages and the ring are unmapped here (through ``call``, the area's
        stub) and the area may go.
        Differs: the kernel's XOL area stays mapped for good."""
        state = self._mms.get(mm)
        if state is None:
            return False
        # The ring is mapped at setup, before any site is armed: it goes even where no
        # site took a jump (riscv64's c.nop sites), where no thread can be inside either.
        if any(self.inside(mm, tid) for tid in tids):
            return True
        for page in sorted(state.pages):
            call("munmap", page, PAGE)
            state.net.journal.note_mapping_gone(page)
        state.pages.clear()
        call("munmap", state.ring.target_address, PAGE + state.ring.size)
        state.net.journal.note_mapping_gone(state.ring.target_address)
        return False

    def has_code(self, mm: Mm) -> bool:
        """Whether ``mm`` has the jump path's code (``setup`` ran, ``forget`` did not)."""
        return mm in self._mms

    def holds_code(self, mm: Mm, address: int) -> bool:
        """Whether ``address`` is in ``code(mm)``."""
        state = self._mms.get(mm)
        return state is not None and state.holds_code(address)

    def code(self, mm: Mm) -> list[tuple[int, int]]:
        """[start, end) of the jump path's code in ``mm``: the runtime and the trampolines
        of the area, the landing pages."""
        state = self._mms.get(mm)
        if state is None:
            return []
        return [(state.net.base, state.net.base + layout.CODE_SIZE),
                *((page, page + PAGE) for page in state.pages)]

    def inside(self, mm: Mm, tid: int) -> bool:
        """Whether stopped thread ``tid`` is in the jump path's code (``code``), in the
        vDSO's clock_gettime called from there (the runtime's clock), or in a signal
        handler entered from there that may not have returned (``in_handler``)."""
        regs = self._registers(mm, tid)
        return regs is not None and (self._in_handler(mm, tid, regs) or self._in_code(mm, regs))

    def in_handler(self, mm: Mm, tid: int) -> bool:
        """Whether stopped thread ``tid``, given a signal inside the jump path's code
        (``signal_delivered``), is out of that code with its stack pointer below where it
        was then, or on another stack (sigaltstack): its handler may still run, and its
        frame returns into the code.  Once it is seen above, the frame has returned."""
        regs = self._registers(mm, tid)
        return regs is not None and self._in_handler(mm, tid, regs)

    def _in_handler(self, mm: Mm, tid: int, regs: ptrace.Regset) -> bool:
        state = self._mms.get(mm)
        if state is None or tid not in state.handlers:
            return False
        if state.holds_code(regs[mm.arch.ip_reg]):
            return False  # in the code itself: ``_in_code`` says so
        entered, sp = state.handlers[tid], regs[mm.arch.sp_reg]
        if sp < entered or stack_of(mm, sp) != stack_of(mm, entered):
            return True
        del state.handlers[tid]
        return False

    @staticmethod
    def _registers(mm: Mm, tid: int) -> ptrace.Regset | None:
        regs = ptrace.Regset(mm.arch.regset, mm.arch.regset_word)
        try:
            regs.fetch(tid)
        except (OSError, errors.UemuError):
            return None  # gone
        return regs

    def signal_delivered(self, mm: Mm, tid: int, regs: ptrace.Regset) -> None:
        """A signal of the program's goes to stopped thread ``tid`` (``regs`` fetched).
        Inside the jump path's code, its handler's frame will hold an ip there until the
        handler returns: leaving must not unmap the code under it (``inside``).
        Outside, a record of an earlier one is dropped once the stack pointer is back above
        it (``_in_handler``): a thread later blocked deeper in the program, with no stop
        between, would otherwise count as inside at leaving.
        Kernel: nothing of the kind (its trampolines stay mapped for good)."""
        state = self._mms.get(mm)
        if state is None:
            return
        if self._in_code(mm, regs):
            sp = regs[mm.arch.sp_reg]
            state.handlers[tid] = max(sp, state.handlers.get(tid, sp))
        elif tid in state.handlers:
            self._in_handler(mm, tid, regs)

    def counter_refused(self, mm: Mm, tid: int, sig: int, regs: ptrace.Regset) -> bool:
        """Whether signal ``sig`` of stopped thread ``tid`` (``regs`` fetched) is the
        runtime's read of the CPU's counter faulting, in a thread that turned the counter
        off (x86: prctl PR_SET_TSC, PR_TSC_SIGSEGV, under which the vDSO's clock faults
        too).  Then the process's hits take the clock from the system call from now on,
        and the read gives 0 (its result registers zeroed, the instruction stepped over),
        which sends this hit there too: the program never sees a fault of uemu's code."""
        state = self._mms.get(mm)
        counter = counter_of(mm.arch)
        if state is None or counter is None or sig != SIGSEGV or not state.net.blob.read_counter:
            return False
        ip = regs[mm.arch.ip_reg]
        if ip != state.net.base + state.net.blob.read_counter or not is_fault(sig, ptrace.signal_info_bytes(tid)):
            return False
        state.table.clock_by_syscall()
        for name in counter.result_regs:
            regs[name] = 0
        regs[mm.arch.ip_reg] = ip + counter.insn_len
        regs.store(tid)
        self.warn(f"process {mm.pid}: thread {tid} cannot read the CPU's counter (turned off by the program); "
                  "its hits' times come from the clock_gettime system call")
        return True

    def _in_code(self, mm: Mm, regs: ptrace.Regset) -> bool:
        """Whether a thread with ``regs`` is in ``code(mm)`` or in the vDSO called from
        there (``called_from``)."""
        state = self._mms.get(mm)
        if state is None:
            return False
        return state.holds_code(regs[mm.arch.ip_reg]) or in_vdso_called_from(mm, regs, self.code(mm))

    def trap_ways_back(self, mm: Mm) -> dict[int, int]:
        """Leaving, every thread of ``mm`` stopped: a trap over each trampoline's jump
        back to the program, so that a thread let run out of a hit stops there
        (uemu/jumpout.py).  Each is listed in the net first, as a site: should uemu die
        meanwhile, a thread meeting one puts every byte back and goes on through the
        jump.  Returns each trap's address -> where its jump leads (``untrap_ways_back``
        takes them away)."""
        state = self._mms.get(mm)
        if state is None:
            return {}
        backend, memory = mm.backend, mm.memory
        ways: dict[int, int] = {}
        jumps = state.backend
        leads = [(jumps.way_back(placed.jump.site, placed.trampoline), placed.jump.site.resume)
                 for placed in state.sites.values()]
        evicted = [placed.evicted for placed in state.sites.values() if placed.evicted is not None]
        if evicted:
            assert isinstance(jumps, Eviction), "only a pun evicts"
            leads += [(jumps.relocated_way_back(e.site, e.trampoline), e.site.resume) for e in evicted]
        for at, resume in leads:
            if at in ways:
                continue
            original = memory.read(at, min(backend.max_insn_len, PAGE - at % PAGE))
            trap = backend.trap_bytes(original)
            state.net.add_site(at, original, trap, prot_at(mm.vmas, at))
            memory.write(at, trap)
            state.traps[at] = original[:len(trap)]
            ways[at] = resume
        return ways

    def untrap_ways_back(self, mm: Mm) -> None:
        """The trampolines' own bytes back where ``trap_ways_back`` put traps."""
        state = self._mms.get(mm)
        if state is None:
            return
        for at, original in state.traps.items():
            mm.memory.write(at, original)
            state.net.remove_site(at)
        state.traps.clear()

    # ---- writing ---------------------------------------------------------------------------

    def arm(self, mm: Mm, jump: Jump, call: InjectedCall) -> Trap | None:
        """Write the site's table entry, its trampoline and the jump (in that order: the
        net lists the jump before it is written).  None when armed; a ``Trap`` (why) where
        the process says no (no free page at a pun target, no trampoline within reach,
        bytes that are not the file's): the site takes the trap.  The counter is the
        caller's."""
        state = self._mms.get(mm)
        if state is None:
            return Trap("the jump path is not set up in this process")
        site = jump.site
        old = state.sites.get(site.vaddr)
        if old is not None and old.jump.site == site and old.jump.program == jump.program:
            placed: _Site | Trap = old
        else:
            placed = self._place(state, jump, call)
        if isinstance(placed, Trap):
            return placed
        for at, written, original in placed.writes():
            try:
                current = mm.memory.read(at, len(written))
            except OSError as err:
                return Trap(f"cannot read the site: {err}")
            if current != original:
                return Trap(f"{at:#x} holds {current.hex()}, not the file's {original.hex()}")
        ident = self._next_id
        self._next_id += 1
        self._recorded[ident] = self._record_info(jump)
        counter = state.ring.take_counter() if self.count_only else None
        if counter is not None:
            self._counters.setdefault(state.ring, []).append(tuple(c.probe.full_name for c in jump.uprobe.consumers))
        try:
            state.table.set_site(placed.index, site.vaddr, ident, jump.program, counter)
        except errors.UemuError as why:
            return Trap(str(why))
        for at, written, original in reversed(placed.writes()):  # the successor's jump before the pun
            state.net.add_site(at, original, written, prot_at(mm.vmas, at))
            self._write_jump(state, at, written)
        placed.armed = True
        state.sites[site.vaddr] = placed
        return None

    def disarm(self, mm: Mm, vaddr: int) -> None:
        """The program's bytes back at a jumped site (int3 first where the jump is longer
        than one byte and instructions vary in length; a pun before the jump over its
        evicted successor, which the pun reads), then its table entries."""
        state = self._mms[mm]
        placed = state.sites[vaddr]
        if not placed.armed:
            return
        for at, written, original in placed.writes():
            try:
                current = mm.memory.read(at, len(written))
            except OSError:
                current = b""
            if current == written:
                self._write_jump(state, at, original)
            elif current:
                self.warn(f"process {mm.pid}: the jump at {at:#x} was overwritten by someone else; left as is")
            state.net.remove_site(at)
        state.table.remove_site(placed.index)
        placed.armed = False

    def _write_jump(self, state: _MmJumps, at: int, data: bytes) -> None:
        """One write where one store covers it; else int3 at the first byte, the rest, the
        first byte (Kernel: text_poke_bp()), so no running thread meets a torn
        instruction: one that meets the int3 stops, and ``trap_at`` sends it back."""
        memory = state.mm.memory
        if len(data) == 1 or not state.backend.trap_first:
            memory.write(at, data)
            return
        state.int3_first.add(at)
        memory.write(at, b"\xcc")
        memory.write(at + 1, data[1:])
        memory.write(at, data[:1])

    # ---- where trampolines go ------------------------------------------------------------------

    def _place(self, state: _MmJumps, jump: Jump, call: InjectedCall) -> _Site | Trap:
        site, backend = jump.site, state.backend
        size = backend.tramp_size
        landing = None
        evicted = None
        if site.target is not None:  # only a whole jump on at the target: the next pun may be 5 bytes on
            why = self._map_landing(state, site.target, LANDING_SIZE, call)
            successor = evictable(state.mm.arch, site, jump.uprobe.original,
                                  self._neighbours(jump.uprobe, site.vaddr)) if why else None
            if successor is not None:
                chosen = self._evict(state, site, successor, call)
                if isinstance(chosen, str):
                    return Trap(f"{site.why}: target {site.target:#x}: {why}; {successor.why}: {chosen}")
                site, lead = chosen
                evicted = self._evicted(state, jump, successor, lead)
            elif why:
                return Trap(f"{site.why}: target {site.target:#x}: {why}")
            assert site.target is not None
            landing = replace(site, at=site.target, form=JumpForm.JUMP)
        if site.reach[0] <= state.next_trampoline < site.reach[1] - size and \
                state.next_trampoline + size <= state.net.base + layout.CODE_SIZE:
            address = state.next_trampoline
            state.next_trampoline += size
        else:
            near = self._near(state, site.reach, size, call)
            if near is None:
                return Trap("no room for a trampoline within the jump's reach")
            address = near
            bisect.insort(state.used, (address, address + size))
        index = state.table.take_index()
        if index is None:
            return Trap("the jump table is full")
        code = backend.trampoline(site, address, index, state.net.base + state.net.blob.hit_entry)
        if code is None:
            return Trap("the displaced instruction cannot jump back from the trampoline")
        state.mm.memory.write(address, code)
        if landing is not None:
            state.mm.memory.write(landing.at, backend.jump_bytes(landing, address))
        written = backend.jump_bytes(site, address)
        original = jump.uprobe.original[site.at - site.vaddr:site.at - site.vaddr + len(written)]
        return _Site(jump, index, address, written, original, armed=False, landing=site.target, evicted=evicted)

    @staticmethod
    def _evicted(state: _MmJumps, jump: Jump, successor: SiteJump, lead: int) -> _Evicted:
        written = state.backend.jump_bytes(successor, lead)
        start = successor.at - jump.site.vaddr
        return _Evicted(successor, lead, written, jump.uprobe.original[start:start + len(written)])

    def _evict(self, state: _MmJumps, site: SiteJump, successor: SiteJump,
               call: InjectedCall) -> tuple[SiteJump, int] | str:
        """A pun whose own target is refused, its successor evicted (E9Patch's T2): a
        target of uemu's choice (a landing, on a landing page or a new one near the
        site), then the successor's trampoline where its jump may lead (256 places, 16 MiB
        apart, once the target is chosen: the jump's last byte is the one the pun does
        not read).  The site with its chosen target, and the successor's trampoline, written;
        or why not.
        Differs: E9Patch rewrites a file, where it can also evict to padding; here only
        free room in the process will do."""
        backend = state.backend
        assert isinstance(backend, Eviction), "only a pun can evict"
        if successor.form is JumpForm.PUN:
            return self._evict_punned(state, site, successor, call)
        targets = backend.evict_targets(site, 0, 1 << 64)
        target = self._near(state, (targets.start, targets.stop), LANDING_SIZE, call,
                            phase=(targets.step, targets.start % targets.step))
        if target is None or self._map_landing(state, target, LANDING_SIZE, call):
            return "no free room for its target within reach"
        chosen, leads = backend.evicted(site, successor, target)
        landings = self._pun_landings(state)
        refused = refusals(state.mm.arch, self._others(state), state.brk)
        for lead in leads:
            code = backend.relocated(successor, lead)
            if code is None or meeting(landings, lead, lead + len(code)) or \
                    refused_until(refused, lead, lead + len(code)):
                continue
            if self._map_landing(state, lead, len(code), call):
                continue
            state.mm.memory.write(lead, code)
            return chosen, lead
        state.used.remove((target, target + LANDING_SIZE))
        return "no free room where its jump may lead"

    def _evict_punned(self, state: _MmJumps, site: SiteJump, successor: SiteJump,
                      call: InjectedCall) -> tuple[SiteJump, int] | str:
        """``_evict`` for a successor punned in turn, whose jump leads within a window of
        its own (its ``reach``: 256 bytes to 16 MiB) and whose every lead makes one target
        of the site's pun, 256 bytes apart a byte of the lead.  Pages of the window (its
        landing pages first, then ``jumpplan.window_pages``, spread over it so that their
        targets spread over the pun's whole reach), and in each, one lead a page of
        targets apart, until both the lead's room and the pun's landing are free."""
        backend = state.backend
        assert isinstance(backend, Eviction), "only a pun can evict"
        low, high = successor.reach
        first = backend.relocated(successor, low)
        if first is None:
            return NOT_RELOCATABLE
        size = len(first)
        own = sorted(page for page in state.pages if page < high and low < page + PAGE)
        pages = [*own, *(page for page in window_pages(successor.reach) if page not in state.pages)]
        landings = self._pun_landings(state)
        refused = refusals(state.mm.arch, self._others(state), state.brk)
        for page in pages:
            if page not in state.pages and refused_until(refused, page, page + PAGE):
                continue
            for lead, chosen in punned_leads(backend, site, successor, refused, page, size):
                target = chosen.target
                assert target is not None
                if meeting(state.used, lead, lead + size) or meeting(landings, lead, lead + size) or \
                        meeting(landings, target, target + LANDING_SIZE) or \
                        self._map_landing(state, target, LANDING_SIZE, call):
                    continue
                code = backend.relocated(successor, lead)
                if code is None or len(code) != size or self._map_landing(state, lead, size, call):
                    state.used.remove((target, target + LANDING_SIZE))
                    break  # the page is not to be had after all
                state.mm.memory.write(lead, code)
                return chosen, lead
        return NO_ROOM_FOR_LEAD

    @staticmethod
    def _others(state: _MmJumps) -> list[Vma]:
        """The mappings of the address space but uemu's landing pages: what ``refusals``
        is asked of for room a lead's trampoline may take (a landing page may hold more)."""
        return [v for v in state.mm.vmas if not (v.start in state.pages and v.end == v.start + PAGE)]

    def _map_landing(self, state: _MmJumps, start: int, size: int, call: InjectedCall) -> str:
        """Map the pages under [start, start + size) that are not landing pages yet;
        why not ('' when mapped): taken by the program, another landing or a trampoline
        (only one placed before the target was known: ``_near`` keeps clear of those
        known)."""
        end = start + size
        if meeting(state.used, start, end):
            return "another landing or a trampoline is there"
        why = self._allowed(state, start, end)
        if why:
            return why
        first, last = start & -PAGE, (end - 1) & -PAGE
        for page in range(first, last + PAGE, PAGE):
            if page in state.pages:
                continue
            got = self._map_page(state, page, call)
            if got != page:
                return f"the page at {page:#x} is taken" if got in (page, -17) or got >= 0 else \
                    f"mmap: {os.strerror(-got)}"
            state.pages.add(page)
        bisect.insort(state.used, (start, end))
        return ""

    @staticmethod
    def _map_page(state: _MmJumps, page: int, call: InjectedCall) -> int:
        """A landing page at ``page`` if it is free (what mmap gave: ``page`` when mapped),
        journalled before it is mapped (``uemu repair`` unmaps it)."""
        journal = state.net.journal
        journal.note_mapping(page, PAGE)
        got = call("mmap", page, PAGE, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
        if got != page:
            if got >= 0:
                call("munmap", got, PAGE)  # a kernel that took NOREPLACE as a hint
            journal.note_mapping_gone(page)
        return int(got)

    def _near(self, state: _MmJumps, reach: tuple[int, int], size: int, call: InjectedCall,
              phase: tuple[int, int] | None = None) -> int | None:
        """Room for a trampoline (or, ``phase`` given as (align, residue), a landing whose
        address is fixed modulo ``align``) within ``reach``: on a landing page that has
        some, or a new page in a gap of the address space; never over a landing, a
        trampoline, or the target of a pun not armed yet (``_pun_landings``)."""
        landings = self._pun_landings(state)

        def fit(page: int) -> int | None:
            low, high = max(page, reach[0]), min(page + PAGE, reach[1])
            taken = sorted([*meeting(state.used, page, page + PAGE), *meeting(landings, page, page + PAGE)])
            return first_fit(taken, low, high, size, *(phase or ())) if low < high else None

        for page in sorted(state.pages - state.full):
            found = fit(page)
            if found is not None:
                return found
            if reach[0] <= page and page + PAGE <= reach[1] and phase is None:
                state.full.add(page)
        # The heap's and the stack's room count as taken: a gap's middle there (a non-PIE
        # program's heap may start 1 GiB above it, across the middle of a jump's reach)
        # left every page tried refused.
        mapped = [(v.start, v.end) for v in state.mm.vmas] + [(page, page + PAGE) for page in state.pages] + \
            [(start, end) for start, end, _ in kept_room(state.mm.vmas, state.brk)]
        middle = ((reach[0] + reach[1]) // 2) & -PAGE
        gaps = []
        before_end = 0
        for after_start, after_end in sorted(mapped):
            low = max(before_end + PAGE, reach[0])
            high = min(after_start - 2 * PAGE, reach[1] - PAGE)
            if low <= high:
                page = min(max(middle, -(-low // PAGE) * PAGE), high & -PAGE)
                gaps.append((abs(page - middle), page, low, high))
            before_end = max(before_end, after_end)
        best = next((page for _, start, low, high in sorted(gaps) for page in outward(start, low, high)
                     if not self._allowed(state, page, page + PAGE) and fit(page) is not None), None)
        if best is None or self._map_page(state, best, call) != best:
            return None
        found = fit(best)
        state.pages.add(best)
        bisect.insort(state.mm.vmas, Vma(best, best + PAGE, "r-xp", 0, 0, 0, ""), key=lambda v: v.start)
        return found

    def _pun_landings(self, state: _MmJumps) -> list[tuple[int, int]]:
        """[start, end) of the landing of every pun the session's sites in the mm take or
        will take (those of the objects mapped now), armed or not: arming goes site by
        site, and a trampoline placed over the target of one armed later sent it to the
        trap (python3.11's function__return: its target is 0x33 bytes after
        function__entry's, whose trampoline went right after its landing).  Found anew
        only when the objects' mappings or their number of uprobes changed (one that lost
        its consumers keeps its room: a few bytes)."""
        mm = state.mm
        probed = [(v, self.uprobes.by_file[v.file_id]) for v in mm.vmas if v.file_id in self.uprobes.by_file]
        key = tuple((v.start, v.end, v.perms, v.offset, v.file_id, len(uprobes)) for v, uprobes in probed)
        if state.targets[0] == key:
            return state.targets[1]
        landings = []
        for vma, uprobes in probed:
            for uprobe in uprobes:
                if uprobe.consumers and is_probe_vma(vma, uprobe.file_id, uprobe.offset):
                    decided = self.plan(mm, uprobe, vma.offset_to_vaddr(uprobe.offset))
                    target = decided.site.target if isinstance(decided, Jump) else None
                    if target is not None:
                        landings.append((target, target + LANDING_SIZE))
        landings.sort()
        state.targets = (key, landings)
        return landings

    @staticmethod
    def _allowed(state: _MmJumps, start: int, end: int) -> str:
        return landing_refused(state.mm.arch, state.mm.vmas, start, end, state.brk, mapped_ok=True)

    # ---- records -----------------------------------------------------------------------------

    def _record_info(self, jump: Jump) -> _Recorded:
        consumers = tuple((c, c.probe.object, c.probe.provider, c.probe.name,
                           list(argspec.split(c.probe.args)))  # aarch64: "[sp, 12]"
                          for c in jump.uprobe.consumers)
        return _Recorded(jump.site.vaddr, consumers, jump.program)

    def drain(self, take: Take, final: bool = False) -> int:
        """Hand every hit recorded since the last call to ``take``, one ring event per
        consumer, a batch per take of a ring (each ring in its own order; uemu/ringfeed.py
        sorts by time); their room in the ring is given back at once.  Thread-safe.
        ``final``: uemu is done with the rings (records nobody finished are skipped and
        counted).  Returns how many records were read."""
        with self._draining:
            return self._drain(take, final)

    def _drain(self, take: Take, final: bool) -> int:
        """Each ring's records up to where its head was at the start: a producer as fast as
        the reader cannot keep it here (events then pile up unsorted, undelivered)."""
        count = 0
        shape = self.line_shape()
        for events in list(self._rings):
            end = events.head()
            while True:
                offsets = events.take(final)
                take(self._ring_events(events, offsets, shape))
                events.release()
                count += len(offsets)
                self.read += len(offsets)
                if len(offsets) < ring.TAKE_MAX or events.reached(end):
                    break
        return count

    def _ring_events(self, events: ring.Ring, offsets: list[int], shape: LineShape | None) -> list[RingEvent]:
        """The ring events of the records at ``offsets`` in ``events.view`` (with a ``shape``:
        their lines, not Events): one loop, few calls per record (it runs for every hit; a
        thread's records mostly come in runs, whose pid is looked up once)."""
        buffer, recorded, names, decode_args = events.view, self._recorded, self.names, self.decode_args
        out: list[RingEvent] = []
        append = out.append
        thread: tuple[int, int] | None = None
        pid: int | None = None
        for (ident, recorded_pid, tid, ts_ns), offset in zip(events.headers(offsets), offsets, strict=True):
            info = recorded.get(ident)
            if info is None:
                continue
            if thread is None or thread[1] != tid or thread[0] != recorded_pid:
                thread = (recorded_pid, tid)
                pid = self.reported_pid(recorded_pid, tid)
                if pid is not None and (pid, tid) not in names:
                    names[pid, tid] = read_comm(pid, tid)
            if pid is None:
                continue
            if not decode_args:
                for target in info.consumers:
                    append((0, target[0], None))
                continue
            args, strings = info.program.decode(buffer, offset)
            if shape is not None:
                for consumer, site in info.lines(shape):
                    append((ts_ns, consumer, site.line(ts_ns, pid, tid, args)))
                continue
            read_string = _captured(strings) if strings else None
            first = True
            for consumer, obj, provider, name, specs in info.consumers:
                append((ts_ns, consumer, Event(ts_ns, pid, tid, obj, provider, name, info.vaddr, specs,
                                               args if first else list(args), read_string)))
                first = False
        return out

    def wait(self, timeout_ns: int) -> None:
        """Sleep until a hit is recorded or ``timeout_ns`` passed (the reader thread's
        sleep): on the futex of the one ring there is, else in short naps."""
        rings = list(self._rings)
        if len(rings) == 1:
            rings[0].sleep(timeout_ns)
        else:
            time.sleep(min(timeout_ns, 5_000_000) / 1e9)

    def wake(self) -> None:
        """End the reader thread's ``wait`` now."""
        for events in list(self._rings):
            events.wake_reader()

    def thread_name(self, pid: int, tid: int) -> bytes | None:
        """A thread's name as read at its first hit on the jump path, else now."""
        return self.names.get((pid, tid)) or read_comm(pid, tid)

    def counted(self) -> dict[str, int]:
        """Hits of counted sites (``count_only``) so far, per probe: read from the rings
        now, or as they were at ``close``."""
        totals = dict(self._closed_counts)
        for events, probes in self._counters.items():
            for hits, names in zip(events.counts(), probes, strict=True):
                for name in names:
                    totals[name] = totals.get(name, 0) + hits
        return totals

    def lost(self) -> int:
        """Events dropped so far: by producers (full ring under --drop, a re-entered hit
        finding it full, uemu leaving) and records nobody finished."""
        return sum(events.lost + events.unfinished for events in self._rings)

    # ---- threads, fork, exec, leaving ------------------------------------------------------------

    def thread_started(self, mm: Mm, tid: int, tp: int) -> None:
        state = self._mms.get(mm)
        if state is not None:
            state.table.thread_started(tid, tp)

    def thread_seen(self, mm: Mm, tid: int) -> None:
        """Thread ``tid`` of ``mm`` is stopped: its hits will name it by its thread
        pointer (one it does not have yet, or one that cannot be read: its hits ask
        gettid)."""
        if mm not in self._mms:
            return
        regs = ptrace.Regset(mm.arch.regset, mm.arch.regset_word)
        try:
            regs.fetch(tid)
        except (OSError, errors.UemuError):
            return  # running, or gone
        self.thread_started(mm, tid, thread_pointer(mm.arch, tid, regs))

    def thread_exited(self, mm: Mm, tid: int) -> None:
        state = self._mms.get(mm)
        if state is not None:
            state.table.thread_exited(tid)
            state.handlers.pop(tid, None)

    def trap_at(self, mm: Mm, address: int) -> int | None:
        """Where a thread that trapped at ``address`` resumes, if the trap was an int3 uemu
        put in front of a jump it was writing or removing (the jump, or the program's
        bytes, are whole now); None: not the jump path's."""
        state = self._mms.get(mm)
        return address if state is not None and address in state.int3_first else None

    def dup(self, parent: Mm, child: Mm) -> None:
        """A fork: the child (stopped) has copies of the parent's jumps, trampolines, table
        and landing pages, and shares its ring.  Its records must say its pid; the
        thread table names the parent's threads; the clock pair may be half written."""
        state = self._mms.get(parent)
        child_net = child.net
        if state is None or child_net is None:
            return
        table = state.table.copy_for(child.memory)
        table.set_pid(child.pid)
        table.forget_threads()
        table.forget_clock()
        copy = _MmJumps(child, child_net, table, state.ring, state.backend,
                        sites={vaddr: replace(s) for vaddr, s in state.sites.items()},
                        int3_first=set(state.int3_first), next_trampoline=state.next_trampoline,
                        pages=set(state.pages), used=list(state.used), full=set(state.full),
                        targets=state.targets, brk=state.brk)
        self._mms[child] = copy

    def forget(self, mm: Mm) -> None:
        """exec or exit: the image is gone with everything uemu wrote there."""
        self._mms.pop(mm, None)
        self._callers.pop(mm, None)
        self._plans = {key: value for key, value in self._plans.items() if key[0] != id(mm)}

    def leave(self, mm: Mm) -> None:
        """Detaching: trampolines record nothing from now on (a hit waiting for room gives
        up).  Then the caller disarms each site."""
        state = self._mms.get(mm)
        if state is not None:
            state.table.set_state(JumpsState.OFF)

    def is_jumped(self, mm: Mm, vaddr: int) -> bool:
        state = self._mms.get(mm)
        return state is not None and vaddr in state.sites and state.sites[vaddr].armed

    def jumped(self, mm: Mm) -> list[int]:
        state = self._mms.get(mm)
        return [] if state is None else [v for v, s in state.sites.items() if s.armed]

    def close(self) -> None:
        self._closed_counts = self.counted()
        self._counters.clear()
        for events in self._rings:
            events.close()
        self._rings.clear()


def _captured(strings: dict[int, bytes]) -> Callable[[int, int], bytes | None]:
    def read_string(address: int, limit: int) -> bytes | None:
        found = strings.get(address)
        return None if found is None else found[:limit]

    return read_string
