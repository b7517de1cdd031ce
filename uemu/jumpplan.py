"""Where a jump may go: pure decisions from a site's bytes, the other sites uemu writes
near it, and (in a process) its mappings.  The jump path (uemu/jumps.py) asks them as it
arms a site and places its landing and trampoline; ``uemu list --plan`` asks them of a
file or a running process without writing anything.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from uemu import arch as arches
from uemu.arch import Arch
from uemu.arch.base import Plan
from uemu.arch.jump import Eviction, JumpForm, NoJump, SiteJump

from . import sdt
from .maps import Vma, heap_growth
from .runtime import layout

PAGE = layout.PAGE
EVICT_PAGES = 64
"""Pages of a punned successor's window tried for its trampoline (``window_pages``): in a
16 MiB window, one every 256 KiB, whose targets lie 64 MiB apart over the pun's 4 GiB."""
STACK_ROOM = 64 << 20
"""No landing page this close below the main stack: it may grow there."""
LANDING_SIZE = 5
"""A pun's target holds a whole jmp rel32 on to the trampoline (x86: the one form with a
fixed target), so only targets closer than this collide."""


@dataclass(frozen=True)
class Trap:
    """A site that keeps the trap path, and why."""

    why: str


@dataclass(frozen=True)
class Neighbours:
    """The sites uemu writes in one object, as one of them sees them: each of ``sorted_at``
    (ascending) lies at itself plus ``shift`` (file offsets seen from a run-time address:
    the site's address less its offset).  Sorted, so that a site's look at its neighbours
    is a bisection: a walk over every site of the object made planning N² (manysites,
    10 000 sites: 10^8 steps, most of a 17-s run)."""

    sorted_at: Sequence[int]
    shift: int = 0

    def first_within(self, low: int, high: int) -> int | None:
        """The lowest site strictly between ``low`` and ``high`` (the site itself, at
        ``low``, is not its own neighbour), or None."""
        i = bisect.bisect_right(self.sorted_at, low - self.shift)
        if i < len(self.sorted_at) and self.sorted_at[i] + self.shift < high:
            return self.sorted_at[i] + self.shift
        return None


def choose(arch: Arch, plan: Plan, code: bytes, neighbours: Neighbours, absolute: bool = True) -> SiteJump | Trap:
    """The arch's choice for a site whose instruction the backend analysed as ``plan``
    (``code``: the file's bytes from the site on), unless another site uemu writes (one
    of ``neighbours``) lies where the jump covers or depends on: a pun's four
    displacement bytes, a nop run it skips.  Pure: ``uemu list --plan`` asks it too
    (``absolute`` False: the address is an object's link-time one, its load address yet
    unknown, so user space cannot be checked)."""
    if arch.jumps is None:
        return Trap(f"no jump path for {arch.name}")
    choice = arch.jumps.choose(plan, code)
    if isinstance(choice, NoJump):
        return Trap(choice.why)
    vaddr = choice.vaddr
    end = max(choice.at + choice.length, choice.resume, vaddr + 5 if choice.form is JumpForm.PUN else 0)
    where = neighbours.first_within(vaddr, end)
    if where is not None:
        return Trap(f"another probed site at {where:#x} lies in the bytes the jump depends on")
    if absolute and choice.target is not None and not 0 < choice.target < _user_top(arch) \
            and evictable(arch, choice, code, neighbours) is None:
        return Trap(f"pun target {choice.target:#x} is outside user space")
    return choice


def evictable(arch: Arch, site: SiteJump, code: bytes, neighbours: Neighbours) -> SiteJump | None:
    """The jump over the successor of the pun ``site`` (``code``: the file's bytes from the
    site on) where it can be evicted (``Eviction``), unless another site uemu writes lies
    in the successor's bytes (its trampoline would displace that site's write); asked
    only where the pun's own target is refused."""
    jumps: object = arch.jumps  # as object: mypy --strict takes JumpBackend and Eviction for disjoint
    if not isinstance(jumps, Eviction):
        return None
    successor = jumps.successor(site, code)
    if successor is None:
        return None
    # The whole instruction moves (a jmp's resume is where it leads: its own bytes); a
    # punned one's displacement reads the next instruction's too.
    end = successor.resume if successor.displaced is not None else successor.at + successor.length
    if successor.form is JumpForm.PUN:
        end = max(end, successor.at + 5)
    return None if neighbours.first_within(site.vaddr, end) is not None else successor


def _user_top(arch: Arch) -> int:
    """Where user space ends for ``arch``'s jumps (``JumpBackend.user_top``)."""
    assert arch.jumps is not None, "only an arch with a jump path places jumps"
    return arch.jumps.user_top


