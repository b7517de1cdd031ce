"""Out-of-line execution on real x86_64 and i386 programs.

- Raw uprobes (``PATH:SYMBOL``, ``PATH:SYMBOL+OFF``, ``PATH:OFFSET``) on every
  instruction of samples/rawprobes's functions.  What each site covers is the
  backend's own plan for it (``analyze`` and ``prepare_xol``): emulated branches,
  calls and pushes; steps of plain, rip-relative, call-indirect and ret
  instructions, in slots that jump back (one stop) or are single-stepped (two).
  The program's lines and exit status stay as untraced, entry hits equal the
  calls the program counts, and every site's hits equal kernel uprobes'.
  With "far" the program leaves no room within rel32 reach of its code, so
  every slot is single-stepped and rip-relative operands go through a scratch
  register.
- samples/insns under ``uemu run`` and ``uemu attach``: results, the fault in
  a slot, the refused lock site, a SIGALRM timer meanwhile.
- SIGUSR1s sent while a program steps probes out of line, fork from a program
  with an XOL area (and fork by a system call that runs in a slot), detach
  while threads run through slots.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import capstone
import pytest
from elftools.elf.elffile import ELFFile
from oracle import KernelUprobes, tracefs_reason
from residue import anonymous_code
from samplelog import Line, expected_hits, parse, per_probe, reported_hits, run_traced, run_untraced
from tracee import UEMU, Tracee, attach_cli, differences, file_memory, read_memory, stop_cli, tracer_pid, wait_until

from uemu import arch, sdt
from uemu.arch.base import Plan, Refuse, StepOutOfLine
from uemu.arch.x86 import Fixup, X86Call, X86CondJump, X86Jump, X86Push, X86Step
from uemu.events import Event
from uemu.maps import read_maps

if TYPE_CHECKING:
    from conftest import Build

STRAIGHT = ("add", "mix", "load_global", "store_global", "call_indirect")
"""Functions without a branch: each of their instructions runs once per call."""
FUNCTIONS = (*STRAIGHT, "loop_sum")
"""What one round of samples/rawprobes calls."""
NEAR_SLOT = 1 << 28
"""A slot this far from the code stands where uemu maps its XOL area (within 1 GiB)."""
FAR_SLOT = 1 << 40
"""Out of rel32 reach, as the area is when the program leaves no room near its code."""
REACH = 1 << 31
KINDS = {"jcc", "jmp", "call rel", "push", "call indirect", "ret", "alu", "mov", "stack"}
KINDS_64 = KINDS | {"riprel load", "riprel store"}
NO_FAR = "a 32-bit address space has no place out of rel32 reach: jmp rel32 wraps around"


# ---------------------------------------------------------------- sites and their plans


@dataclass(frozen=True)
class Site:
    """One instruction of samples/rawprobes and what uemu's backend plans for it."""

    function: str
    offset: int
    """From the function's start."""
    file_offset: int
    text: str
    kind: str
    near: str | None
    """How its slot ends within reach of the code ("jump": one stop, "step": two); None: emulated."""
    far: str | None
    """The same out of rel32 reach."""
    far_scratch: bool
    """Out of reach, a rip-relative operand goes through a scratch register."""

    def word(self, program: Path, index: int) -> str:
        """A PROBE word for the site, in the three forms by turns."""
        if self.offset == 0:
            return f"{program}:{self.function}"
        if index % 2:
            return f"{program}:{self.function}+{self.offset:#x}"
        return f"{program}:{self.file_offset:#x}"


