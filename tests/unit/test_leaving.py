"""Letting go of an mm, on a fake memory: restored when uemu leaves (every byte and
counter back; what fails is said, not raised), forgotten without a write when its
process leaves it; nothing changed when no task is left to park."""

from __future__ import annotations

import pytest
from fakes import SITE, FakeMemory, armed, counter_value, memory_with

from uemu.arch import by_name
from uemu.net import Net
from uemu.runtime import layout
from uemu.tasks import Task, Tracees
from uemu.tracer import Tracer
from uemu.uprobes import Mm, Uprobes


@pytest.fixture
def warnings() -> list[str]:
    return []


@pytest.fixture
def core(warnings: list[str]) -> Uprobes:
    return Uprobes(warnings.append)


def _tracees(core: Uprobes) -> Tracees:
    return Tracees(core, follow_forks=False, needs_tracer=lambda: False, warn=core.warn)


def _no_thread(mm: Mm) -> Task:
    raise AssertionError("an mm without XOL area or net needs no injected call")


def test_leaving_puts_back_every_byte_and_counter(core: Uprobes) -> None:
    memory = memory_with()
    mm, _ = armed(core, memory)
    assert memory.read(SITE, 1) == b"\xcc" and counter_value(memory) == 1
    _tracees(core).restore(mm, _no_thread)
    assert memory.read(SITE, 1) == b"\x90" and counter_value(memory) == 0
    assert not mm.installed and not mm.raised and not mm.delayed


def test_a_restore_that_fails_is_said_and_does_not_stop_the_leaving(core: Uprobes, warnings: list[str]) -> None:
    memory = memory_with()
    mm, _ = armed(core, memory)
    memory.broken.add(SITE)
    _tracees(core).restore(mm, _no_thread)
    assert warnings == [f"process {mm.pid}: could not restore everything: [Errno 5] cannot write {SITE:#x}"]


def test_a_process_leaving_its_mm_forgets_it_without_writing(core: Uprobes) -> None:
    memory = memory_with()
    mm, _ = armed(core, memory)
    tracees = _tracees(core)
    tracees.mms[mm.pid] = mm
    written = list(memory.writes)
    tracees.leave_mm(mm, mm.pid)
    assert mm.pid not in tracees.mms
    assert not mm.installed and not mm.raised
    assert memory.writes == written and memory.read(SITE, 1) == b"\xcc", "the image is gone: nothing restored"


def test_an_mm_another_process_still_shares_is_kept(core: Uprobes) -> None:
    """vfork: the child leaves (exec, exit) the mm its parent still runs in."""
    mm, _ = armed(core, memory_with())
    tracees = _tracees(core)
    child = mm.pid + 1
    tracees.mms.update({mm.pid: mm, child: mm})
    tracees.tasks[mm.pid] = Task(mm.pid, mm.pid, mm)
    tracees.leave_mm(mm, child)
    assert child not in tracees.mms and tracees.mms[mm.pid] is mm
    assert mm.installed and mm.raised


def test_with_no_task_left_nothing_is_done_while_parked(core: Uprobes) -> None:
    tracer = Tracer(_tracees(core), lambda mm: False)
    done: list[bool] = []
    tracer.while_parked(lambda: done.append(True))
    assert done == [] and not tracer.stopping



AREA = 0xF7000000


@pytest.mark.parametrize("arch_name", ["x86_64", "i386", "aarch64", "riscv64"])
def test_leaving_bypasses_the_areas_stub_only_where_it_could_not_bring_a_thread_back(arch_name: str) -> None:
    """The net goes: the action is read through the area's stub; only the call that puts
    the program's action back (after it the stub's trap would reach the program) and the
    munmap of the area (after it the stub is gone) bypass it."""
    memory = FakeMemory()
    memory.map(AREA, bytes(layout.AREA_SIZE))
    net = Net(by_name(arch_name), AREA, memory)
    calls: list[tuple[str, str]] = []

    def caller(through: str):
        def call(name: str, *args: int) -> int:
            calls.append((through, name))
            if name == "rt_sigaction" and args[2]:  # the kernel hands the net's own action back
                memory.write(args[2], net.our_action(b""))
            return 0
        return call

    net.uninstall(caller("stub"), caller("bypass"))
    assert calls == [("stub", "rt_sigaction"), ("bypass", "rt_sigaction"), ("bypass", "munmap")]