def landing_refused(arch: Arch, vmas: Sequence[Vma], start: int, end: int, brk: int | None,
                    mapped_ok: bool = False) -> str:
    """Why no landing page may hold [start, end) ('' if one may): outside user space,
    where the main stack or the heap (``maps.heap_growth`` from ``brk``, the process's
    start_brk) may grow, or (unless ``mapped_ok``: mmap's
    MAP_FIXED_NOREPLACE will tell) a mapping there."""
    if start < _mmap_min_addr() or end > _user_top(arch):
        return "outside user space"
    for low, high, what in kept_room(vmas, brk):
        if low < end and start < high:
            return f"where {what} may grow"
    for vma in vmas:
        if not mapped_ok and vma.start < end and start < vma.end:
            return f"{vma.path or 'an anonymous mapping'} is there"
    return ""


def refusals(arch: Arch, vmas: Sequence[Vma], brk: int | None) -> list[tuple[int, int]]:
    """What ``landing_refused`` refuses in an address space, as sorted, merged [start, end)
    intervals: for many questions about one (a punned successor's thousands of leads),
    each then a bisection (``refused_until``)."""
    spans = sorted([(0, _mmap_min_addr()), (_user_top(arch), 1 << 64),
                    *((low, high) for low, high, _ in kept_room(vmas, brk)), *((v.start, v.end) for v in vmas)])
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def refused_until(refused: Sequence[tuple[int, int]], start: int, end: int) -> int:
    """Where the refused interval that [start, end) meets ends (0: it meets none)."""
    i = bisect.bisect_left(refused, (end,)) - 1
    return refused[i][1] if i >= 0 and refused[i][1] > start else 0


def kept_room(vmas: Sequence[Vma], brk: int | None) -> list[tuple[int, int, str]]:
    """[start, end) where the heap (``maps.heap_growth`` from ``brk``, the process's
    start_brk) and the main stack may grow, each with its name: no landing page there."""
    rooms = []
    growth = heap_growth(vmas, brk)
    if growth is not None:
        rooms.append((*growth, "the heap"))
    return rooms + [(v.start - STACK_ROOM, v.end, "the stack") for v in vmas if v.path == "[stack]"]


