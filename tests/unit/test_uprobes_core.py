"""The core's bookkeeping as the kernel's kernel/events/uprobes.c keeps it: breakpoints,
reference counters and delayed entries, on a fake memory."""

from __future__ import annotations

import struct

import pytest
from fakes import DATA, SEMAPHORE_OFFSET, SITE_OFFSET, TEXT, FakeMemory, new_mm, uprobe

from uemu.uprobes import Mm, Uprobe, Uprobes

SITE = TEXT.offset_to_vaddr(SITE_OFFSET)
SEMAPHORE = DATA.offset_to_vaddr(SEMAPHORE_OFFSET)


@pytest.fixture
def warnings() -> list[str]:
    return []


@pytest.fixture
def core(warnings: list[str]) -> Uprobes:
    registry = Uprobes(warnings.append)
    return registry


def _register(core: Uprobes, probe) -> None:
    core.by_site[(*probe.file_id, probe.offset)] = probe
    core.by_file.setdefault(probe.file_id, []).append(probe)


def _armed(core: Uprobes, memory: FakeMemory) -> tuple[Mm, Uprobe]:
    """One uprobe registered, then its text and data mapped (core.mmap, as uprobe_mmap())."""
    mm = new_mm(memory, [TEXT, DATA])
    probe = uprobe()
    _register(core, probe)
    core.mmap(mm, [TEXT, DATA])
    return mm, probe


def _memory(text: bool = True, data: bool = True, semaphore: int = 0) -> FakeMemory:
    memory = FakeMemory()
    if text:
        memory.map(TEXT.start, b"\x90" * 0x1000)
    if data:
        memory.map(DATA.start, b"\0" * 0x1000)
        memory.write(SEMAPHORE, struct.pack("<h", semaphore))
        memory.writes.clear()
    return memory


def _semaphore(memory: FakeMemory) -> int:
    return struct.unpack("<h", memory.read(SEMAPHORE, 2))[0]


def test_breakpoint_raises_the_counter_and_removal_lowers_it(core):
    memory = _memory()
    mm, probe = _armed(core, memory)
    assert memory.read(SITE, 1) == b"\xcc" and mm.installed == {SITE: probe}
    assert _semaphore(memory) == 1
    core.remove_all(mm)
    assert memory.read(SITE, 1) == b"\x90" and _semaphore(memory) == 0 and not mm.installed


def test_delayed_entry_is_applied_once_when_the_counter_vma_appears(core):
    """Kernel: text mapped before data: delayed_uprobe_add, then delayed_ref_ctr_inc at the
    data's uprobe_mmap, which deletes the entry."""
    memory = _memory()
    mm = new_mm(memory, [TEXT])
    probe = uprobe()
    _register(core, probe)
    core.mmap(mm, [TEXT])
    assert mm.delayed == {probe} and _semaphore(memory) == 0
    mm.vmas.append(DATA)
    core.mmap(mm, [DATA])
    assert mm.delayed == set() and _semaphore(memory) == 1
    core.mmap(mm, [DATA])  # the same data mapped again (MAP_FIXED): no second increment
    assert _semaphore(memory) == 1


def test_delayed_entry_is_dropped_when_the_breakpoint_goes_first(core):
    memory = _memory()
    mm = new_mm(memory, [TEXT])
    probe = uprobe()
    _register(core, probe)
    core.mmap(mm, [TEXT])
    core.remove_uprobe(mm, probe)
    assert mm.delayed == set() and memory.read(SITE, 1) == b"\x90"
    mm.vmas.append(DATA)
    core.mmap(mm, [DATA])
    assert _semaphore(memory) == 0


def test_a_failed_delayed_increment_deletes_the_entry_all_the_same(core, warnings):
    memory = _memory()
    memory.broken.add(SEMAPHORE)
    mm = new_mm(memory, [TEXT])
    probe = uprobe()
    _register(core, probe)
    core.mmap(mm, [TEXT])
    mm.vmas.append(DATA)
    core.mmap(mm, [DATA])
    assert mm.delayed == set()
    assert any("ref_ctr increment failed" in w for w in warnings)
    memory.broken.clear()
    core.mmap(mm, [DATA])
    assert _semaphore(memory) == 0