@functools.cache
def sites(program: Path) -> tuple[Site, ...]:
    """Every instruction of the program's probed functions, with its plan."""
    elf = sdt.open_elf(str(program))
    if elf.arch_name not in ("x86_64", "i386"):
        pytest.skip(f"x86 plan kinds; {elf.arch_name} is covered by "
                    "test_raw_probes_on_every_instruction_on_any_arch and tests/arch")
    backend = arch.by_name(elf.arch_name).backend
    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if elf.elf_class == 64 else capstone.CS_MODE_32)
    decoder.detail = True
    found = []
    with program.open("rb") as stream:
        symbols = ELFFile(stream).get_section_by_name(".symtab")
        for function in (*FUNCTIONS, "raw_fork", "raw_mmap"):
            [symbol] = symbols.get_symbol_by_name(function)
            start = symbol["st_value"]
            stream.seek(elf.file_offset(start, executable=True))
            code = stream.read(symbol["st_size"])
            for insn in decoder.disasm(code, start):
                plan = backend.analyze(code[insn.address - start:], insn.address)
                assert plan.size == insn.size, insn
                near = far = None
                scratch = False
                if isinstance(plan, StepOutOfLine):
                    registers = dict.fromkeys(("rsi", "rdi", "rbx"), 0)
                    near = backend.prepare_xol(plan, insn.address + NEAR_SLOT, registers).ends
                    far_setup = backend.prepare_xol(plan, insn.address + FAR_SLOT, registers)
                    far, scratch = far_setup.ends, bool(far_setup.restore)
                found.append(Site(function, insn.address - start, elf.file_offset(insn.address, executable=True),
                                  plan.text, _kind(insn, plan), near, far, scratch))
    return tuple(found)


def _kind(insn: capstone.CsInsn, plan: Plan) -> str:
    """What the plan does with the instruction, in the words of the issue."""
    if isinstance(plan, Refuse):
        return "refused"
    if isinstance(plan, X86CondJump):
        return "jcc"
    if isinstance(plan, X86Jump):
        return "nop" if plan.vaddr + plan.size in plan.effects.regs.values() else "jmp"
    if isinstance(plan, X86Call):
        return "call rel"
    if isinstance(plan, X86Push):
        return "push"
    assert isinstance(plan, X86Step)
    if plan.fixup is Fixup.CALL:
        return "call indirect"
    if plan.fixup is Fixup.NONE:
        return "ret" if insn.mnemonic.startswith("ret") else "jmp indirect"
    if plan.riprel is not None:
        if insn.mnemonic == "lea":
            return "riprel address"
        [operand] = [op for op in insn.operands if op.type == capstone.x86.X86_OP_MEM]
        return {capstone.CS_AC_READ: "riprel load", capstone.CS_AC_WRITE: "riprel store"}.get(
            operand.access, "riprel read-write")
    written = {insn.reg_name(reg) for reg in insn.regs_access()[1]}
    if written & {"rsp", "esp"}:
        return "stack"
    return "mov" if insn.mnemonic.startswith("mov") else "alu"


def probed(program: Path, functions: Sequence[str] = FUNCTIONS) -> list[Site]:
    """The sites of these functions that uprobes accept."""
    return [s for s in sites(program) if s.function in functions and s.kind != "refused"]


def words(program: Path, chosen: Sequence[Site]) -> list[str]:
    return [site.word(program, index) for index, site in enumerate(chosen)]


def _offset(program: Path, name: str) -> int:
    """The file offset of a raw probe by its name, which is its word's place:
    ``SYMBOL``, ``SYMBOL+0xOFF`` or ``0xOFFSET`` (``Site.word``)."""
    if name[:1].isdigit():
        return int(name, 16)
    symbol, _, extra = name.partition("+")
    return next(site.file_offset for site in sites(program)
                if site.function == symbol and site.offset == (int(extra, 16) if extra else 0))


def _rawprobes(build: Build, far: bool) -> Path:
    if far and build.target != "x86_64":
        pytest.skip(NO_FAR)
    return build.directory / "rawprobes"


def rounds_argv(program: Path, far: bool) -> list[str]:
    """Three rounds of every function, far from the XOL area or not."""
    return [str(program), "calls", "3", *(["far"] if far else [])]


# ---------------------------------------------------------------- what the program says


def facts(lines: Sequence[Line]) -> list[tuple[str, str, tuple[str, ...]]]:
    """The program's lines without process and thread ids."""
    return [(line.kind, line.word, line.values) for line in lines]


