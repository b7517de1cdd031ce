"""Per-hit cost of an SDT probe: untraced, kernel uprobe, a raw ctypes ptrace
loop (the floor any Python tracer can reach), and uemu (--count, and --json to
a file).  Prints microseconds per hit and the ratios.

    python3 tests/bench/bench_hits.py [ITERATIONS] [--repeat N] [--one-cpu]

The tight loop is samples/bench (``bench:sema``: a semaphore-guarded probe
with two arguments); the program times its own loops, so start-up and
attach costs are not counted.  Every figure is the median of --repeat
interleaved rounds, after one warm-up round.  With --one-cpu every process
runs on one CPU: a stop is then a plain context switch instead of a wake-up on
another CPU, so the floor is lower and uemu's own work weighs more.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from ptrace.binding.linux_struct import user_regs_struct

from uemu import sdt
from uemu.maps import read_maps

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "samples" / "build" / "bench"
PROBE = "bench:sema"
TRACEFS = Path("/sys/kernel/tracing")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
_libc.ptrace.restype = ctypes.c_long
PTRACE_TRACEME, PTRACE_CONT, PTRACE_GETREGS, PTRACE_SETREGS = 0, 7, 12, 13


def loop_ns(output: str, probe: str) -> tuple[int, int]:
    """(iterations, nanoseconds) of one timed loop from the sample's ``time`` lines."""
    for line in output.splitlines():
        fields = line.split()
        if fields[:1] == ["time"] and fields[3] == probe:
            return int(fields[4]), int(fields[5])
    raise RuntimeError(f"no time line for {probe} in:\n{output}")


def per_hit_us(output: str) -> float:
    count, probed = loop_ns(output, PROBE)
    _, empty = loop_ns(output, "none")
    return (probed - empty) / count / 1000


