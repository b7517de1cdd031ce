"""The jump path in real processes, through a test's own tracer over its components
(jumptrace.py), before the session wires it in: samples attached at their start sync,
every selected SDT site jumped (punned or a whole jump), the program's own lines as the
oracle of counts and values, kernel uprobes on the same sites as a second one, the
program's text identical after leaving, semaphores exactly as the trap path leaves them."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
from jumptrace import JumpTrace, jump_traced, started_sample
from oracle import KernelUprobes, sdt_sites, tracefs_reason
from samplelog import Line, counts, expected_hits, per_probe, reported_hits, run_untraced
from test_jumps_session import skip_without_jumps
from test_net import SI_TKILL, Orphan, facts, forked_tracer
from tracee import Tracee, differences, file_memory, process_state, wait_until

from uemu import sdt
from uemu.jumps import Jump


def seizable(jump_build):
    """A build whose sites take the jump path, in samples a test's tracer may seize."""
    skip_without_jumps(jump_build)
    if os.geteuid() != 0 and Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip() != "0":
        pytest.skip("ptrace of a non-child needs ptrace_scope 0 or root")
    return jump_build


@pytest.fixture
def build(jump_build):
    return seizable(jump_build)


def traced_run(program: Path, *args: str, patterns=("*",), raw=(),
               **options) -> tuple[JumpTrace, list[Line], list[str]]:
    """Run ``program`` attached at its start sync, until its end sync; leave; let it end."""
    tracee = Tracee([program, *args])
    try:
        tracee.wait_sync("start")
        before = file_memory(tracee.pid, writable=False)
        trace = JumpTrace(tracee.pid, patterns, options, raw=raw)
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


LAYOUT_TRIES = 3
HEAP = "where the heap may grow"  # uemu/jumpplan.py's refusal that depends on the run


def traced_run_jumping(names: set[str], program: Path, *args: str,
                       **options) -> tuple[JumpTrace, list[Line], list[str]]:
    """``traced_run`` until ``names`` all take a jump: a pun target can fall where this
    run's randomised heap may grow (uemu rightly keeps the trap there), so a new process,
    a new layout, up to LAYOUT_TRIES times.  Other refusals (a target outside user
    space) are the same in every run: the test cannot be made here."""
    for _ in range(LAYOUT_TRIES):
        trace, lines, changed = traced_run(program, *args, **options)
        if names <= trace.jumped_names:
            return trace, lines, changed
        if not any(HEAP in reason for reason in trace.refused if any(name in reason for name in names)):
            break
    pytest.skip(f"{sorted(names)} kept the trap: {trace.refused}")


def test_basic_every_site_jumped_values_as_the_program_says(build) -> None:
    trace, lines, changed = traced_run(build.directory / "basic", "5")
    assert changed == [], "the program's text is as before"
    jumped = trace.jumped_names - {"basic:end"}  # end: after the end sync, past our leaving
    # non-PIE: some pun targets are outside user space, and one may fall where this
    # run's (randomised) heap may grow: basic:types is refused in about 1 run in 3
    assert len(jumped) >= 2, trace.refused
    expected = [hit for hit in expected_hits(lines) if hit[0] in jumped]
    assert per_probe(reported_hits(trace.events)) == per_probe(expected)
    assert {event.pid for event in trace.events} == {lines[0].pid}
    assert trace.path.lost() == 0


def test_kernel_uprobes_on_the_same_sites_count_and_fetch_the_same(build) -> None:
    """The second oracle: kernel uprobes on the very sites, in an untraced run."""
    reason = tracefs_reason()
    if reason:
        pytest.skip(reason)
    if build.target != "x86_64":
        pytest.skip("the oracle's fetch-args are written for x86_64")
    program = build.directory / "basic"
    trace, lines, _ = traced_run(program, "5")
    jumped = trace.jumped_names - {"basic:end"}
    with KernelUprobes(sdt_sites(str(program))) as kernel:
        untraced, _ = run_untraced([program, "5"])
        records = kernel.records()
    theirs = [(name, tuple(values), tid) for name, values, tid in records if name in jumped]
    ours = reported_hits(trace.events)
    assert counts(theirs) == counts(ours)
    # each against its own run's truth (pointers differ from run to run)
    for hits, truth in ((theirs, untraced), (ours, lines)):
        want = per_probe([hit for hit in expected_hits(truth) if hit[0] in jumped])
        for key, values in per_probe(hits).items():
            pairs = [list(zip(got, exp, strict=True)) for got, exp in zip(values, want[key], strict=False)]
            assert [[v for v, _ in hit if v is not None] for hit in pairs] == \
                [[w for v, w in hit if v is not None] for hit in pairs], key