def calls(lines: Sequence[Line]) -> Counter[tuple[int, str]]:
    """Calls per (process, function) from the program's ``hits`` lines."""
    counted: Counter[tuple[int, str]] = Counter()
    for line in lines:
        if line.kind == "hits":
            counted[(line.pid, line.word.split(":")[1])] += int(line.values[0])
    return counted


def site_hits_as_calls(chosen: Sequence[Site], lines: Sequence[Line]) -> Counter[tuple[int, int]]:
    """Hits per (process, site) a tracer must report at straight-line sites: the calls."""
    return +Counter({(pid, site.file_offset): n for (pid, function), n in calls(lines).items()
                     for site in chosen if site.function == function})


# ---------------------------------------------------------------- the XOL area


def executable_maps(pid: int) -> list[tuple[int, int, str, str]]:
    return [(v.start, v.end, v.perms, v.path) for v in read_maps(pid) if v.executable]


def trap_at(pid: int, program: Path, file_offset: int) -> bool:
    """Whether the breakpoint is in the program's text at that offset."""
    vma = next(v for v in read_maps(pid) if v.path == str(program) and v.executable)
    return read_memory(pid, vma.offset_to_vaddr(file_offset), 1) == b"\xcc"


@dataclass(frozen=True)
class TracedRounds:
    lines: list[Line]
    status: int
    hits: Counter[int]
    """Per file offset."""
    nearest: int
    farthest: int
    """Distances between the XOL area and the program's code."""


@functools.cache
def traced_rounds(build: Build, far: bool) -> TracedRounds:
    """``uemu run`` with a probe on every instruction of the rounds' functions; the
    program waits at its last sync line while the XOL area is looked at.  The trap
    path only (``--no-jumps``): with the jump path, whether a site takes a jump or a
    slot depends on where ASLR put the pun targets, and a run whose stepped sites all
    found one has no XOL area to look at (test_jumps.py covers those sites' jumps)."""
    program = build.directory / "rawprobes"
    with tempfile.NamedTemporaryFile("r", suffix=".json") as events:
        command = [sys.executable, "-m", "uemu", "run", "--no-jumps", "--json", "-o", events.name,
                   *words(program, probed(program)), "--", *rounds_argv(program, far)]
        with Tracee(command) as tracee:
            tracee.wait_sync("start")
            tracee.release()
            tracee.wait_sync("end")
            pid = tracee.lines()[0].pid
            [area] = anonymous_code(pid)
            [code] = [v for v in read_maps(pid) if v.path == str(program) and v.executable]
            nearest = max(area.start - code.end, code.start - area.end)
            farthest = max(area.end - code.start, code.end - area.start)
            tracee.release()
            status = tracee.finish()
            lines = tracee.lines()
        hits = Counter(_offset(program, json.loads(line)["name"]) for line in events.read().splitlines())
    return TracedRounds(lines, status, hits, nearest, farthest)


# ---------------------------------------------------------------- raw probes on every instruction


@pytest.mark.parametrize("far", [False, True], ids=["near", "far"])
def test_raw_probes_on_every_instruction_leave_the_program_as_untraced(runnable_build, far):
    """Every kind of plan met and hit, in the slots the backend plans for where the
    XOL area really is; the program's lines as untraced; entry hits = calls."""
    program = _rawprobes(runnable_build, far)
    chosen = probed(program)
    run = traced_rounds(runnable_build, far)
    untraced, status = run_untraced(rounds_argv(program, far))
    assert run.status == status == 0
    assert facts(run.lines) == facts(untraced)

    entries = {site.function: run.hits[site.file_offset] for site in chosen if site.offset == 0}
    pid = run.lines[0].pid
    assert entries == {function: calls(run.lines)[(pid, function)] for function in FUNCTIONS}

    hit = [site for site in chosen if run.hits[site.file_offset]]
    kinds = KINDS_64 if runnable_build.target == "x86_64" else KINDS
    missing = kinds - {site.kind for site in hit}
    assert not missing, f"no site of kind {missing} was hit: {[(s.function, s.text, s.kind) for s in chosen]}"
    if far:
        assert run.nearest > REACH, "the XOL area is within rel32 reach: 'far' proved nothing"
        assert {site.far for site in hit if site.far} == {"step"}
        assert any(site.far_scratch for site in hit), "no rip-relative operand went through a scratch register"
    else:
        assert run.farthest < REACH, "the XOL area is out of rel32 reach"
        assert {site.near for site in hit if site.near} == {"jump", "step"}


