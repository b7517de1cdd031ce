"""The core's bookkeeping as the kernel's kernel/events/uprobes.c keeps it: breakpoints,
reference counters and delayed entries, on a fake memory."""

from __future__ import annotations

import pytest
from fakes import DATA, SEMAPHORE, SITE, TEXT, FakeMemory, armed, counter_value, memory_with, new_mm, register, uprobe

from uemu.uprobes import Uprobes


@pytest.fixture
def warnings() -> list[str]:
    return []


@pytest.fixture
def core(warnings: list[str]) -> Uprobes:
    registry = Uprobes(warnings.append)
    return registry



def test_breakpoint_raises_the_counter_and_removal_lowers_it(core):
    memory = memory_with()
    mm, probe = armed(core, memory)
    assert memory.read(SITE, 1) == b"\xcc" and mm.installed == {SITE: probe}
    assert counter_value(memory) == 1
    core.remove_all(mm)
    assert memory.read(SITE, 1) == b"\x90" and counter_value(memory) == 0 and not mm.installed


def test_delayed_entry_is_applied_once_when_the_counter_vma_appears(core):
    """Kernel: text mapped before data: delayed_uprobe_add, then delayed_ref_ctr_inc at the
    data's uprobe_mmap, which deletes the entry."""
    memory = memory_with()
    mm = new_mm(memory, [TEXT])
    probe = uprobe()
    register(core, probe)
    core.mmap(mm, [TEXT])
    assert mm.delayed == {probe} and counter_value(memory) == 0
    mm.vmas.append(DATA)
    core.mmap(mm, [DATA])
    assert mm.delayed == set() and counter_value(memory) == 1
    core.mmap(mm, [DATA])  # the same data mapped again (MAP_FIXED): no second increment
    assert counter_value(memory) == 1


def test_delayed_entry_is_dropped_when_the_breakpoint_goes_first(core):
    memory = memory_with()
    mm = new_mm(memory, [TEXT])
    probe = uprobe()
    register(core, probe)
    core.mmap(mm, [TEXT])
    core.remove_uprobe(mm, probe)
    assert mm.delayed == set() and memory.read(SITE, 1) == b"\x90"
    mm.vmas.append(DATA)
    core.mmap(mm, [DATA])
    assert counter_value(memory) == 0


def test_a_failed_delayed_increment_deletes_the_entry_all_the_same(core, warnings):
    memory = memory_with()
    memory.broken.add(SEMAPHORE)
    mm = new_mm(memory, [TEXT])
    probe = uprobe()
    register(core, probe)
    core.mmap(mm, [TEXT])
    mm.vmas.append(DATA)
    core.mmap(mm, [DATA])
    assert mm.delayed == set()
    assert any("ref_ctr increment failed" in w for w in warnings)
    memory.broken.clear()
    core.mmap(mm, [DATA])
    assert counter_value(memory) == 0


def test_no_breakpoint_where_the_counter_cannot_be_raised(core):
    """Kernel: uprobe_write_opcode() writes no opcode when update_ref_ctr() fails."""
    memory = memory_with()
    memory.broken.add(SEMAPHORE)
    mm, _ = armed(core, memory)
    assert memory.read(SITE, 1) == b"\x90" and not mm.installed


def test_the_counter_never_goes_below_zero(core, warnings):
    memory = memory_with()
    mm = new_mm(memory, [TEXT, DATA])
    probe = uprobe()
    assert core.update_ref_ctr(mm, probe, -1) is False
    assert counter_value(memory) == 0
    assert warnings == [f"ref_ctr going negative. vaddr: {SEMAPHORE:#x}, curr val: 0, delta: -1"]


def test_the_counter_is_a_signed_16_bit_value_and_only_those_bytes_change(core):
    memory = memory_with(semaphore=0x7FFF)
    memory.write(SEMAPHORE + 2, b"\xab\xcd")
    mm = new_mm(memory, [TEXT, DATA])
    assert core.change_counter(mm, uprobe(), SEMAPHORE, +1)
    assert counter_value(memory) == -0x8000
    assert memory.read(SEMAPHORE + 2, 2) == b"\xab\xcd"


def test_a_site_that_differs_from_the_file_is_left_alone(core, warnings):
    memory = memory_with()
    memory.write(SITE, b"\xcc")  # another tracer's breakpoint
    mm, _ = armed(core, memory)
    assert not mm.installed and counter_value(memory) == 0
    assert "another tracer's breakpoint" in warnings[0]


def test_an_unreadable_site_is_said_and_left_alone(core, warnings):
    memory = memory_with(text=False)
    mm, _ = armed(core, memory)
    assert not mm.installed and counter_value(memory) == 0
    assert "cannot read" in warnings[0]


def test_munmap_forgets_breakpoints_without_writing(core):
    memory = memory_with()
    mm, _ = armed(core, memory)
    memory.writes.clear()
    core.munmap(mm, TEXT.start, TEXT.end)
    assert not mm.installed and memory.writes == [] and counter_value(memory) == 1


def test_mremap_moves_the_bookkeeping_with_the_pages(core):
    memory = memory_with()
    mm, probe = armed(core, memory)
    core.mremap(mm, TEXT.start, 0x1000, 0x50000)
    assert mm.installed == {SITE - TEXT.start + 0x50000: probe}


def test_a_breakpoint_overwritten_by_someone_else_is_not_written_back(core, warnings):
    memory = memory_with()
    mm, _ = armed(core, memory)
    memory.write(SITE, b"\x55")
    core.remove_all(mm)
    assert memory.read(SITE, 1) == b"\x55" and "overwritten by someone else" in warnings[0]
    assert counter_value(memory) == 1, "kernel: the counter is not lowered for a breakpoint not removed"


def test_dup_mmap_copies_breakpoints_not_delayed_entries(core):
    memory = memory_with()
    mm = new_mm(memory, [TEXT])
    probe = uprobe()
    register(core, probe)
    core.mmap(mm, [TEXT])
    assert mm.delayed
    child = core.dup_mmap(mm, FakeMemory(101))
    assert child.pid == 101 and child.installed == mm.installed and child.installed is not mm.installed
    assert child.delayed == set() and child.vmas == mm.vmas


def test_clear_state_forgets_without_writing(core):
    memory = memory_with()
    mm = new_mm(memory, [TEXT])
    register(core, uprobe())
    core.mmap(mm, [TEXT])
    memory.writes.clear()
    core.clear_state(mm)
    assert not mm.installed and not mm.delayed and memory.writes == []
