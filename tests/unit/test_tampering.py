"""Sites and counters of ours that someone else changed, on a fake memory: what
``Watch.find`` tells apart, and what ``Watch.mend`` does about each (said once)."""

from __future__ import annotations

import struct

import pytest
from fakes import SEMAPHORE, SITE, FakeMemory, armed, counter_value, memory_with

from uemu.tampering import Tamper, Watch
from uemu.uprobes import Mm, Uprobes


@pytest.fixture
def warnings() -> list[str]:
    return []


def _watched(warnings: list[str]) -> tuple[Watch, Mm, FakeMemory]:
    core = Uprobes(warnings.append)
    memory = memory_with()
    mm, _ = armed(core, memory)
    return Watch(core, core.warn), mm, memory


def test_nothing_changed_finds_nothing(warnings: list[str]) -> None:
    watch, mm, _ = _watched(warnings)
    assert watch.find(mm) == []


def test_a_site_someone_restored_is_armed_again_and_said_once(warnings: list[str]) -> None:
    watch, mm, memory = _watched(warnings)
    for _ in range(2):
        memory.write(SITE, b"\x90")  # a kernel uprobe leaving the site writes the file's byte back
        assert [t.what for t in watch.find(mm)] == [Tamper.RESTORED]
        watch.mend([mm])
        assert memory.read(SITE, 1) == b"\xcc"
    assert len(warnings) == 1 and "removed behind uemu's back" in warnings[0]


def test_a_site_someone_else_now_holds_is_let_go_with_our_count(warnings: list[str]) -> None:
    watch, mm, memory = _watched(warnings)
    memory.write(SITE, b"\xf4")
    watch.mend([mm])
    assert SITE not in mm.installed and memory.read(SITE, 1) == b"\xf4", "their bytes stay"
    assert counter_value(memory) == 0 and not mm.raised


def test_a_lowered_counter_is_raised_back_to_our_count(warnings: list[str]) -> None:
    watch, mm, memory = _watched(warnings)
    memory.write(SEMAPHORE, struct.pack("<h", 0))  # a kernel uprobe lowered a count it never raised
    assert [(t.what, t.found) for t in watch.find(mm)] == [(Tamper.LOWERED, 0)]
    watch.mend([mm])
    assert counter_value(memory) == 1 and watch.find(mm) == []
