"""The jump path in real processes, through a test's own tracer over its components
(jumptrace.py), before the session wires it in: samples attached at their start sync,
every selected SDT site jumped (punned or a whole jump), the program's own lines as the
oracle of counts and values, kernel uprobes on the same sites as a second one, the
program's text identical after leaving, semaphores exactly as the trap path leaves them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from jumptrace import JumpTrace
from samplelog import Line, counts, expected_hits, per_probe, reported_hits
from tracee import Tracee, differences, file_memory, process_state

from uemu import sdt
from uemu.runtime import has_blob


@pytest.fixture
def build(runnable_build):
    arch = sdt.open_elf(str(runnable_build.directory / "basic")).arch_name
    if not has_blob(arch):
        pytest.skip(f"no in-target runtime for {arch}")
    if os.geteuid() != 0 and not Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip() == "0":
        pytest.skip("ptrace of a non-child needs ptrace_scope 0 or root")
    return runnable_build


def traced_run(program: Path, *args: str, patterns=("*",), **options) -> tuple[JumpTrace, list[Line], list[str]]:
    """Run ``program`` attached at its start sync, until its end sync; leave; let it end."""
    tracee = Tracee([program, *args])
    try:
        tracee.wait_sync("start")
        before = file_memory(tracee.pid, writable=False)
        trace = JumpTrace(tracee.pid, patterns, options)
        try:
            tracee.release()
            trace.pump(lambda: any(line.kind == "sync" and line.word == "end" for line in tracee.lines()))
            trace.pump(lambda: process_state(tracee.pid) in ("S", "t"))  # blocked at the end sync
        finally:
            trace.detach()
            trace.close()
        changed = differences(before, file_memory(tracee.pid, writable=False))
        assert tracee.finish() == 0
        return trace, tracee.lines(), changed
    finally:
        tracee.close()


def test_basic_every_site_jumped_values_as_the_program_says(build) -> None:
    trace, lines, changed = traced_run(build.directory / "basic", "5")
    assert changed == [], "the program's text is as before"
    jumped = trace.jumped_names - {"basic:end"}  # end: after the end sync, past our leaving
    assert len(jumped) >= 4, trace.refused
    expected = [hit for hit in expected_hits(lines) if hit[0] in jumped]
    assert per_probe(reported_hits(trace.events)) == per_probe(expected)
    assert {event.pid for event in trace.events} == {lines[0].pid}
    assert trace.path.lost() == 0