@pytest.mark.oracle
@pytest.mark.skipif(tracefs_reason() is not None, reason=str(tracefs_reason()))
@pytest.mark.parametrize("far", [False, True], ids=["near", "far"])
def test_raw_probe_hits_equal_kernel_uprobes(runnable_build, far):
    """Kernel uprobes at the same PATH:OFFSET of the same binary, in an untraced run."""
    program = _rawprobes(runnable_build, far)
    elf = sdt.open_elf(str(program))
    chosen = probed(program)
    kernel_sites = [(elf, sdt.Probe(str(program), "raw", f"{site.file_offset:x}", elf.vaddr(site.file_offset),
                                    site.file_offset, None, None, "", None, -1)) for site in chosen]
    with KernelUprobes(kernel_sites, with_args=False) as kernel:
        lines, status = run_untraced(rounds_argv(program, far))
        theirs = Counter({int(name.split(":")[1], 16): n for name, n in kernel.hits().items()})
    run = traced_rounds(runnable_build, far)
    assert status == 0 and facts(lines) == facts(run.lines)
    assert +theirs and +run.hits == +theirs


# ---------------------------------------------------------------- samples/insns


INSNS_ITERATIONS = "20"


@contextlib.contextmanager
def one_cpu() -> Iterator[None]:
    """Processes started inside share one CPU (they inherit the affinity).

    samples/insns runs a 200 µs SIGALRM timer.  A ptrace stop costs about 40 µs
    when tracer and program share a CPU, but more than 50 µs when each wakes the
    other across two: with a period near a stop's cost every period's signal is
    pending again before the program moves on, and it crawls under any tracer (a
    bare ctypes PTRACE_CONT loop, no probe, at 50 µs: 188 000 signal stops and
    10 s for ``insns 20``, which takes 2 ms untraced).  At 50 µs uemu's stop, a
    little over that on this machine, starved it (2 s to over 60 s at b0a811d
    too); 200 µs leaves room.
    """
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def _insns_facts(lines: Sequence[Line]) -> dict[str, list]:
    return {kind: [(line.word, line.values) for line in lines if line.kind == kind] for kind in ("result", "signal")}


@pytest.fixture(scope="module")
def insns_untraced(samples) -> list[Line]:
    if not (samples / "insns").exists():
        pytest.skip("insns is an x86_64 sample (hand-written x86-64 assembly)")
    lines, status = run_untraced([samples / "insns", INSNS_ITERATIONS])
    assert status == 0
    facts_seen = _insns_facts(lines)
    assert facts_seen["signal"] == [("fault", ("11", "1", "0"))] * int(INSNS_ITERATIONS)
    return lines


def _check_insns(program: Path, lines: Sequence[Line], events_file: Path, stderr: str,
                 untraced: Sequence[Line]) -> None:
    """Every result and the fault's signal as untraced, every hit with its values,
    and the lock site reported once as refused."""
    assert _insns_facts(lines) == _insns_facts(untraced)
    events = [Event(**json.loads(line)) for line in events_file.read_text().splitlines()]
    assert per_probe(reported_hits(events)) == per_probe(expected_hits(lines))
    [lock] = [p for p in sdt.open_elf(str(program)).probes if p.full_name == "insns:refused_lock"]
    assert stderr.count("\n") == 1, stderr
    assert f"insns+{lock.file_offset:#x}): not supported by uprobes: lock prefix" in stderr, stderr


