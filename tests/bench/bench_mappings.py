"""What each way of noticing new mappings costs a syscall-heavy program.

    python3 tests/bench/bench_mappings.py [ITERATIONS] [--repeat N]

samples/syscalls runs ITERATIONS getpid() + 1-byte read() pairs (and an
anonymous mmap/munmap every 1000th) and times its own loop.  It runs untraced,
then under `uemu run --mappings=MODE` for each mode; the table gives the loop's
time, the time per syscall, and the slowdown against untraced.  Medians of
--repeat interleaved rounds after one warm-up round.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_hits import interleaved, loop_ns, run_sample

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = ROOT / "samples" / "build" / "syscalls"
MODES = ("exec", "rendezvous", "seccomp", "syscall")


def loop_ms(prefix: list[str], iterations: int) -> float:
    count, ns = loop_ns(run_sample(prefix, iterations, program=PROGRAM), "syscalls")
    assert count == iterations
    return ns / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("iterations", type=int, nargs="?", default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not PROGRAM.exists():
        sys.exit(f"build the samples first: make -C {ROOT / 'samples'}")
    n = args.iterations
    measures = {"untraced": lambda: loop_ms([], n)}
    for mode in MODES:
        command = [sys.executable, "-m", "uemu", "run", "--count", "-o", "/dev/null", f"--mappings={mode}", "--"]
        measures[mode] = lambda command=command: loop_ms(command, n)
    rows = interleaved(measures, args.repeat)
    syscalls = 2 * n + 2 * (n // 1000 + 1)
    print(f"samples/syscalls: {syscalls} syscalls per run, median of {args.repeat} rounds")
    base = rows["untraced"]
    for name, value in rows.items():
        print(f"  {name:12} {value:9.1f} ms  {value * 1e3 / syscalls:8.3f} us/syscall  {value / base:7.2f}x untraced")
    print("exact for a raw mmap of an ELF: seccomp, syscall; dlopen/dlclose only: rendezvous; neither: exec")


if __name__ == "__main__":
    main()
