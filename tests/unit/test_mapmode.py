"""Which mapping mode a session runs under: the one asked for, else the default of
its first start, chosen once; until then nothing stops at syscalls and no tracer
has to stay."""

from __future__ import annotations

import pytest
from fakes import TEXT, FakeMemory, new_mm

from uemu import errors
from uemu.mapmode import ModeChoice, parse_mode
from uemu.mappings import MappingMode
from uemu.selection import Selection
from uemu.stops import StopKind
from uemu.tasks import Tracees
from uemu.tracer import Tracer
from uemu.uprobes import Uprobes


def _choice(asked: str | None = None) -> tuple[ModeChoice, Tracer]:
    uprobes = Uprobes(print)
    choice = ModeChoice(asked, uprobes, Selection((), uprobes, print), print)
    tracer = Tracer(Tracees(uprobes, False, choice.needs_tracer, print), choice.stops_every_syscall)
    return choice, tracer


def test_a_mode_is_named_by_its_value() -> None:
    assert [parse_mode(mode.value) for mode in MappingMode] == list(MappingMode)
    assert parse_mode(MappingMode.EXEC) is MappingMode.EXEC


def test_an_unknown_name_is_bad_input_naming_the_choices() -> None:
    with pytest.raises(errors.BadInput, match="'ptrace'; one of seccomp, rendezvous, syscall, exec"):
        ModeChoice("ptrace", Uprobes(print), Selection((), Uprobes(print), print), print)


def test_nothing_is_decided_before_the_first_start() -> None:
    choice, tracer = _choice()
    assert choice.arming is None
    assert not choice.needs_tracer()
    assert not choice.stops_every_syscall(new_mm(FakeMemory(), [TEXT]))
    assert StopKind.SYSCALL not in tracer.handlers and StopKind.SECCOMP not in tracer.handlers


@pytest.mark.parametrize(("asked", "default", "chosen"), [
    (None, MappingMode.SECCOMP, MappingMode.SECCOMP),  # spawn's default
    (None, MappingMode.RENDEZVOUS, MappingMode.RENDEZVOUS),  # attach's default
    ("exec", MappingMode.SECCOMP, MappingMode.EXEC),
    ("syscall", MappingMode.RENDEZVOUS, MappingMode.SYSCALL),
])
def test_the_mode_asked_for_wins_over_the_default(asked: str | None, default: MappingMode,
                                                  chosen: MappingMode) -> None:
    choice, tracer = _choice(asked)
    assert choice.choose(default, tracer).tracker.mode is chosen
    assert {StopKind.SYSCALL, StopKind.SECCOMP} <= tracer.handlers.keys()


def test_the_mode_is_chosen_once() -> None:
    """A session that spawns and then attaches keeps the spawn's mode."""
    choice, tracer = _choice()
    first = choice.choose(MappingMode.SECCOMP, tracer)
    assert choice.choose(MappingMode.RENDEZVOUS, tracer) is first
    assert first.tracker.mode is MappingMode.SECCOMP


def test_the_chosen_modes_answers_reach_the_tracer() -> None:
    mm = new_mm(FakeMemory(), [TEXT])
    seccomp, tracer = _choice()
    seccomp.choose(MappingMode.SECCOMP, tracer)
    assert seccomp.needs_tracer() and tracer.tracees.needs_tracer()
    assert not seccomp.stops_every_syscall(mm)
    every, tracer = _choice("syscall")
    every.choose(MappingMode.RENDEZVOUS, tracer)
    assert every.stops_every_syscall(mm) and not every.needs_tracer()