def test_threads_created_after_attaching_are_named_by_their_thread_pointer(build) -> None:
    trace, lines, changed = traced_run_jumping({"threads:work"}, build.directory / "threads", "4", "50")
    assert changed == []
    jumped = trace.jumped_names
    expected = [hit for hit in expected_hits(lines) if hit[0] in jumped]
    assert per_probe(reported_hits(trace.events)) == per_probe(expected)
    assert len({e.tid for e in trace.events}) >= 5


def test_strings_are_copied_at_the_hit(build) -> None:
    trace, lines, _ = traced_run_jumping({"basic:string"}, build.directory / "basic", "1",
                                         patterns=("basic:string",), strings=(0,), strsize=64)
    [event] = trace.events
    [text] = [line for line in lines if line.kind == "text"]
    assert event.read_string is not None
    assert event.read_string(event.args[0], 64) == " ".join(text.values).encode()


def test_a_signal_handler_passes_probes_while_its_thread_may_be_inside_a_trampoline(build) -> None:
    """signals: a 100 µs SIGALRM timer interrupts the loop passing signals:loop, and the
    handler passes signals:handler; the program's own int3, raise(SIGTRAP), SIGSTOP and
    SIGCONT pass through as they would untraced."""
    trace, lines, changed = traced_run_jumping({"signals:loop", "signals:handler"}, build.directory / "signals", "400")
    assert changed == []
    oracle, status = run_untraced([build.directory / "signals", "400"])
    assert status == 0
    jumped = trace.jumped_names
    expected = [hit for hit in expected_hits(lines) if hit[0] in jumped]
    assert per_probe(reported_hits(trace.events)) == per_probe(expected)
    assert [(line.word, line.values) for line in lines if line.kind == "signal"] == \
        [(line.word, line.values) for line in oracle if line.kind == "signal"]


def test_the_red_zone_below_rsp_survives_a_hit(build) -> None:
    trace, lines, changed = traced_run_jumping({"redzone:leaf"}, build.directory / "redzone", "3000")
    assert changed == []
    assert len(trace.events) == 3000
    [result] = [line for line in lines if line.kind == "result"]
    assert int(result.values[0]) == 78 * 3000 * 2999 // 2
    assert [e.args for e in trace.events] == [[i] for i in range(3000)]


def _trace_and_wait(pid: int, report: int, leaving: bool) -> None:
    """The tracer (a forked child): arm the orphan's jump sites, (``leaving``) turn
    recording off as uemu's leaving does first, say which sites jumped, then wait to be
    killed, leaving everything in place."""
    trace = JumpTrace(pid, ("orphan:*",))
    if leaving:
        trace.path.leave(trace.mm)
    os.write(report, (" ".join(sorted(trace.jumped_names)) + "\n").encode())
    while True:
        signal.pause()


