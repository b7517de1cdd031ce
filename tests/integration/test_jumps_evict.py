"""Successor eviction in real processes (issue 12; E9Patch's T2): samples/evict maps a page
at each site's own pun target before its ``start``, so ``uemu attach`` must move the
instruction after each nop to a trampoline of its own, behind a jump whose first four
bytes are the pun's displacement.  The oracles are the program's own: its results, as
untraced; its ``hit`` lines; its text against its file after uemu leaves, is killed (the
runtime puts both writes back, the pun first), or is repaired."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from residue import left_clean, text_differences
from samplelog import Line, expected_hits, json_hits, run_untraced
from test_jumps import seizable
from tracee import UEMU, Tracee, attach_cli, read_memory, stop_cli, wait_until

from uemu import sdt
from uemu.jumpplan import NO_ROOM_FOR_LEAD, PAGE, Neighbours, plan_of_site
from uemu.maps import Vma

EVICTED = {"mov_imm", "mov_imm_r9", "riprel_load", "riprel_lea", "cmp_flags", "movabs", "loop_head", "jmp_succ",
           "short_succ", "test_byte", "cmp_mem", "call_succ"}
"""Sites whose successor moves: one that runs in a slot that jumps back (behind a whole
jump, or 2 to 4 bytes behind a pun), a jmp rel32 (a jump on to where it led) or a call
rel32 (the return address pushed, then that jump)."""
KEPT = {"nopl5": "jump"}
"""A nop of five bytes: a whole jump."""
ITERATIONS = "20"


@pytest.fixture
def program(jump_build) -> Path:
    seizable(jump_build)
    path = jump_build.directory / "evict"
    if not path.exists():
        pytest.skip("evict is an x86_64 sample (hand-written x86-64 assembly)")
    return path


def results(lines: list[Line]) -> list[tuple[str, tuple]]:
    return sorted((line.word, line.values) for line in lines if line.kind == "result")


def planned(pid: int) -> dict[str, tuple[str, int]]:
    """``uemu list --plan PID``: probe name (without the provider) -> (path, address)."""
    out = subprocess.run([*UEMU, "list", "--plan", str(pid)], capture_output=True, text=True, check=True).stdout
    plans = {}
    for line in out.splitlines():
        _, probe, address, path = line.split()[:4]
        if probe.startswith("evict:"):
            plans[probe.split(":")[1]] = (path.rstrip(":"), int(address, 16))
    return plans


@pytest.fixture
def started(program: Path):
    """The sample at its ``start``, every site's own pun target taken, and its plan."""
    with Tracee([program, ITERATIONS]) as tracee:
        tracee.wait_sync("start")
        plans = planned(tracee.pid)
        assert {name for name, (path, _) in plans.items() if path == "evict"} == EVICTED, plans
        assert {name: path for name, (path, _) in plans.items() if name in KEPT} == KEPT
        yield tracee, {plans[name][1] for name in EVICTED}


def evicted_in_memory(pid: int, sites: set[int]) -> bool:
    """Each site holds the pun's opcode, and its successor a whole jump."""
    return all(read_memory(pid, site, 2) == b"\xe9\xe9" for site in sites)


def test_attach_evicts_each_successor_and_the_program_computes_as_untraced(started, program, tmp_path) -> None:
    tracee, sites = started
    untraced, status = run_untraced([program, ITERATIONS])
    assert status == 0
    events = tmp_path / "events.json"
    cli = attach_cli("--json", "-o", str(events), str(tracee.pid))
    assert evicted_in_memory(tracee.pid, sites), [read_memory(tracee.pid, s, 6).hex() for s in sites]
    tracee.release()
    tracee.wait_sync("end")
    code, _, err = stop_cli(cli, signal.SIGINT)
    assert code == 0 and err == "", err
    left_clean(tracee.pid)
    tracee.run_out()
    lines = tracee.lines()
    assert results(lines) == results(untraced)
    assert sorted(json_hits(events)) == sorted(expected_hits(lines))


def test_uemu_killed_the_runtime_puts_both_writes_back(started, program) -> None:
    """The first hit after uemu's death restores every site (restore_all: the pun before
    the jump over its successor, which a thread may be running through) and the program
    computes on as untraced."""
    tracee, sites = started
    cli = attach_cli("-c", str(tracee.pid))
    assert evicted_in_memory(tracee.pid, sites)
    cli.kill()
    cli.wait()
    tracee.release()
    tracee.wait_sync("end")
    assert text_differences(tracee.pid) == []
    tracee.run_out()
    untraced, _ = run_untraced([program, ITERATIONS])
    assert results(tracee.lines()) == results(untraced)


def test_repair_puts_both_writes_back(started) -> None:
    tracee, sites = started
    cli = attach_cli("-c", str(tracee.pid))
    assert evicted_in_memory(tracee.pid, sites)
    cli.kill()
    cli.wait()
    repaired = subprocess.run([*UEMU, "repair", str(tracee.pid)], capture_output=True, text=True, check=False)
    assert repaired.returncode == 0, repaired.stderr
    left_clean(tracee.pid)
    tracee.run_out()


def test_uemu_run_evicts_where_the_file_itself_takes_the_target(program, tmp_path) -> None:
    """evict:mov_imm's own pun target lies 67 bytes back in the text: under ``uemu run``
    too, where uemu arms before the program maps anything, its successor moves."""
    events = tmp_path / "events.json"
    with Tracee([program, "3"], under=(*UEMU, "run", "--json", "-o", str(events), "--")) as tracee:
        tracee.wait_sync("start")
        site = wait_until(lambda: planned(tracee.pid)["mov_imm"][1], what="the plan")
        assert read_memory(tracee.pid, site, 2) == b"\xe9\xe9"
        tracee.run_out()
        lines = tracee.lines()
    untraced, _ = run_untraced([program, "3"])
    assert results(lines) == results(untraced)
    assert sorted(json_hits(events)) == sorted(expected_hits(lines))
    assert os.path.getsize(events) > 0


def test_the_plan_in_a_process_says_trap_where_a_punned_successors_window_is_all_taken(program) -> None:
    """``uemu list --plan PID`` for evict:cmp_mem (a 4-byte successor, punned: its jump
    leads within 16 MiB, 1.8 GiB on): evict while that window has a free page, the trap
    once mappings cover it all, as placement would find."""
    elf = sdt.open_elf(str(program))
    [probe] = [p for p in elf.probes if p.full_name == "evict:cmp_mem"]
    assert probe.file_offset is not None
    base = 0x5555_0000_0000
    site = base + probe.address
    code = program.read_bytes()[probe.file_offset:probe.file_offset + 6]
    own = site + 5 + int.from_bytes(code[1:5], "little", signed=True)
    window = site + 6 + (code[5] << 24)
    taken = Vma(own & -PAGE, (own & -PAGE) + PAGE, "r--p", 0, 0, 0, "")
    covering = Vma(window - PAGE, window + (1 << 24) + PAGE, "r--p", 0, 0, 0, "")
    neighbours = Neighbours([probe.file_offset], site - probe.file_offset)
    free = plan_of_site(elf, probe.file_offset, site, neighbours, [taken], None)
    full = plan_of_site(elf, probe.file_offset, site, neighbours, [taken, covering], None)
    assert free.path == "evict", free
    assert full.path == "trap" and full.why.endswith(NO_ROOM_FOR_LEAD), full
