"""What noticing new mappings costs a whole command, start-up included.

    python3 tests/bench/bench_startup.py [--repeat N] [--timeout S] [--java JAVA] [--python PYTHON]

Each command runs untraced, under `uemu run --count --mappings=rendezvous`
and under `uemu run --count` (the default mode, seccomp), interleaved; the
table gives the medians of --repeat rounds (after one warm-up round) of the
wall time and of the CPU time of the command and uemu together, and the
ratios.  The commands:

  java -version          the JVM's start-up: 445 mapping syscalls, most of
                         them on anonymous memory (skipped without a JDK)
  python3 -c pass        CPython's start-up (the system's, which has SDT
                         probes; skipped when it is missing)
  samples/dlopen         a library with probes loaded, split by mprotect,
                         unloaded and loaded again
  samples/syscalls 2e5   200 anonymous mmap/munmap pairs among 400 000 syscalls
  samples/threads 2000   a swarm: 2000 threads alive at once, each through a
                         probe (a stack mmap, a guard mprotect and a clone each)

A run that takes longer than --timeout seconds is killed with its command
and shown as such (in the other rounds that mode is not run again).

Issue 11's goal: `java -version` in the default mode within 1.3x of the same
under rendezvous.  uemu runs as `python -m uemu` with this interpreter; to
measure another checkout, run its interpreter from outside any checkout
(`-m` puts the working directory first on the path):
`cd / && /other/.venv/bin/python /this/tests/bench/bench_startup.py`.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_hits import compile_uemu, interleaved

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "build"
MODES = {
    "untraced": [],
    "rendezvous": [sys.executable, "-m", "uemu", "run", "--count", "-o", os.devnull, "--mappings=rendezvous", "--"],
    "seccomp": [sys.executable, "-m", "uemu", "run", "--count", "-o", os.devnull, "--"],
}


class Command:
    """One command's runs: wall time returned (None past the timeout), CPU time
    kept beside it."""

    def __init__(self, argv: list[str], timeout: float):
        self.argv = argv
        self.timeout = timeout
        self.cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
        self.timed_out: set[str] = set()

    def run(self, mode: str) -> float | None:
        if mode in self.timed_out:
            return None
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        process = subprocess.Popen([*MODES[mode], *self.argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            code = process.wait(self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # uemu and the command with it
            process.wait()
            self.timed_out.add(mode)
            return None
        wall = time.perf_counter() - start
        if code:
            raise SystemExit(f"{' '.join(self.argv)} under {mode}: exit status {code}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu[mode].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        return wall

    def cpu_median(self, mode: str) -> float | None:
        if mode in self.timed_out:
            return None
        return statistics.median(self.cpu[mode][1:])  # the first is the warm-up round's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before one run is given up")
    parser.add_argument("--java", default=shutil.which("java"), help="the java launcher (default: java on PATH)")
    parser.add_argument("--python", default="/usr/bin/python3", help="a python with SDT probes (default: %(default)s)")
    args = parser.parse_args()
    if not (SAMPLES / "dlopen").exists():
        sys.exit(f"build the samples first: make -C {ROOT / 'samples'}")
    wanted = {
        "java -version": [args.java, "-version"] if args.java else None,
        "python3 -c pass": [args.python, "-c", "pass"] if os.access(args.python, os.X_OK) else None,
        "samples/dlopen": [str(SAMPLES / "dlopen")],
        "samples/syscalls 200000": [str(SAMPLES / "syscalls"), "200000"],
        "samples/threads 2000": [str(SAMPLES / "threads"), "2000", "1"],
    }
    commands = {name: Command(argv, args.timeout) for name, argv in wanted.items() if argv is not None}
    for name in wanted.keys() - commands.keys():
        print(f"{name}: skipped, not installed (--java, --python)")
    print(compile_uemu())
    print(f"medians of {args.repeat} interleaved rounds; CPU: the command and uemu together")
    for name, command in commands.items():
        walls = interleaved({mode: functools.partial(command.run, mode) for mode in MODES}, args.repeat)
        base_wall, base_cpu = walls["untraced"], command.cpu_median("untraced")
        print(name, flush=True)
        for mode in MODES:
            wall, cpu = walls[mode], command.cpu_median(mode)
            if wall is None or cpu is None:
                print(f"  {mode:11} killed after {args.timeout:.0f} s")
                continue
            print(f"  {mode:11} {wall:7.3f} s wall {_ratio(wall, base_wall)}   "
                  f"{cpu:7.3f} s CPU {_ratio(cpu, base_cpu)}")
        print(f"  seccomp / rendezvous: {_ratio(walls['seccomp'], walls['rendezvous'])} wall, "
              f"{_ratio(command.cpu_median('seccomp'), command.cpu_median('rendezvous'))} CPU", flush=True)


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None:
        return "     -"
    return f"{value / base:6.2f}x" if base > 0 else "     -"


if __name__ == "__main__":
    main()
