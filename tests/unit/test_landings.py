"""Where the jump path puts pun landings and trampolines (uemu/jumps.py, uemu/jumpplan.py), over a
bytes-backed fake address space: no process, the injected mmap a dict's insert."""

from __future__ import annotations

import errno
import itertools
import random

import pytest
from fakes import X86_64, FakeMemory, new_mm, register, uprobe, vma

from uemu.arch.jump import SiteJump
from uemu.jumpplan import (
    LANDING_SIZE,
    NO_ROOM_FOR_LEAD,
    Neighbours,
    Trap,
    _window_room,
    choose,
    evictable,
    first_fit,
    landing_refused,
    meeting,
    refusals,
    refused_until,
    window_pages,
)
from uemu.jumps import Jump, JumpPath, _MmJumps
from uemu.jumptable import JumpTable
from uemu.maps import HEAP_ROOM, Vma
from uemu.net import Net
from uemu.runtime import layout
from uemu.uprobes import Mm, Uprobe, Uprobes

TEXT = vma(0x4F2000, 0x1000, "r-xp", 0x1000)
ENTRY, RETURN = 0x10A1, 0x10D4
"""File offsets of two nops 0x33 bytes apart (python3.11's function__entry and
function__return)."""
TARGET = 0x5C907E01
"""function__entry's pun target; function__return's is 0x33 bytes on (the same four
bytes follow both nops)."""
AREA = 0x7F0000000000
"""uemu's area, out of the targets' reach: trampolines go on landing pages."""
MiB = 1 << 20
STACK = Vma(0x7FFF00000000, 0x7FFF00021000, "rw-p", 0, 0, 0, "[stack]")


def heap(start: int, size: int) -> Vma:
    return Vma(start, start + size, "rw-p", 0, 0, 0, "[heap]")


def test_first_fit_takes_the_lowest_aligned_gap_that_holds_the_size() -> None:
    taken = [(0x1001, 0x1006), (0x1034, 0x1039)]
    assert first_fit(taken, 0x1000, 0x2000, 96) == 0x1040, "not over the target 0x33 bytes on"
    assert first_fit(taken, 0x1000, 0x2000, 0x2C) == 0x1008
    assert first_fit([], 0x1003, 0x2000, 8) == 0x1008
    assert first_fit(taken, 0x1000, 0x1080, 96) is None
    assert first_fit(taken, 0x1000, 0x2000, 5, 256, 0xE9) == 0x10E9, "a pun's target after an eviction"
    assert first_fit([(0x10E0, 0x10F0)], 0x1000, 0x2000, 5, 256, 0xE9) == 0x11E9


@pytest.mark.parametrize("seed", range(10))
def test_neighbours_within_a_jump_are_found_as_a_walk_over_every_site_finds_them(seed: int) -> None:
    """The bisection against the walk it replaced (every other site, ``low < where < high``),
    with sites packed closer than a pun's five bytes, duplicates and a shift."""
    rng = random.Random(seed)
    offsets = sorted(rng.randrange(0x1000, 0x1100) for _ in range(rng.randrange(0, 60)))
    shift = rng.choice([0, 0x7F0000000000 - 0x1000, -0x800])
    neighbours = Neighbours(offsets, shift)
    for low in range(0x0FF0 + shift, 0x1110 + shift):
        high = low + rng.choice([1, 2, 5, 6, 11])
        walked = [at + shift for at in offsets if low < at + shift < high]
        assert neighbours.first_within(low, high) == (min(walked) if walked else None), (low, high)


def test_meeting_finds_ranges_across_a_page_boundary() -> None:
    ranges = [(0x0FA0, 0x1000), (0x1FFE, 0x2003), (0x2000, 0x2060), (0x2100, 0x2105)]
    assert meeting(ranges, 0x1FFC, 0x2001) == [(0x1FFE, 0x2003), (0x2000, 0x2060)]
    assert meeting(ranges, 0x1000, 0x1FFE) == []
    assert meeting(ranges, 0x2060, 0x2100) == []