@pytest.mark.parametrize("leaving", [False, True], ids=["tracing", "leaving"])
def test_a_program_outlives_its_tracer_with_jump_sites_armed(build, leaving: bool) -> None:
    """uemu SIGKILLed with every site jumped: no site ever traps, so the net's restore
    runs from a hit: the ring fills with nobody reading, a hit waiting for room asks
    TracerPid (0), restores everything (the jumps, the semaphore, the program's SIGTRAP
    action) and the program goes on as if never traced.  So too when uemu was killed
    leaving, its recording already off: a hit records nothing, but asks all the same."""
    program = build.directory / "orphan"
    orphan = Orphan(program, "handler", "2", "400000")
    try:
        before = file_memory(orphan.pid, writable=False)
        with forked_tracer(lambda report: _trace_and_wait(orphan.pid, report, leaving), timeout=30) as (_, line):
            jumped = line().split()
        if "orphan:tick" not in jumped:
            pytest.skip("orphan:tick keeps the trap in this process")
        orphan.go()
        wait_until(lambda: orphan.sync("done") or orphan.process.poll() is not None, what="orphan to end")
        assert orphan.process.poll() is None, orphan.process.stderr.read()
        assert differences(before, file_memory(orphan.pid, writable=False)) == []
        got = facts(orphan.lines())
        assert got["sema"] == [("1",), ("0",)], "raised by the tracer, lowered by the net from a hit"
        assert got["trap"] == [("1", str(SI_TKILL)), ("2", str(SI_TKILL))]
        assert got["action"][0][0] == "own"
        assert orphan.finish() == 0
    finally:
        orphan.close()


def spaced_passes(offsets: list[int], room: int = 5) -> list[list[int]]:
    """Sites in passes where no two lie within ``room`` bytes (a pun depends on the four
    bytes after its site, which must hold no other site of ours)."""
    left, passes = sorted(offsets), []
    while left:
        chosen, rest, last = [], [], None
        for offset in left:
            if last is None or offset >= last + room:
                chosen.append(offset)
                last = offset
            else:
                rest.append(offset)
        passes.append(chosen)
        left = rest
    return passes


def test_jumps_over_the_rawprobes_instructions(build) -> None:
    """Raw sites on the instructions of samples/rawprobes's functions: where a jump
    fits, the instruction runs displaced in the trampoline (the backend's one-stop slot
    code: ALU, moves, rip-relative loads and stores) or is a nop.  The program's lines
    stay as untraced, and every jumped site's hits equal kernel uprobes' on it."""
    from test_xol import facts as line_facts
    from test_xol import probed, raw_kernel_sites, rounds_argv

    reason = tracefs_reason()
    if reason:
        pytest.skip(reason)
    program = build.directory / "rawprobes"
    offsets = [site.file_offset for site in probed(program)]
    with KernelUprobes(raw_kernel_sites(program, offsets), with_args=False) as kernel:
        untraced, status = run_untraced(rounds_argv(program, False))
        theirs = {int(name.split(":")[1], 16): n for name, n in kernel.hits().items()}
    assert status == 0
    displaced = 0
    for chosen in spaced_passes(offsets):
        trace, lines, changed = traced_run(program, "calls", "3", patterns=(), raw=chosen)
        assert changed == []
        assert line_facts(lines) == line_facts(untraced)
        jumped = {int(a.uprobe.consumers[0].probe.name, 16): a for a in trace.sites if isinstance(a.how, Jump)}
        ours = Counter(int(e.name, 16) for e in trace.events)
        assert {offset: ours.get(offset, 0) for offset in jumped} == \
            {offset: theirs.get(offset, 0) for offset in jumped}
        displaced += sum(1 for a in jumped.values() if a.how.site.displaced is not None)
    assert displaced >= 10, "jumps over real instructions, not only nops"


def test_list_plan_says_which_sites_will_jump(build, uemu) -> None:
    """``uemu list --plan`` per site: from the file (pun targets against the object's
    own image), and in a process, where it says what arming then does."""
    program = build.directory / "basic"
    listed = uemu("list", "--plan", "--json", str(program))
    assert listed.returncode == 0, listed.stderr
    plans = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {p["name"] for p in plans} == {p.name for p in sdt.open_elf(str(program)).probes}
    assert all(p["plan"] in ("jump", "pun", "evict", "trap") and p["why"] for p in plans)
    with started_sample(program) as tracee:
        in_process = uemu("list", "--plan", "--json", str(tracee.pid))
        with jump_traced(tracee.pid) as trace:
            predicted = {f"{p['provider']}:{p['name']}" for p in map(json.loads, in_process.stdout.splitlines())
                         if p["plan"] != "trap"}
            assert predicted == trace.jumped_names, trace.refused
