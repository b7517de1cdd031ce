"""uemu run on real samples: every hit with every argument, as the program
itself says, and as kernel uprobes and bpftrace see the same binary."""

from __future__ import annotations

import struct

import pytest
from oracle import KernelUprobes, bpftrace_counts, bpftrace_reason, sdt_sites, tracefs_reason
from samplelog import counts, expected_hits, per_probe, reported_hits, run_traced, run_untraced

from uemu import argspec, sdt

# (sample, argv after the program, libraries of the build it loads)
PROGRAMS = [
    ("basic", ("3",), ()),
    ("multisite", ("2",), ()),
    ("argforms", (), ()),
    ("linked", ("2",), ("libsdtlib.so",)),
    ("sema", ("2",), ()),
    ("threads", ("3", "4"), ()),
    ("longrun", ("2", "5", "100"), ()),
]
IDS = [p[0] for p in PROGRAMS]


@pytest.mark.parametrize("name, args, libraries", PROGRAMS, ids=IDS)
def test_every_hit_with_the_values_the_program_passed(runnable_build, name, args, libraries):
    program = runnable_build.directory / name
    run = run_traced([program, *args])
    expected = expected_hits(run.lines)
    reported = reported_hits(run.events)
    assert expected, f"the sample said nothing (exit status {run.exit_status}, {len(run.events)} events)"
    assert per_probe(reported) == per_probe(_unknowable(expected, run.events, program))
    # events carry the process and thread that passed the probe
    assert sorted((e.pid, e.tid, f"{e.provider}:{e.name}") for e in run.events) == sorted(
        (line.pid, line.tid, line.word) for line in run.lines if line.kind == "hit"
    )
    assert run.exit_status == 0


def _unknowable(expected, events, program):
    """The tolerated differences: an argument uemu reports as None because no one
    can know it, which the ELF must confirm:

    - an operand naming a static defined in several files, at a site that does
      not show which file it belongs to (uemu says so rather than guess);
    - a 16-byte long double named by one general register (gcc -O0 writes
      ``16f@%rax`` and warns "unsupported size for integer register").
    """
    elf = sdt.open_elf(str(program))
    symbols = elf.symbols
    masks: dict[str, list[set[int]]] = {}
    for event in events:
        unknown = set()
        for index, (spec, value) in enumerate(zip(event.specs, event.args, strict=True)):
            parsed = argspec.parse(spec, elf.arch_name)
            if value is None and parsed.symbol in symbols.locals:
                assert len(symbols.locals[parsed.symbol]) > 1, f"{spec} should have been readable"
                unknown.add(index)
            elif value is None:
                assert parsed.kind == "reg" and parsed.size > 8, f"{spec} should have been readable"
                unknown.add(index)
        masks.setdefault(f"{event.provider}:{event.name}", []).append(unknown)
    seen: dict[str, int] = {}
    out = []
    for name, values, tid in expected:
        position = seen[name] = seen.get(name, -1) + 1
        mask = masks.get(name, [])[position] if position < len(masks.get(name, [])) else set()
        out.append((name, tuple(None if i in mask else v for i, v in enumerate(values)), tid))
    return out


def test_probe_selection_and_exit_status(usdt, samples):
    with usdt.run([samples / "basic", "2"], probes=["basic:loop", "*:end"]) as trace:
        pass
    assert trace.counts() == {"basic:loop": 2, "basic:end": 1}
    assert trace.probes == ["basic:end", "basic:loop"]
    assert trace.exit_status == 0


def test_strings_read_from_the_tracee_while_stopped(usdt, samples):
    """A handler runs while the thread is stopped at the hit: %s-style reads work."""
    with usdt.run([samples / "basic", "1"], probes=["basic:string"], strings={"basic:string": 0}) as trace:
        pass
    assert trace.args("basic:string") == [(b"hello, probe", 12)]


