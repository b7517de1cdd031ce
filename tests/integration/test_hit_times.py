"""A hit's time against the program's own clock (samples/clock): each thread reads
CLOCK_MONOTONIC right before and right after every probe, so the time uemu gives a hit
must lie between the two, on the trap path (uemu's clock at the stop) and on the jump
path (the runtime's, through the CPU's counter where the kernel keeps time by it).  And
a thread that turned its counter off (x86: prctl PR_SET_TSC), under which the vDSO's
clock faults too, is traced without a fault of uemu's reaching it, whether the runtime
reads the counter for a record's time or calls the vDSO's clock."""

from __future__ import annotations

import re

import pytest
from samplelog import Line, Run, run_traced

from uemu import arch as arches
from uemu import jumps as jump_path
from uemu.jumpfacts import counter_is_the_clock, counter_of

THREADS, BURSTS, BURST = 4, 24, 16


def bounds(lines: list[Line]) -> dict[tuple[int, int], tuple[int, int]]:
    """(thread, hit number) -> the program's clock right before and right after it."""
    return {(line.tid, int(line.values[0])): (int(line.values[1]), int(line.values[2]))
            for line in lines if line.kind == "bounds"}


def skip_unless_jumped(run: Run) -> None:
    if run.session.jumps is None or not run.session.jumps.read:
        pytest.skip("clock:tick kept the trap in this process (no jump fits, or its pun target was taken)")


def hit_times(run: Run) -> list[tuple[int, int, int]]:
    """(thread, hit number, time) of each hit uemu reported."""
    return [(event.tid, int(event.args[1]), event.ts_ns) for event in run.events if event.args]


COUNTER_ERROR_NS = 1_000
"""What a time read through the CPU's counter may be off the vDSO's (runtime.c, now_ns):
tens of ns for a pair, up to 0.5 us for NTP slewing the clock over an interval."""


def outside(times: list[tuple[int, int, int]], known: dict[tuple[int, int], tuple[int, int]],
            error: int = 0) -> list[str]:
    """The hits (thread, hit number, time) whose time is not within the program's bounds
    (give or take ``error``), or not after the thread's hit before."""
    wrong, last = [], {}
    for tid, hit, ts in sorted(times, key=lambda t: t[:2]):
        before, after = known[(tid, hit)]
        if not before - error <= ts <= after + error:
            wrong.append(f"thread {tid} hit {hit}: {ts} not in [{before}, {after}]")
        if ts <= last.get(tid, 0):
            wrong.append(f"thread {tid} hit {hit}: {ts} not after the hit before ({last[tid]})")
        last[tid] = ts
    return wrong


@pytest.mark.parametrize("jumps", [True, False], ids=["jump-path", "trap-path"])
def test_each_hits_time_lies_between_the_programs_own_reads_of_the_clock(jump_build, jumps: bool) -> None:
    """Hits back to back and after pauses of microseconds to 30 ms, in four threads; each
    thread's times in the order of its hits.  Exact on the trap path and through the
    vDSO; through the counter, within its documented error."""
    run = run_traced([jump_build.directory / "clock", str(THREADS), str(BURSTS)], ("clock:tick",), jumps=jumps)
    assert run.exit_status == 0
    if jumps:
        skip_unless_jumped(run)
    known = bounds(run.lines)
    assert len(known) == THREADS * BURSTS * BURST
    times = hit_times(run)
    assert len(times) == len(known)
    counter = jumps and counter_is_the_clock(arches.by_name(jump_build.target))
    assert outside(times, known, COUNTER_ERROR_NS if counter else 0) == []


@pytest.mark.parametrize("clock", ["counter", "vdso"])
def test_a_thread_that_turned_its_counter_off_is_traced_with_the_system_calls_clock(
        jump_build, clock: str, monkeypatch, capfd) -> None:
    """x86: every thread of samples/clock turns rdtsc off first (prctl PR_SET_TSC), under
    which the vDSO's clock faults too.  Where the kernel keeps time by the TSC the runtime
    reads it for a record's time ("counter"); elsewhere (kvm-clock, say: made so here,
    "vdso") it calls the vDSO's clock, and reads the counter before each call, because a
    fault inside the vDSO could not be taken back.  Either way the runtime's own read
    faults first; uemu takes that fault back, says so, and the hits go on with the
    clock_gettime system call.  Before, the program died of SIGSEGV at its first hit."""
    arch = arches.by_name(jump_build.target)
    if counter_of(arch) is None:
        pytest.skip(f"{jump_build.target} has no counter a thread can turn off")
    if clock == "counter" and not counter_is_the_clock(arch):
        pytest.skip("the kernel does not keep time by the TSC here: the runtime never reads it for a time")
    if clock == "vdso":
        monkeypatch.setattr(jump_path, "counter_is_the_clock", lambda arch: False)
    run = run_traced([jump_build.directory / "clock", "2", "8", "tsc-off"], ("clock:tick",), jumps=True)
    assert run.exit_status == 0
    skip_unless_jumped(run)
    assert re.search(r"thread \d+ cannot read the CPU's counter", capfd.readouterr().err)
    known = bounds(run.lines)
    times = hit_times(run)
    assert len(known) == 2 * 8 * BURST and len(times) == len(known)
    assert outside(times, known) == []  # the system call's clock, exact
