"""Per-hit cost of a probe run out of line, one stop and two, beside the least a
Python tracer can do for each.  Prints microseconds per hit and the ratios.

    python3 tests/bench/bench_xol.py [ITERATIONS] [--repeat N] [--one-cpu]

The probe is on the first instruction of mix() in samples/rawprobes (an ALU
instruction, ``PATH:SYMBOL``), in a tight loop the program times itself
(``rawprobes time N``: the loop over mix() minus the same loop over its unprobed
twin, so start-up and attach costs are not counted).  Rows:

- untraced, and a kernel uprobe (tracefs) at the same place;
- one stop: the slot ends with a jump back (uemu's plan while its XOL area is
  within rel32 reach).  Floor: a ctypes loop that per hit does GETREGS, SETREGS
  ip = slot (the instruction and a jmp back, written once), CONT;
- two stops: the slot is single-stepped.  ``rawprobes time N far`` first fills
  the address space within 3 GiB of its code, so uemu's XOL area lands out of
  rel32 reach and no slot can jump back.  Floor: GETREGS, SETREGS ip = slot,
  SINGLESTEP, GETREGS, SETREGS ip back, CONT.  Beside it, uemu on mix()'s ``ret``,
  which needs two stops wherever its slot is.

Every figure is the median of --repeat interleaved rounds, after one warm-up round.
With --one-cpu every process runs on one CPU: a stop there is a plain context
switch, where across two CPUs each side also waits for the other to wake up
(on the 2-CPU test VM: about 12 us against 50 us per stop for the floor).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench_hits import PTRACE_CONT, PTRACE_GETREGS, PTRACE_SETREGS, _libc, bench_arguments, interleaved, loop_ns
from ptrace.binding.linux_struct import user_regs_struct

from uemu import arch, sdt
from uemu.arch.x86 import X86Step
from uemu.maps import read_maps

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from oracle import KernelUprobes, tracefs_reason  # noqa: E402
from test_xol import sites  # noqa: E402

RAWPROBES = ROOT / "samples" / "build" / "rawprobes"
PROBED = "rawprobes:mix"
PTRACE_SINGLESTEP, PTRACE_SEIZE, PTRACE_INTERRUPT = 9, 0x4206, 0x4207
TARGET = 1.3


def per_hit_us(output: str) -> float:
    count, probed = loop_ns(output, PROBED)
    _, empty = loop_ns(output, "none")
    return (probed - empty) / count / 1000


def run_rawprobes(prefix: Sequence[str], iterations: int, far: bool) -> float:
    with tempfile.NamedTemporaryFile("r") as out:
        env = {k: v for k, v in os.environ.items() if k != "SAMPLE_SYNC"}
        env["SAMPLE_OUT"] = out.name
        subprocess.run([*prefix, str(RAWPROBES), "time", str(iterations), *(["far"] if far else [])], check=True,
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return per_hit_us(out.read())


def uemu(iterations: int, probe: str, far: bool = False) -> float:
    return run_rawprobes([sys.executable, "-m", "uemu", "run", "--count", "-o", os.devnull, probe, "--"],
                         iterations, far)


def kernel_uprobe(iterations: int, file_offset: int) -> float | None:
    if tracefs_reason() is not None:
        return None
    elf = sdt.open_elf(str(RAWPROBES))
    site = sdt.Probe(str(RAWPROBES), "raw", "mix", elf.vaddr(file_offset), file_offset, None, None, "", None, -1)
    with KernelUprobes([(elf, site)], with_args=False):
        return run_rawprobes([], iterations, far=False)


def ctypes_floor(iterations: int, file_offset: int, stops: int) -> float:
    """Out of line by hand: the program seized at its start sync, the instruction
    copied once to a slot in the unused tail of its text mapping, int3 at the site;
    then per hit the least work, one ptrace call after another."""
    with RAWPROBES.open("rb") as stream:
        stream.seek(file_offset)
        code = stream.read(16)
    plan = arch.by_name("x86_64").backend.analyze(code, 0)
    assert isinstance(plan, X86Step) and plan.riprel is None, plan
    with tempfile.NamedTemporaryFile("r") as out:
        env = dict(os.environ, SAMPLE_OUT=out.name, SAMPLE_SYNC="1")
        program = subprocess.Popen([str(RAWPROBES), "time", str(iterations)], env=env, stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL)
        pid = program.pid
        while "sync" not in out.read():
            out.seek(0)
            time.sleep(0.001)
        _libc.ptrace(PTRACE_SEIZE, pid, None, None)
        _libc.ptrace(PTRACE_INTERRUPT, pid, None, None)
        os.waitpid(pid, 0)
        [text] = [v for v in read_maps(pid) if v.path == str(RAWPROBES) and v.executable]
        [segment] = [s for s in sdt.open_elf(str(RAWPROBES)).segments if s.executable]
        address = text.offset_to_vaddr(file_offset)
        slot = text.end - 32
        assert slot >= text.offset_to_vaddr(segment.p_offset + segment.p_filesz), "no room after the code"
        back = (address + plan.size) - (slot + plan.size + 5)
        with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(slot)
            mem.write(plan.code + (b"\xe9" + back.to_bytes(4, "little", signed=True) if stops == 1 else b""))
            mem.seek(address)
            mem.write(b"\xcc")
        regs = user_regs_struct()
        regs_ref = ctypes.byref(regs)
        ptrace = _libc.ptrace
        ptrace(PTRACE_CONT, pid, None, None)
        program.stdin.write(b"\n\n")  # past both syncs, start and end
        program.stdin.close()
        while os.WIFSTOPPED(os.waitpid(pid, 0)[1]):
            ptrace(PTRACE_GETREGS, pid, None, regs_ref)
            regs.rip = slot
            ptrace(PTRACE_SETREGS, pid, None, regs_ref)
            if stops == 2:
                ptrace(PTRACE_SINGLESTEP, pid, None, None)
                os.waitpid(pid, 0)
                ptrace(PTRACE_GETREGS, pid, None, regs_ref)
                regs.rip += address - slot
                ptrace(PTRACE_SETREGS, pid, None, regs_ref)
            ptrace(PTRACE_CONT, pid, None, None)
        program.wait()  # reaped above: Popen only records it
        out.seek(0)
        return per_hit_us(out.read())


def main() -> None:
    args = bench_arguments(__doc__, 50_000)
    if not RAWPROBES.exists():
        sys.exit(f"build the samples first: make -C {ROOT / 'samples'}")
    mix = [site for site in sites(RAWPROBES) if site.function == "mix"]
    first, ret = mix[0], next(site for site in mix if site.kind == "ret")
    if (first.near, first.far, ret.near) != ("jump", "step", "step"):
        sys.exit(f"mix() does not start with an instruction uemu steps in one stop near and two far: {first}")
    n, repeat = args.iterations, args.repeat
    entry, at_ret = f"{RAWPROBES}:mix", f"{RAWPROBES}:mix+{ret.offset:#x}"
    rows = interleaved({
        "untraced": lambda: run_rawprobes([], n, far=False),
        "kernel uprobe (tracefs)": lambda: kernel_uprobe(n, first.file_offset),
        "one stop: ctypes floor": lambda: ctypes_floor(n, first.file_offset, stops=1),
        "one stop: uemu (jump slot)": lambda: uemu(n, entry),
        "two stops: ctypes floor": lambda: ctypes_floor(n, first.file_offset, stops=2),
        "two stops: uemu (slot out of reach)": lambda: uemu(n, entry, far=True),
        "two stops: uemu (ret)": lambda: uemu(n, at_ret),
    }, repeat)
    placement = "on one CPU" if args.one_cpu else "on any CPU"
    print(f"{PROBED} at +0 ({first.text}) and +{ret.offset:#x} (ret), {n} hits per run, median of {repeat} runs "
          f"{placement}; cost per hit over the unprobed loop")
    for name, value in rows.items():
        if value is None:
            print(f"  {name:36} unavailable (needs root and tracefs)")
            continue
        floor = rows.get(f"{name.split(':')[0]}: ctypes floor")
        ratio = f"{value / floor:5.2f}x floor" if floor and "floor" not in name else ""
        print(f"  {name:36} {value:8.2f} us  {ratio}")
    print(f"target: uemu within {TARGET}x of the matching floor")


if __name__ == "__main__":
    main()