def test_insns_under_uemu_run(samples, insns_untraced, uemu, tmp_path):
    events_file = tmp_path / "events.json"
    with one_cpu():
        result = uemu("run", "--json", "-o", str(events_file), "--", str(samples / "insns"), INSNS_ITERATIONS)
    assert result.returncode == 0, result.stderr
    _check_insns(samples / "insns", parse(result.stdout), events_file, result.stderr, insns_untraced)


def test_insns_under_uemu_attach(samples, insns_untraced, tmp_path):
    program = samples / "insns"
    [first] = sdt.open_elf(str(program)).probes[:1]
    events_file = tmp_path / "events.json"
    with one_cpu():
        tracee = Tracee([program, INSNS_ITERATIONS])
    with tracee:
        tracee.wait_sync("start")
        with one_cpu():
            # the trap path's out-of-line steps (the jump path would take the nops)
            cli = attach_cli(str(tracee.pid), "--no-jumps", "--json", "-o", str(events_file))
        wait_until(lambda: tracer_pid(tracee.pid) and trap_at(tracee.pid, program, first.file_offset),
                   what="breakpoints")
        tracee.release()
        tracee.wait_sync("end")
        code, _, err = stop_cli(cli, signal.SIGINT)
        assert code == 0, err
        assert anonymous_code(tracee.pid) == [], "the XOL area stayed after detach"
        tracee.run_out()
        _check_insns(program, tracee.lines(), events_file, err, insns_untraced)


# ---------------------------------------------------------------- signals during steps


USR1_SIGNALS = 40


def _signals_run(command: Sequence[str | Path]) -> tuple[list[Line], int]:
    """``rawprobes signals`` (maybe under ``uemu run``): one SIGUSR1 at a time, each
    sent once the program has said it handled the one before, so none can merge
    with another (standard signals do not queue) and any lost one is seen."""
    with Tracee(command) as tracee:
        tracee.wait_sync("start")
        pid = tracee.lines()[0].pid
        tracee.release()
        for count in range(1, USR1_SIGNALS + 1):
            os.kill(pid, signal.SIGUSR1)
            wait_until(lambda count=count: sum(line.word == "usr1" for line in tracee.lines()) >= count,
                       what=f"SIGUSR1 number {count} to be handled")
        tracee.wait_sync("end")
        tracee.release()
        return tracee.lines(), tracee.finish()


def test_signals_arriving_during_out_of_line_steps_are_delivered_after(runnable_build, tmp_path):
    """Every instruction of the straight-line functions is probed: the program
    spends its time between the two stops of a step or in a slot.  Each signal is
    handled once, and its handler finds the program in its own code, never in a
    slot.  The trap path's slots (``--no-jumps``): a jumped site's trampoline is code of
    uemu's that a handler may find, as the kernel's own uprobe trampolines are."""
    program = runnable_build.directory / "rawprobes"
    chosen = probed(program, STRAIGHT)
    assert {site.near for site in chosen} >= {"jump", "step"}
    counts_file = tmp_path / "counts"
    argv = [program, "signals", str(USR1_SIGNALS)]
    traced, status = _signals_run([sys.executable, "-m", "uemu", "run", "--no-jumps", "--count", "-o",
                                   str(counts_file), *words(program, chosen), "--", *argv])
    untraced, untraced_status = _signals_run(argv)
    handled = [(line.word, line.values) for line in traced if line.kind == "signal"]
    assert status == untraced_status == 0
    assert handled == [(line.word, line.values) for line in untraced if line.kind == "signal"]
    assert handled == [("usr1", (str(n), "1")) for n in range(1, USR1_SIGNALS + 1)]
    reported = Counter({(traced[0].pid, _offset(program, name.split(":", 1)[1])): int(n)
                        for name, n in (line.split() for line in counts_file.read_text().splitlines())})
    assert reported == site_hits_as_calls(chosen, traced)


# ---------------------------------------------------------------- detach