@pytest.mark.oracle
@pytest.mark.skipif(tracefs_reason() is not None, reason=str(tracefs_reason()))
@pytest.mark.parametrize("name, args, libraries", PROGRAMS, ids=IDS)
def test_hit_counts_equal_kernel_uprobes(runnable_build, name, args, libraries):
    program = runnable_build.directory / name
    sites = sdt_sites(str(program), *(str(runnable_build.directory / lib) for lib in libraries))
    with KernelUprobes(sites, with_args=False) as kernel:
        lines, status = run_untraced([program, *args])
        kernel_counts = kernel.hits()
    run = run_traced([program, *args])
    # Each against its own run's truth: a sample that runs for a time (longrun)
    # passes its probes a different number of times in each run.
    assert status == 0 and run.exit_status == 0
    assert counts(expected_hits(lines)) == +kernel_counts
    assert counts(reported_hits(run.events)) == counts(expected_hits(run.lines))


def _as_fetched(value: int | float, size: int) -> int:
    """A value as the kernel prints it: floats as their bit pattern."""
    if isinstance(value, float):
        return int.from_bytes(struct.pack("<d" if size == 8 else "<f", value), "little")
    return value


@pytest.mark.oracle
@pytest.mark.skipif(tracefs_reason() is not None, reason=str(tracefs_reason()))
@pytest.mark.parametrize("name, args, libraries", PROGRAMS, ids=IDS)
def test_argument_values_equal_kernel_uprobes(runnable_build, name, args, libraries):
    """The kernel fetches what each spec names (registers, stack slots, globals,
    constants).  Runs differ (ASLR moves pointers, threads interleave), so each
    run is held to the program's own lines of that run: the kernel's in one run,
    uemu's in another (test_every_hit_with_the_values_the_program_passed), the
    same truth for both."""
    if runnable_build.target != "x86_64":
        pytest.skip("kernel fetch-args are derived from x86_64 specs only (i386 register pairs differ)")
    program = runnable_build.directory / name
    sites = sdt_sites(str(program), *(str(runnable_build.directory / lib) for lib in libraries))
    with KernelUprobes(sites) as kernel:
        lines, status = run_untraced([program, *args])
        kernel_records = kernel.records()
    assert status == 0
    sizes = {p.full_name: [spec.size for spec in argspec.parse_all(p.args, "x86_64")] for _, p in sites}
    truth = per_probe(expected_hits(lines))
    compared = 0
    for key, kernel_hits in per_probe(kernel_records).items():
        assert len(kernel_hits) == len(truth[key]), key
        for kernel_values, true_values in zip(kernel_hits, truth[key], strict=True):
            for kernel_value, true_value, size in zip(kernel_values, true_values, sizes[key[0]], strict=False):
                if kernel_value is not None:
                    assert kernel_value == _as_fetched(true_value, size), key
                    compared += 1
    assert compared > 0, "the kernel fetched nothing: the test proved nothing"


@pytest.mark.oracle
@pytest.mark.skipif(bpftrace_reason() is not None, reason=str(bpftrace_reason()))
@pytest.mark.parametrize("name, args, libraries", [p for p in PROGRAMS if p[0] in ("basic", "multisite", "sema")],
                         ids=["basic", "multisite", "sema"])
def test_hit_counts_equal_bpftrace(samples, name, args, libraries):
    """bpftrace raises one semaphore per probe name; a name whose sites have
    semaphores of their own (sema:persite) loses hits there, a known peer
    limitation, so only names with at most one semaphore are compared."""
    program = samples / name
    sites = [p for _, p in sdt_sites(str(program))]
    semaphores: dict[str, set] = {}
    for probe in sites:
        semaphores.setdefault(probe.full_name, set()).add(probe.semaphore)
    names = sorted(n for n, sems in semaphores.items() if len(sems) == 1)
    theirs = bpftrace_counts(str(program), names, [str(program), *args])
    run = run_traced([program, *args], names)
    assert theirs and counts(reported_hits(run.events)) == theirs