def _injected_mmap(memory: FakeMemory):
    """mmap with MAP_FIXED_NOREPLACE as the kernel does it: -EEXIST over a mapping."""
    def call(name: str, *args: int) -> int:
        assert name == "mmap", name
        start, size = args[0], args[1]
        if any(at < start + size and start < at + len(data) for at, data in memory.regions.items()):
            return -errno.EEXIST
        memory.map(start, bytes(size))
        return start
    return call


def _jump_path(memory: FakeMemory, mm: Mm, probes: list[Uprobe]) -> tuple[JumpPath, _MmJumps]:
    """A jump path set up in ``mm`` (its area at ``AREA``, mapped), ``probes`` registered."""
    core = Uprobes(print)
    for probe in probes:
        register(core, probe)
    path = JumpPath(core)
    net = Net(X86_64, AREA, memory)
    table = JumpTable(X86_64, AREA, memory)
    table.install(pid=memory.pid, ring=0, clock=0, flags=layout.JumpsFlags.THREAD_POINTER)
    state = _MmJumps(mm, net, table, None, X86_64.jumps, next_trampoline=AREA + layout.TRAMP_OFF)  # type: ignore[arg-type]
    path._mms[mm] = state
    return path, state


def _leads_to(memory: FakeMemory, at: int) -> int:
    """Where the jmp rel32 at ``at`` leads."""
    jump = memory.read(at, 5)
    assert jump[0] == 0xE9, jump.hex()
    return at + 5 + int.from_bytes(jump[1:], "little", signed=True)


EVICTED = bytes.fromhex("90b8ffffff00")
"""nop; mov $0xffffff,%eax: the pun's own target is 67 bytes back, inside the text."""


def _evicted(text: Vma, brk: int | None = None, program: bytes = EVICTED,
             others: tuple[Vma, ...] = ()) -> tuple[FakeMemory, Mm, JumpPath, _MmJumps, Jump]:
    """``program`` (``EVICTED``: its pun's own target in the text) at ``ENTRY`` in ``text``,
    beside ``others`` (mappings over the pun's own target), armed: the jump path's state
    and plan."""
    memory, mm, path, state, planned, trap = _arming(text, brk, program, others)
    assert trap is None, trap
    return memory, mm, path, state, planned


def _arming(text: Vma, brk: int | None, program: bytes, others: tuple[Vma, ...],
            shown: tuple[Vma, ...] = ()) -> tuple[FakeMemory, Mm, JumpPath, _MmJumps, Jump, Trap | None]:
    """``_evicted``, and what arming said; ``shown``: more mappings the process lists but
    the fake memory does not hold (too big for bytes)."""
    memory = FakeMemory()
    memory.map(AREA, bytes(layout.AREA_SIZE))
    code = bytearray(b"\xcc" * (text.end - text.start))
    code[ENTRY - text.offset:ENTRY - text.offset + len(program)] = program
    memory.map(text.start, bytes(code))
    for other in others:
        memory.map(other.start, bytes(other.end - other.start))
    mm = new_mm(memory, sorted([text, *others, *shown, STACK], key=lambda v: v.start))
    probe = uprobe(ENTRY, 0, bytes(code[ENTRY - text.offset:ENTRY - text.offset + 15]))
    path, state = _jump_path(memory, mm, [probe])
    state.brk = brk
    site = text.offset_to_vaddr(ENTRY)
    planned = path.plan(mm, probe, site)
    assert isinstance(planned, Jump)
    return memory, mm, path, state, planned, path.arm(mm, planned, _injected_mmap(memory))


def _disarmed_pun_first(memory: FakeMemory, mm: Mm, path: JumpPath, site: int, program: bytes) -> None:
    """Disarmed, the site holds the program's bytes again, and the pun came off before the
    jump over its successor that it reads."""
    written = len(memory.writes)
    path.disarm(mm, site)
    assert memory.read(site, len(program)) == program
    back = [(at, data) for at, data in memory.writes[written:] if site <= at < site + len(program)]
    assert back[0] == (site, b"\x90"), "the pun first"