@pytest.mark.parametrize("ends", ["jump", "step"])
def test_detach_while_threads_run_through_slots(runnable_build, ends, tmp_path):
    """Three threads loop over probes stepped out of line; uemu attach leaves on
    SIGINT while they run.  The program goes on to the same results as untraced,
    with every byte of its files' mappings as before and the XOL area gone."""
    program = runnable_build.directory / "rawprobes"
    chosen = [site for site in probed(program, STRAIGHT) if site.near == ends]
    argv = [program, "threads", "3", "100000"]
    untraced, status = run_untraced(argv)
    assert status == 0
    counts_file = tmp_path / "counts"
    with Tracee(argv) as tracee:
        tracee.wait_sync("start")
        maps_before, memory_before = executable_maps(tracee.pid), file_memory(tracee.pid, writable=False)
        # the trap path's slots (--no-jumps: the jump path would take these instructions)
        cli = attach_cli(str(tracee.pid), "--no-jumps", *words(program, chosen), "--count", "-o", str(counts_file))
        wait_until(lambda: tracer_pid(tracee.pid) and trap_at(tracee.pid, program, chosen[-1].file_offset),
                   what="breakpoints")
        tracee.release()
        wait_until(lambda: anonymous_code(tracee.pid), what="the XOL area")
        assert not [line for line in tracee.lines() if line.kind == "result"], "the threads ended before detach"
        code, _, err = stop_cli(cli, signal.SIGINT)
        assert code == 0 and err == "", err
        assert tracer_pid(tracee.pid) == 0
        wait_until(lambda: tracee.process.poll() is not None or ("sync", "end", ()) in facts(tracee.lines()),
                   what="the threads to finish")
        assert tracee.process.returncode is None, f"after detach the program ended with {_status(tracee.process)}"
        tracee.wait_sync("end")
        assert executable_maps(tracee.pid) == maps_before
        assert differences(memory_before, file_memory(tracee.pid, writable=False)) == []
        tracee.run_out()
        lines = tracee.lines()
    assert Counter(facts(lines)) == Counter(facts(untraced))
    reported = sum(int(line.split()[1]) for line in counts_file.read_text().splitlines())
    assert 0 < reported < sum(site_hits_as_calls(chosen, lines).values()), "not detached mid-run"


def _status(process: subprocess.Popen) -> str:
    code = process.returncode
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"


# ---------------------------------------------------------------- faults while carrying out a hit


@pytest.mark.parametrize("mode", ["seccomp", "syscall"])
def test_a_call_on_a_bad_stack_faults_as_without_uemu(runnable_build, mode):
    """A probed ``call rel32`` whose push cannot be written (the stack pointer points at
    nothing) gets the SIGSEGV the CPU gives it untraced, at the same address; the
    program's handler reports it and goes on, and uemu goes on too."""
    if runnable_build.target not in ("x86_64", "i386"):
        pytest.skip("rawprobes badstack is x86 only (arm64's bl and riscv's jal push nothing)")
    program = runnable_build.directory / "rawprobes"
    argv = [program, "badstack", "3"]
    untraced, status = run_untraced(argv)
    assert status == 0 and [line.kind for line in untraced].count("segv") == 3
    run = run_traced(argv, [f"{program}:rawprobes_bad_call"], mappings=mode)
    assert run.exit_status == 0
    assert facts(run.lines) == facts(untraced)
    assert len(run.events) == 3


# ---------------------------------------------------------------- fork


@pytest.mark.parametrize("follow", [False, True], ids=["cleaned", "followed"])
def test_fork_from_a_program_with_an_xol_area(runnable_build, follow):
    """The parent has stepped probes out of line before it forks: a child starts
    without the XOL area (MADV_DONTFORK; the program counts its anonymous
    executable mappings first thing), runs as untraced, and reports its hits when
    followed."""
    program = runnable_build.directory / "rawprobes"
    chosen = probed(program, STRAIGHT)
    argv = [program, "fork", "3"]
    run = run_traced(argv, words(program, chosen), follow_forks=follow)
    untraced, status = run_untraced(argv)
    assert run.exit_status == status == 0
    assert facts(run.lines) == facts(untraced)
    assert [line.values for line in run.lines if line.word in ("fork", "raw_fork", "waited")] == [("0",)] * 4
    parent = run.lines[0].pid
    expected = site_hits_as_calls(chosen, run.lines)
    if not follow:
        expected = Counter({key: n for key, n in expected.items() if key[0] == parent})
    reported = Counter((event.pid, _offset(program, event.name)) for event in run.events)
    assert reported == expected


