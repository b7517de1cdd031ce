"""Pun landings and their trampolines in real processes (uemu/jumps.py's placement),
through the test's own tracer (jumptrace.py: uemu's area goes where the kernel puts it,
far from the samples' pun targets, so trampolines go on landing pages): each landing
leads on to its own trampoline, none covers another site's landing, and what ``uemu
list --plan`` says of each site, read before arming, is what arming did."""

from __future__ import annotations

import pytest
from jumptrace import jump_traced, started_sample
from test_jumps import seizable

from uemu.jumpplan import LANDING_SIZE, Neighbours, plan_of_site
from uemu.jumps import Jump
from uemu.maps import read_maps
from uemu.objects import mapped_objects
from uemu.process import start_brk


@pytest.fixture
def build(jump_build):
    return seizable(jump_build)


def planned_paths(pid: int) -> dict[int, str]:
    """Each SDT site of the process's objects -> ``uemu list --plan``'s path for it."""
    vmas = read_maps(pid)
    objects, _ = mapped_objects(pid, vmas)
    paths = {}
    for mapped in objects:
        sites = {mapped.runtime_address(p.file_offset): p for p in mapped.elf.probes if p.file_offset is not None}
        others = Neighbours(sorted(a for a in sites if a is not None))
        for where, probe in sites.items():
            if where is not None:
                paths[where] = plan_of_site(mapped.elf, probe.file_offset, where, others, vmas, start_brk(pid)).path
    return paths


@pytest.mark.parametrize("sample", ["multisite", "basic"])
def test_each_landing_leads_to_its_own_trampoline_as_the_plan_said(build, sample: str) -> None:
    """multisite:step's three pun targets lie 70 bytes apart, one trampoline's length."""
    with started_sample(build.directory / sample) as tracee:
        predicted = planned_paths(tracee.pid)
        with jump_traced(tracee.pid) as trace:
            assert {a.vaddr: isinstance(a.how, Jump) for a in trace.sites} == \
                {a.vaddr: predicted[a.vaddr] != "trap" for a in trace.sites}, trace.refused
            placed = trace.path._mms[trace.mm].sites  # the landings' chosen places: an evicted pun's is not planned
            landings = [placed[a.vaddr].landing for a in trace.sites
                        if isinstance(a.how, Jump) and placed[a.vaddr].landing is not None]
            size = trace.arch.jumps.tramp_size
            trampolines = set()
            with open(f"/proc/{tracee.pid}/mem", "rb", buffering=0) as memory:
                for target in landings:
                    memory.seek(target)
                    jump = memory.read(LANDING_SIZE)
                    assert jump[0] == 0xE9, f"a jmp rel32 at {target:#x}"
                    trampoline = (target + LANDING_SIZE + int.from_bytes(jump[1:], "little", signed=True)) % \
                        (1 << (8 * trace.arch.word_size))
                    assert trampoline not in trampolines
                    trampolines.add(trampoline)
                    assert not [t for t in landings if trampoline < t + LANDING_SIZE and t < trampoline + size]