def test_a_pun_whose_target_is_taken_evicts_its_successor() -> None:
    """The mov goes to a trampoline of its own behind a jump uemu writes over it, whose
    first four bytes are the pun's displacement: the pun leads to a landing of uemu's
    choice, on to the site's trampoline, which goes back to the mov's jump.  Disarmed,
    the pun comes off before the jump it reads."""
    memory, mm, path, state, planned = _evicted(TEXT)
    program = EVICTED
    site = planned.site.vaddr
    [placed] = state.sites.values()
    assert placed.evicted is not None and placed.landing is not None
    assert memory.read(site, 1) == b"\xe9" and _leads_to(memory, site) == placed.landing
    assert not TEXT.start <= placed.landing < TEXT.end
    assert _leads_to(memory, placed.landing) == placed.trampoline
    relocated = placed.evicted.trampoline
    assert _leads_to(memory, site + 1) == relocated
    assert memory.read(relocated, 5) == program[1:], "the mov itself, then the jump back past it"
    assert _leads_to(memory, relocated + 5) == site + 6
    way_back = X86_64.jumps.way_back(planned.site, placed.trampoline)
    assert way_back == placed.trampoline + X86_64.jumps.head_size
    assert path.trap_ways_back(mm) == {way_back: site + 1, relocated + 5: site + 6}, \
        "a thread inside either trampoline at leaving stops at its jump back"
    assert memory.read(relocated + 5, 1) == b"\xcc"
    path.untrap_ways_back(mm)
    assert _leads_to(memory, relocated + 5) == site + 6
    _disarmed_pun_first(memory, mm, path, site, program)


def test_the_heaps_room_across_the_middle_of_the_reach_is_passed_over() -> None:
    """A non-PIE program at 0x400000 whose heap starts near 1 GiB (start_brk randomised):
    the middle of the pun's 2-GiB reach falls in the heap's room to grow, and every page
    tried there was refused, so the site kept the trap (fresh-clone CI: multisite:step
    in x86_64-O2-nopie, 3 starts in 40).  The room counts as taken: the gap above it
    gives the landing."""
    text = vma(0x401000, 0x1000, "r-xp", 0x1000)
    brk = 0x3E158000
    _, _, _, state, _ = _evicted(text, brk)
    [placed] = state.sites.values()
    assert placed.landing is not None and not brk <= placed.landing < brk + HEAP_ROOM


def test_no_trampoline_covers_the_target_of_a_pun_armed_after_it() -> None:
    """Arming goes site by site: where the landing's page was the only room within reach
    (here: mappings all around it), function__entry's trampoline went right after its
    landing, over function__return's target, and function__return kept the trap."""
    memory = FakeMemory()
    memory.map(AREA, bytes(layout.AREA_SIZE))
    rel32 = (TARGET - (TEXT.offset_to_vaddr(ENTRY) + 5)).to_bytes(4, "little", signed=True)
    code = bytearray(b"\xcc" * 0x1000)
    for offset in (ENTRY, RETURN):
        code[offset - TEXT.offset:offset - TEXT.offset + 6] = b"\x90" + rel32 + b"\x90"
    memory.map(TEXT.start, bytes(code))
    page = TARGET & -4096
    crowded = [Vma(TEXT.end, page - 4096, "rw-p", 0, 0, 0, ""), Vma(page + 2 * 4096, STACK.start, "rw-p", 0, 0, 0, "")]
    mm = new_mm(memory, [TEXT, *crowded, STACK])
    probes = [uprobe(offset, 0, bytes(code[offset - TEXT.offset:offset - TEXT.offset + 15]))
              for offset in (ENTRY, RETURN)]
    path, state = _jump_path(memory, mm, probes)
    call = _injected_mmap(memory)
    for probe in probes:
        planned = path.plan(mm, probe, TEXT.offset_to_vaddr(probe.offset))
        assert isinstance(planned, Jump) and planned.site.target is not None
        assert path.arm(mm, planned, call) is None, "the pun is armed"
    sites = list(state.sites.values())
    assert [s.landing for s in sites] == [TARGET, TARGET + 0x33]
    size = X86_64.jumps.tramp_size
    for site in sites:
        assert site.landing is not None
        jump = memory.read(site.landing, LANDING_SIZE)
        assert jump[0] == 0xE9 and site.landing + 5 + int.from_bytes(jump[1:], "little", signed=True) == \
            site.trampoline, "each landing leads on to its own trampoline"
        assert all(not (site.trampoline < other.landing + LANDING_SIZE and other.landing < site.trampoline + size)
                   for other in sites if other.landing is not None)