def run_sample(argv_prefix: list[str], iterations: int, program: Path = BENCH, arguments: Sequence[str] = ()) -> str:
    """The sample's own lines from one run of ``program ITERATIONS [ARGUMENTS]`` under
    ``argv_prefix``."""
    with tempfile.NamedTemporaryFile("r") as out:
        environment = dict(os.environ, SAMPLE_OUT=out.name)
        subprocess.run([*argv_prefix, str(program), str(iterations), *arguments], check=True, env=environment,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return out.read()


def the_site() -> sdt.Probe:
    probes = [p for p in sdt.open_elf(str(BENCH)).probes if p.full_name == PROBE]
    if len(probes) != 1:
        raise RuntimeError(f"expected one site of {PROBE} in {BENCH}")
    return probes[0]


# ---- the measurements ------------------------------------------------------------


def untraced(iterations: int) -> float:
    return per_hit_us(run_sample([], iterations))


def uemu(iterations: int, *options: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "uemu", "run", *options, "-o", f"{tmp}/events", PROBE, "--"]
        return per_hit_us(run_sample(command, iterations))


def kernel_uprobe(iterations: int) -> float | None:
    """A tracefs uprobe at the site with its ref_ctr_offset, enabled while the sample runs."""
    events = TRACEFS / "uprobe_events"
    if not os.access(events, os.W_OK):
        return None
    site = the_site()
    place = f"{BENCH}:{site.file_offset:#x}({site.semaphore_offset:#x})"
    _tracefs_append(events, f"p:uemu_bench/hit {place}\n")
    enable = TRACEFS / "events/uemu_bench/hit/enable"
    try:
        enable.write_text("1")
        return per_hit_us(run_sample([], iterations))
    finally:
        enable.write_text("0")
        _tracefs_append(events, "-:uemu_bench/hit\n")


def _tracefs_append(path: Path, text: str) -> None:
    """One O_APPEND write (Python's "a" mode seeks, which tracefs refuses)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def ctypes_floor(iterations: int) -> float:
    """The least a Python tracer can do per hit: int3 at the site, the semaphore
    raised, then per stop GETREGS, set ip past the int3 with SETREGS, CONT."""
    site = the_site()
    with tempfile.NamedTemporaryFile("r") as out:
        pid = os.fork()
        if pid == 0:
            os.environ["SAMPLE_OUT"] = out.name
            _libc.ptrace(PTRACE_TRACEME, 0, None, None)
            os.kill(os.getpid(), signal.SIGSTOP)
            os.execv(str(BENCH), [str(BENCH), str(iterations)])
        os.waitpid(pid, 0)  # SIGSTOP
        _libc.ptrace(PTRACE_CONT, pid, None, None)
        os.waitpid(pid, 0)  # the exec SIGTRAP
        vmas = [v for v in read_maps(pid) if v.path == str(BENCH)]
        address = next(v.offset_to_vaddr(site.file_offset) for v in vmas
                       if v.executable and v.covers_offset(site.file_offset))
        semaphore = next(v.offset_to_vaddr(site.semaphore_offset) for v in vmas
                         if v.writable and v.covers_offset(site.semaphore_offset))
        with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(address)
            mem.write(b"\xcc")
            mem.seek(semaphore)
            mem.write((1).to_bytes(2, "little"))
        regs = user_regs_struct()
        regs_ref = ctypes.byref(regs)
        _libc.ptrace(PTRACE_CONT, pid, None, None)
        while True:
            _, status = os.waitpid(pid, 0)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                break
            _libc.ptrace(PTRACE_GETREGS, pid, None, regs_ref)
            regs.rip = address + 1
            _libc.ptrace(PTRACE_SETREGS, pid, None, regs_ref)
            _libc.ptrace(PTRACE_CONT, pid, None, None)
        return per_hit_us(out.read())


def interleaved(measures: dict[str, Callable[[], float | None]], repeat: int) -> dict[str, float | None]:
    """Median of ``repeat`` rounds; each round runs every measure once, so a busy
    moment of the machine weighs on all of them alike.  One warm-up round first."""
    samples: dict[str, list[float | None]] = {name: [] for name in measures}
    for round_number in range(repeat + 1):
        for name, measure in measures.items():
            value = measure()
            if round_number:
                samples[name].append(value)
    return {name: None if None in values else statistics.median(values) for name, values in samples.items()}


def compile_uemu() -> str:
    """Write the bytecode of the uemu the benches run, as an installed package has it,
    and say so.  PYTHONDONTWRITEBYTECODE (set where these benches ran) keeps the
    interpreter from writing it, not from reading it: without it each uemu start
    compiled its modules first, 0.2-0.5 s of a whole command's figure."""
    import compileall
    import importlib

    folders = [os.path.dirname(importlib.import_module(name).__file__ or "") for name in ("uemu", "uemu.arch")]
    written = all(compileall.compile_dir(folder, quiet=1) for folder in folders)
    return f"uemu's bytecode {'written' if written else 'NOT written (each run compiles uemu)'}: {', '.join(folders)}"


def pin_to_one_cpu() -> None:
    """This process and every one it starts run on one CPU."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def bench_arguments(doc: str | None, iterations: int) -> argparse.Namespace:
    """The benches' command line: [ITERATIONS] [--repeat N] [--one-cpu], the last applied here."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("iterations", type=int, nargs="?", default=iterations)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--one-cpu", action="store_true", help="run everything on one CPU (inherited affinity)")
    args = parser.parse_args()
    if args.one_cpu:
        pin_to_one_cpu()
    return args


def main() -> None:
    args = bench_arguments(__doc__, 100_000)
    if not BENCH.exists():
        sys.exit(f"build the samples first: make -C {ROOT / 'samples'}")
    n, repeat = args.iterations, args.repeat
    rows = interleaved({
        "untraced": lambda: untraced(n),
        "kernel uprobe (tracefs)": lambda: kernel_uprobe(n),
        "ctypes ptrace floor": lambda: ctypes_floor(n),
        "uemu --count": lambda: uemu(n, "--count"),
        "uemu --json -o FILE": lambda: uemu(n, "--json"),
    }, repeat)
    floor = rows["ctypes ptrace floor"]
    placement = "on one CPU" if args.one_cpu else "on any CPU"
    print(f"{PROBE}, {n} hits per run, median of {repeat} runs {placement}; cost per hit over the empty loop")
    for name, value in rows.items():
        if value is None:
            print(f"  {name:28} unavailable (needs root and tracefs)")
            continue
        ratio = f"{value / floor:5.2f}x floor" if floor else ""
        print(f"  {name:28} {value:8.2f} us  {ratio}")
    print("targets: uemu --count <= 1.2x floor, uemu --json <= 1.5x floor")


if __name__ == "__main__":
    main()