def test_no_breakpoint_where_the_counter_cannot_be_raised(core):
    """Kernel: uprobe_write_opcode() writes no opcode when update_ref_ctr() fails."""
    memory = _memory()
    memory.broken.add(SEMAPHORE)
    mm, _ = _armed(core, memory)
    assert memory.read(SITE, 1) == b"\x90" and not mm.installed


def test_the_counter_never_goes_below_zero(core, warnings):
    memory = _memory()
    mm = new_mm(memory, [TEXT, DATA])
    probe = uprobe()
    assert core.update_ref_ctr(mm, probe, -1) is False
    assert _semaphore(memory) == 0
    assert warnings == [f"ref_ctr going negative. vaddr: {SEMAPHORE:#x}, curr val: 0, delta: -1"]


def test_the_counter_is_a_signed_16_bit_value_and_only_those_bytes_change(core):
    memory = _memory(semaphore=0x7FFF)
    memory.write(SEMAPHORE + 2, b"\xab\xcd")
    mm = new_mm(memory, [TEXT, DATA])
    assert core.change_counter(mm, uprobe(), SEMAPHORE, +1)
    assert _semaphore(memory) == -0x8000
    assert memory.read(SEMAPHORE + 2, 2) == b"\xab\xcd"


def test_a_site_that_differs_from_the_file_is_left_alone(core, warnings):
    memory = _memory()
    memory.write(SITE, b"\xcc")  # another tracer's breakpoint
    mm, _ = _armed(core, memory)
    assert not mm.installed and _semaphore(memory) == 0
    assert "another tracer's breakpoint" in warnings[0]


def test_an_unreadable_site_is_said_and_left_alone(core, warnings):
    memory = _memory(text=False)
    mm, _ = _armed(core, memory)
    assert not mm.installed and _semaphore(memory) == 0
    assert "cannot read" in warnings[0]


def test_munmap_forgets_breakpoints_without_writing(core):
    memory = _memory()
    mm, _ = _armed(core, memory)
    memory.writes.clear()
    core.munmap(mm, TEXT.start, TEXT.end)
    assert not mm.installed and memory.writes == [] and _semaphore(memory) == 1


def test_mremap_moves_the_bookkeeping_with_the_pages(core):
    memory = _memory()
    mm, probe = _armed(core, memory)
    core.mremap(mm, TEXT.start, 0x1000, 0x50000)
    assert mm.installed == {SITE - TEXT.start + 0x50000: probe}


def test_a_breakpoint_overwritten_by_someone_else_is_not_written_back(core, warnings):
    memory = _memory()
    mm, _ = _armed(core, memory)
    memory.write(SITE, b"\x55")
    core.remove_all(mm)
    assert memory.read(SITE, 1) == b"\x55" and "overwritten by someone else" in warnings[0]
    assert _semaphore(memory) == 1, "kernel: the counter is not lowered for a breakpoint not removed"


def test_dup_mmap_copies_breakpoints_not_delayed_entries(core):
    memory = _memory()
    mm = new_mm(memory, [TEXT])
    probe = uprobe()
    _register(core, probe)
    core.mmap(mm, [TEXT])
    assert mm.delayed
    child = core.dup_mmap(mm, FakeMemory(101))
    assert child.pid == 101 and child.installed == mm.installed and child.installed is not mm.installed
    assert child.delayed == set() and child.vmas == mm.vmas


def test_clear_state_forgets_without_writing(core):
    memory = _memory()
    mm = new_mm(memory, [TEXT])
    _register(core, uprobe())
    core.mmap(mm, [TEXT])
    memory.writes.clear()
    core.clear_state(mm)
    assert not mm.installed and not mm.delayed and memory.writes == []