BRK = 0x555560000000
"""start_brk of a process."""


@pytest.mark.parametrize(("heap_size", "above_brk", "refused"), [
    (MiB, 100 * MiB, False),  # postgres's query__start in most refused starts: 88-244 MiB above start_brk
    (MiB, MiB + HEAP_ROOM - 4096, True),
    (300 * MiB, 310 * MiB, True),  # a large heap keeps its room to grow
    (300 * MiB, 300 * MiB + HEAP_ROOM, False),
])
def test_the_heap_keeps_its_room_above_its_break(heap_size: int, above_brk: int, refused: bool) -> None:
    vmas = [heap(BRK, heap_size), STACK]
    why = landing_refused(X86_64, vmas, BRK + above_brk, BRK + above_brk + LANDING_SIZE, BRK)
    assert (why == "where the heap may grow") is refused, why


def test_below_the_heaps_start_the_heap_never_grows() -> None:
    assert landing_refused(X86_64, [heap(BRK, MiB), STACK], BRK - 4096, BRK - 4096 + LANDING_SIZE, BRK) == ""


def test_a_heap_not_mapped_yet_has_its_room_from_start_brk() -> None:
    assert landing_refused(X86_64, [STACK], BRK + HEAP_ROOM - 4096, BRK + HEAP_ROOM, BRK) == "where the heap may grow"
    assert landing_refused(X86_64, [STACK], BRK + HEAP_ROOM, BRK + HEAP_ROOM + LANDING_SIZE, BRK) == ""


def test_no_eviction_over_another_site_in_the_successor() -> None:
    """A site uemu writes inside the successor's bytes (past the pun's four) would be
    displaced into the successor's trampoline: that pun keeps only its own target."""
    code = bytes.fromhex("9048b88877665544332211").ljust(15, b"\xcc")
    site = 0x5000
    pun = choose(X86_64, X86_64.backend.analyze(code, site), code, Neighbours([site]))
    assert isinstance(pun, SiteJump)
    assert evictable(X86_64, pun, code, Neighbours([site])) is not None
    assert evictable(X86_64, pun, code, Neighbours([site, site + 8])) is None


PUNNED = bytes.fromhex("9049833e007403")
"""nop; cmpq $0,(%r14); je: libjvm's thread__start.  The pun's own target is the cmp's
bytes, 4 MiB on; the cmp, 4 bytes, is punned in turn, its jump's top byte the je's."""


@pytest.mark.parametrize("heap_over_first", [False, True])
def test_a_short_successor_is_punned_in_turn_and_the_two_puns_share_bytes(heap_over_first: bool) -> None:
    """The cmp goes to a trampoline in its jump's window (16 MiB, 1.8 GiB on), behind 0xE9
    and three bytes of uemu's choice; the site's pun reads those three as its
    displacement's top, so it leads to a landing whose address follows from the lead.
    With the heap's room over the targets of the first page tried, another page of the
    window gives a target outside it.  Disarmed, the pun comes off first."""
    site = TEXT.offset_to_vaddr(ENTRY)
    own = site + 5 + 0x003E8349
    blocked = (vma(own & -layout.PAGE, layout.PAGE, "r--p", 0, (0, 0), ""),)
    first: int | None = None
    if heap_over_first:
        _, _, _, state, _ = _evicted(TEXT, None, PUNNED, blocked)
        [placed] = state.sites.values()
        first = placed.landing
        assert first is not None
    brk = None if first is None else max(first - 16 * MiB, TEXT.end)
    memory, mm, path, state, _ = _evicted(TEXT, brk, PUNNED, blocked)
    [placed] = state.sites.values()
    assert placed.evicted is not None and placed.landing is not None
    if brk is not None:
        assert first is not None and brk <= first < brk + HEAP_ROOM
        assert not brk <= placed.landing < brk + HEAP_ROOM, "outside the heap's room"
    lead = placed.evicted.trampoline
    window = (site + 6 + (0x74 << 24), site + 6 + (0x75 << 24))
    assert window[0] <= lead < window[1]
    assert memory.read(site + 1, 5) == b"\xe9" + (lead - (site + 6)).to_bytes(4, "little")[:3] + b"\x74"
    assert _leads_to(memory, site + 1) == lead
    assert _leads_to(memory, site) == placed.landing, "the pun reads the successor's jump"
    assert _leads_to(memory, placed.landing) == placed.trampoline
    assert memory.read(lead, 4) == PUNNED[1:5] and _leads_to(memory, lead + 4) == site + 5
    _disarmed_pun_first(memory, mm, path, site, PUNNED)