@pytest.mark.parametrize("follow", [False, True], ids=["cleaned", "followed"])
def test_a_child_forked_by_a_syscall_run_out_of_line_starts_after_it(runnable_build, follow):
    """A probe on the fork system call itself: the parent runs ``syscall`` in its
    slot, so the child is born with its ip in a slot its memory does not have
    (the area is MADV_DONTFORK).  It must start where the parent goes on, after
    the probed instruction.  (Kernel uprobes on 6.18 kill parent and child here.)"""
    if runnable_build.target != "x86_64":
        pytest.skip("raw_fork makes a system call of its own on x86_64 only (i386 calls the kernel "
                    "through the vDSO or int $0x80, which uprobes refuse)")
    program = runnable_build.directory / "rawprobes"
    [syscall] = [site for site in sites(program) if site.function == "raw_fork" and site.text == "syscall"]
    assert syscall.near == "step"
    argv = [program, "fork", "1"]
    run = run_traced(argv, words(program, [syscall]), follow_forks=follow)
    untraced, status = run_untraced(argv)
    assert [line.values for line in run.lines if line.word == "waited"] == [("0",), ("0",)], \
        "a child forked from inside a slot did not survive"
    assert run.exit_status == status == 0
    assert facts(run.lines) == facts(untraced)
    hits = [(event.pid, _offset(program, event.name)) for event in run.events]
    assert hits == [(run.lines[0].pid, syscall.file_offset)]


@pytest.mark.oracle
@pytest.mark.skipif(tracefs_reason() is not None, reason=str(tracefs_reason()))
@pytest.mark.parametrize("far", [False, True], ids=["near", "far"])
def test_a_mapping_made_by_a_probed_syscall_is_armed_before_the_program_goes_on(runnable_build, far):
    """A probe on the mmap system call itself (``rawprobes map``: the program maps
    its own file again through a ``syscall`` of its own), so the mapping is made
    from a slot: when the program stands at its next sync point, the new copy
    holds the same breakpoints as under kernel uprobes (their mmap hook), under
    run (seccomp stops) and attach (every syscall stops); the step still ends
    right, so the program's lines are as untraced."""
    if runnable_build.target != "x86_64":
        pytest.skip("raw_mmap makes a system call of its own on x86_64 only")
    program = runnable_build.directory / "rawprobes"
    every = sites(program)
    [syscall] = [site for site in every if site.function == "raw_mmap" and site.text == "syscall"]
    chosen = [syscall, next(site for site in every if site.function == "mix")]
    argv = [program, "map", "2", *(["far"] if far else [])]

    def trap_bytes_in_the_copy(tracee: Tracee, started: bool = False) -> list[str]:
        if not started:
            tracee.wait_sync("start")
        tracee.release()
        tracee.wait_sync("mapped")
        [copy] = [line for line in tracee.lines() if line.kind == "map"]
        address = int(copy.values[0])
        seen = [read_memory(tracee.pid, address + site.file_offset, 1) for site in chosen]
        tracee.run_out()
        # armed: the kernel's or uemu's int3, or the jump path's jump (uemu/jumps.py)
        return ["armed" if byte != original else byte.hex() for byte, original in zip(seen, originals, strict=True)]

    code = program.read_bytes()
    originals = [code[site.file_offset:site.file_offset + 1] for site in chosen]

    with KernelUprobes(raw_kernel_sites(program, [site.file_offset for site in chosen]), with_args=False), \
            Tracee(argv) as tracee:
        kernel = trap_bytes_in_the_copy(tracee)
    assert kernel == ["armed", "armed"], "the oracle did not arm the copy"
    probe_words = words(program, chosen)
    for mode in ("seccomp", "syscall"):
        with Tracee(argv, under=(*UEMU, "run", f"--mappings={mode}", *probe_words, "--")) as tracee:
            assert trap_bytes_in_the_copy(tracee) == kernel, f"run --mappings={mode}"
    with Tracee(argv) as tracee:
        tracee.wait_sync("start")
        cli = attach_cli("--mappings=syscall", str(tracee.pid), *probe_words)
        assert trap_bytes_in_the_copy(tracee, started=True) == kernel, "attach --mappings=syscall"
        assert stop_cli(cli, None)[0] == 0
    run = run_traced(argv, probe_words)
    untraced, status = run_untraced(argv)
    assert run.exit_status == status == 0
    unplaced = lambda lines: [fact for fact in facts(lines) if fact[0] != "map"]  # noqa: E731  (addresses vary)
    assert unplaced(run.lines) == unplaced(untraced)
    assert Counter(_offset(program, event.name) for event in run.events)[syscall.file_offset] == 1


