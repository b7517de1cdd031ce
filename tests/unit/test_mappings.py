"""Mapping modes' decisions and the refresh after a mapping syscall, on fake maps and memory."""

from __future__ import annotations

import pytest
from fakes import DATA, SITE_OFFSET, TEXT, X86_64, FakeMemory, new_mm, uprobe, vma

from uemu import mappings
from uemu.arch import by_name
from uemu.arch.base import MappingSyscall
from uemu.mappings import MappingCall, MappingMode
from uemu.uprobes import Uprobes


def test_each_mode_decides() -> None:
    mm = new_mm(FakeMemory(), [TEXT])
    seccomp, rendezvous, syscall, exec_only = (mappings.tracker(mode) for mode in MappingMode)
    assert seccomp.needs_tracer and not seccomp.attachable and seccomp.spawn_filter()
    assert not seccomp.stops_every_syscall(mm)
    assert syscall.stops_every_syscall(mm) and syscall.spawn_filter() is None and syscall.attachable
    assert not exec_only.stops_every_syscall(mm) and not exec_only.needs_tracer
    assert rendezvous.stops_every_syscall(mm), "until ld.so's r_brk is armed, every syscall stops"
    mm.rendezvous_armed = True
    assert not rendezvous.stops_every_syscall(mm)


def test_rendezvous_without_a_dynamic_linker_watches_nothing() -> None:
    mm = new_mm(FakeMemory(), [TEXT])
    tracker = mappings.tracker(MappingMode.RENDEZVOUS)
    tracker.armed(mm, Uprobes(print))
    assert mm.rendezvous_armed


def test_old_mmap_arguments_are_read_from_memory() -> None:
    """i386 old_mmap passes one pointer to its six arguments."""
    i386 = by_name("i386")
    memory = FakeMemory()
    memory.map(0x1000, b"".join(n.to_bytes(4, "little") for n in (0x5000, 0x2000, 5, 2, 3, 0)))
    assert i386.mapping_syscall_arguments(MappingSyscall.OLD_MMAP, (0x1000,), memory.read) == (
        0x5000, 0x2000, 5, 2, 3, 0)
    assert X86_64.mapping_syscall_arguments(MappingSyscall.MMAP, (1, 2), memory.read) == (1, 2)


@pytest.fixture
def armed(monkeypatch):
    """An mm with one breakpoint, whose next /proc read returns ``maps_after``."""
    memory = FakeMemory()
    memory.map(TEXT.start, b"\x90" * 0x1000)
    memory.map(DATA.start, b"\0" * 0x1000)
    mm = new_mm(memory, [TEXT, DATA])
    core = Uprobes(print)
    probe = uprobe()
    core.by_site[(*probe.file_id, probe.offset)] = probe
    core.by_file[probe.file_id] = [probe]
    core.mmap(mm, [TEXT, DATA])
    maps_after: list = []
    monkeypatch.setattr(mappings, "read_maps", lambda pid: list(maps_after))
    monkeypatch.setattr(mappings, "update_objects", lambda mm, vmas, warn: None)
    return mm, core, maps_after


SITE = TEXT.offset_to_vaddr(SITE_OFFSET)


def test_munmap_drops_breakpoints_in_its_range(armed) -> None:
    mm, core, maps_after = armed
    maps_after += [DATA]
    new = mappings.refresh(mm, MappingCall(MappingSyscall.MUNMAP, (TEXT.start, 0x1000)), 0, core, print)
    assert new == [] and not mm.installed and mm.vmas == [DATA]


def test_mprotect_keeps_breakpoints_and_reports_split_vmas_as_new(armed) -> None:
    mm, core, maps_after = armed
    halves = [vma(TEXT.start, 0x800, "r-xp", 0x1000), vma(TEXT.start + 0x800, 0x800, "r--p", 0x1800)]
    maps_after += [*halves, DATA]
    new = mappings.refresh(mm, MappingCall(MappingSyscall.MPROTECT, (TEXT.start + 0x800, 0x800, 1)), 0, core, print)
    assert new == halves and SITE in mm.installed


def test_mmap_over_a_mapping_of_the_same_shape_is_new(armed) -> None:
    """MAP_FIXED over the text: same start, end, perms, offset and file, new pages."""
    mm, core, maps_after = armed
    maps_after += [TEXT, DATA]
    call = MappingCall(MappingSyscall.MMAP, (TEXT.start, 0x1000, 5, 0x12, 3, 0x1000))
    new = mappings.refresh(mm, call, TEXT.start, core, print)
    assert new == [TEXT] and not mm.installed, "the old breakpoint went with the old pages"


def test_a_failed_mmap_changes_nothing(armed) -> None:
    mm, core, maps_after = armed
    maps_after += [TEXT, DATA]
    new = mappings.refresh(mm, MappingCall(MappingSyscall.MMAP, (TEXT.start, 0x1000, 5, 0x12, 3, 0)), -12, core, print)
    assert new == [] and SITE in mm.installed


def test_mremap_moves_breakpoints(armed) -> None:
    mm, core, maps_after = armed
    moved = vma(0x70000, 0x1000, "r-xp", 0x1000)
    maps_after += [moved, DATA]
    new = mappings.refresh(mm, MappingCall(MappingSyscall.MREMAP, (TEXT.start, 0x1000, 0x1000, 3, 0x70000)),
                           0x70000, core, print)
    assert new == [moved] and list(mm.installed) == [SITE - TEXT.start + 0x70000]


def test_a_rendezvous_tells_removed_breakpoints_from_memory(armed) -> None:
    """No syscall at hand: a breakpoint stays ours only where its file offset is still
    mapped and still holds our trap."""
    mm, core, maps_after = armed
    maps_after += [TEXT, DATA]
    assert mappings.refresh(mm, None, 0, core, print) == [] and SITE in mm.installed
    mm.memory.write(SITE, b"\x90")  # the page was replaced behind our back
    mappings.refresh(mm, None, 0, core, print)
    assert not mm.installed