@pytest.mark.parametrize("seed", range(12))
def test_the_plan_says_trap_for_a_punned_successor_where_placement_finds_no_room(seed: int) -> None:
    """The plan's verdict on a punned successor (evict, or trap for want of room) is
    placement's, each layout planned and armed, the pun's own target taken: mappings over
    the 3 GiB above the text with random holes, over the window too (seeds 4k, 4k + 2)
    or not (4k + 3); and (4k + 1) all but one page of the window, which placement tries,
    whose leads make targets below address 0.  That last is the case the plan got wrong:
    it looked for a free page in the window, not for a free target too, and said evict
    for 8 sites of a live JVM that kept the trap."""
    rng = random.Random(seed)
    site = TEXT.offset_to_vaddr(ENTRY)
    own = site + 5 + 0x003E8349
    window = (site + 6 + (0x74 << 24), site + 6 + (0x75 << 24))
    taken = [(own & -layout.PAGE, (own & -layout.PAGE) + layout.PAGE)]
    at, top = TEXT.end, site + (3 << 30)
    if seed % 4 == 1:  # all but one page of the window, whose leads' targets lie below address 0
        free = list(window_pages(window))[-2]
        taken += [(layout.PAGE * 16, TEXT.start), (at, free), (free + layout.PAGE, top)]
    while seed % 4 != 1 and at < top:  # mappings over [the text's end, 3 GiB on), holes of 8 to 64 MiB
        end = min(top, at + rng.choice([16 * MiB, 64 * MiB, 256 * MiB, 1024 * MiB]))
        if seed % 2:  # seeds 4k + 3: the window kept free
            taken += [(a, b) for a, b in ((at, min(end, window[0])), (max(at, window[1]), end)) if a < b]
        else:
            taken.append((at, end))
        at = end + rng.randrange(1, 9) * 8 * MiB
    shown = tuple(vma(start, end - start, "r--p", 0, (0, 0), "") for start, end in taken[1:])
    blocked = (vma(taken[0][0], layout.PAGE, "r--p", 0, (0, 0), ""),)
    _, mm, _, state, planned, trap = _arming(TEXT, None, PUNNED, blocked, shown)
    successor = evictable(X86_64, planned.site, PUNNED + bytes(8), Neighbours([], 0))
    assert successor is not None
    why = _window_room(X86_64, planned.site, successor, mm.vmas, None)
    evicted = trap is None and next(iter(state.sites.values())).evicted is not None
    assert (why == "") == evicted, (why, trap)
    assert evicted or why == NO_ROOM_FOR_LEAD


def test_refusals_answer_as_landing_refused_does() -> None:
    """The merged intervals and their bisection (``_evict_punned``'s thousands of
    questions) against ``landing_refused`` itself, over mappings that touch and overlap."""
    vmas = [vma(0x10_0000, 0x2000, "r-xp", 0), vma(0x10_2000, 0x1000, "rw-p", 0x2000),
            vma(0x40_0000, 0x3000, "r--p", 0), vma(0x40_1000, 0x1000, "r--p", 0), heap(0x80_0000, 0x1000), STACK]
    brk = 0x80_0000
    refused = refusals(X86_64, vmas, brk)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(refused)), "sorted and merged"
    rng = random.Random(7)
    for _ in range(2000):
        start = rng.choice([rng.randrange(0, 0x1_0000_0000), rng.randrange(0x7FFE_0000_0000, 0x8000_0000_0000)])
        end = start + rng.choice([1, 5, 0x1000, 0x10_0000])
        assert bool(refused_until(refused, start, end)) == bool(landing_refused(X86_64, vmas, start, end, brk)), \
            hex(start)
    assert refused_until(refused, 0x10_1000, 0x10_1005) == 0x10_3000, "the end of both text and data"