# ---------------------------------------------------------------- every architecture


def accepted_offsets(program: Path) -> list[int]:
    """File offsets of every instruction of the rounds' functions that the program's
    own backend accepts, walking each function by the sizes its plans give (no
    disassembler of ours needed, so this runs on every architecture)."""
    elf = sdt.open_elf(str(program))
    backend = arch.by_name(elf.arch_name).backend
    offsets = []
    with program.open("rb") as stream:
        symbols = ELFFile(stream).get_section_by_name(".symtab")
        for function in FUNCTIONS:
            [symbol] = symbols.get_symbol_by_name(function)
            start, size = symbol["st_value"], symbol["st_size"]
            stream.seek(elf.file_offset(start, executable=True))
            code = stream.read(size)
            position = 0
            while position < size:
                plan = backend.analyze(code[position:position + backend.max_insn_len], start + position)
                if not isinstance(plan, Refuse):
                    offsets.append(elf.file_offset(start + position, executable=True))
                position += plan.size or 2
    return offsets


def raw_kernel_sites(program: Path, offsets: Sequence[int]) -> list[tuple[sdt.ElfObject, sdt.Probe]]:
    """Kernel uprobes at PATH:OFFSET, in the oracle's terms."""
    elf = sdt.open_elf(str(program))
    return [(elf, sdt.Probe(str(program), "raw", f"{offset:x}", elf.vaddr(offset), offset, None, None, "", None, -1))
            for offset in offsets]


@pytest.mark.oracle
@pytest.mark.skipif(tracefs_reason() is not None, reason=str(tracefs_reason()))
def test_raw_probes_on_every_instruction_on_any_arch(runnable_build):
    """On the machine's own architecture (x86 here, arm64 and riscv64 in the test
    guests): a probe on every accepted instruction (emulated, one-stop slots,
    stepped or trapped slots), the program's lines as untraced, and every site's
    hits equal to kernel uprobes' at the same PATH:OFFSET."""
    program = runnable_build.directory / "rawprobes"
    offsets = accepted_offsets(program)
    argv = [program, "calls", "3"]
    run = run_traced(argv, [f"{program}:{offset:#x}" for offset in offsets])
    untraced, status = run_untraced(argv)
    assert run.exit_status == status == 0
    assert facts(run.lines) == facts(untraced)
    ours = Counter(_offset(program, event.name) for event in run.events)
    with KernelUprobes(raw_kernel_sites(program, offsets), with_args=False) as kernel:
        lines, status = run_untraced(argv)
        theirs = Counter({int(name.split(":")[1], 16): n for name, n in kernel.hits().items()})
    assert status == 0 and facts(lines) == facts(untraced)
    assert len(ours) > 20 and ours == +theirs  # sites on paths never taken are hit by neither