def meeting(ranges: Sequence[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """The ones of ``ranges`` ([start, end) each, sorted, each shorter than a page: landings
    and trampolines) that meet [start, end)."""
    first, last = bisect.bisect_left(ranges, (start - PAGE,)), bisect.bisect_left(ranges, (end,))
    return [(s, e) for s, e in ranges[first:last] if e > start]


def outward(start: int, low: int, high: int, tries: int = 32) -> Iterable[int]:
    """Pages from ``start`` outwards within [low, high], nearest first: a new page for
    trampolines next to a run of landings (manysites: thousands, 6 bytes apart)."""
    for step in range(tries):
        yield from (page for page in dict.fromkeys((start + step * PAGE, start - step * PAGE)) if low <= page <= high)


def first_fit(taken: Sequence[tuple[int, int]], low: int, high: int, size: int, align: int = 8,
              phase: int = 0) -> int | None:
    """The lowest address in [low, high - size] that is ``phase`` modulo ``align`` where
    ``size`` bytes meet none of ``taken`` ([start, end) each, sorted by start); None if
    there is none."""
    at = low + (phase - low) % align
    for start, end in taken:
        if at + size <= start:
            break
        if end > at:
            at = end + (phase - end) % align
    return at if at + size <= high else None


@dataclass(frozen=True)
class SitePlan:
    """What ``uemu list --plan`` says of one site."""

    path: str
    """"jump", "pun", "evict" (a pun whose successor is moved away) or "trap"."""
    why: str


def plan_of_site(elf: sdt.ElfObject, file_offset: int, address: int, neighbours: Neighbours,
                 vmas: Sequence[Vma] | None = None, brk: int | None = None) -> SitePlan:
    """The path a probe site will take, from its file alone (``address`` link-time, a pun
    target inside the object's own image keeps the trap) or in a process (``address``
    and ``neighbours`` at run time, ``vmas`` its mappings: a pun target needs free room
    there, and none where the heap grows from ``brk``).  ``neighbours``: the sites uemu
    would write, in the same terms as ``address``."""
    arch = arches.for_elf(elf.e_machine, elf.elf_class, elf.little_endian)
    if arch.backend is None or arch.jumps is None:
        return SitePlan("trap", f"no jump path for {arch.name}")
    with open(elf.source or elf.path, "rb") as stream:
        stream.seek(file_offset)
        code = stream.read(arch.backend.max_insn_len)
    if arch.backend.is_trap(code):
        return SitePlan("trap", "the file holds a trap instruction there (uprobes refuse it)")
    absolute = vmas is not None or elf.e_type == "ET_EXEC"
    choice = choose(arch, arch.backend.analyze(code, address), code, neighbours, absolute)
    if isinstance(choice, Trap):
        return SitePlan("trap", choice.why)
    if choice.target is None:
        return SitePlan("jump", choice.why)
    end = choice.target + LANDING_SIZE
    half = 1 << (8 * arch.word_size - 1)
    distance = (choice.target - address + half) % (2 * half) - half
    target = f"target {choice.target:#x}" if absolute else f"target {distance:+#x} from the site"
    if vmas is None:
        for segment in elf.segments:
            if segment.p_vaddr < end and choice.target < segment.p_vaddr + segment.p_memsz:
                return _refused(evictable(arch, choice, code, neighbours), f"{choice.why}: {target}, inside the "
                                "object's own image")
        return SitePlan("pun", f"{choice.why}: {target}, outside the object's image (free room there at run time)")
    refused = landing_refused(arch, vmas, choice.target, end, brk)
    if not refused:
        return SitePlan("pun", f"{choice.why}: {target}, free")
    successor = evictable(arch, choice, code, neighbours)
    if successor is not None and successor.form is JumpForm.PUN:
        why = _window_room(arch, choice, successor, vmas, brk)
        if why:
            return SitePlan("trap", f"{choice.why}: {target}: {refused}; {successor.why}: {why}")
    return _refused(successor, f"{choice.why}: {target}: {refused}")


def _window_room(arch: Arch, site: SiteJump, successor: SiteJump, vmas: Sequence[Vma], brk: int | None) -> str:
    """Why a punned successor cannot be evicted, '' if it can: among the pages and leads
    ``JumpPath._evict_punned`` tries, asked as it asks, one whose page and whose target
    are free (the other landings and trampolines of the process left out: they are not
    placed yet)."""
    eviction: object = arch.jumps  # as object: see evictable
    assert isinstance(eviction, Eviction), "only a pun can evict"
    first = eviction.relocated(successor, successor.reach[0])
    if first is None:
        return NOT_RELOCATABLE
    refused = refusals(arch, vmas, brk)
    for page in window_pages(successor.reach):
        if not refused_until(refused, page, page + PAGE) and \
                next(punned_leads(eviction, site, successor, refused, page, len(first)), None) is not None:
            return ""
    return NO_ROOM_FOR_LEAD


NOT_RELOCATABLE = "its instruction cannot run where its jump may lead"
NO_ROOM_FOR_LEAD = "no free room for both its target and where its jump may lead"


def punned_leads(eviction: Eviction, site: SiteJump, successor: SiteJump, refused: Sequence[tuple[int, int]],
                 page: int, size: int) -> Iterator[tuple[int, SiteJump]]:
    """Where in ``page`` a punned ``successor``'s trampoline (``size`` bytes) may go, with the
    site's jump each lead makes, one lead a page of targets apart (the site's pun shares
    the lead's bytes: 256 bytes of target a byte of lead), leaving out the leads whose
    target is ``refused`` (a room of it skipped at once)."""
    low, high = successor.reach
    lead, end = max(page, low), min(page + PAGE, high)
    while lead + size <= end:
        chosen = eviction.led_by(site, successor, lead)
        target = chosen.target
        assert target is not None
        past = refused_until(refused, target, target + LANDING_SIZE)
        if past:
            lead += max(1, -(-(past - target) // 256))
            continue
        yield lead, chosen
        lead += PAGE // 256


def window_pages(reach: tuple[int, int]) -> range:
    """The pages of a punned successor's window (``reach``) to try for its trampoline:
    all of a small one, ``EVICT_PAGES`` spread over a large one."""
    first, last = reach[0] & -PAGE, (reach[1] - 1) & -PAGE
    return range(first, last + PAGE, max(PAGE, (last - first) // EVICT_PAGES & -PAGE))


def _refused(successor: SiteJump | None, why: str) -> SitePlan:
    """A pun whose own target is refused (``why``): its ``successor`` evicted where it can
    be (uemu then chooses the target: free room within 2 GiB is all it needs), else the
    trap."""
    if successor is None:
        return SitePlan("trap", why)
    return SitePlan("evict", f"{why}; {successor.why}")


_MMAP_MIN_ADDR: int | None = None


def _mmap_min_addr() -> int:
    global _MMAP_MIN_ADDR
    if _MMAP_MIN_ADDR is None:
        try:
            with open("/proc/sys/vm/mmap_min_addr") as stream:
                _MMAP_MIN_ADDR = max(int(stream.read()), PAGE)
        except (OSError, ValueError):
            _MMAP_MIN_ADDR = 65536
    return _MMAP_MIN_ADDR
