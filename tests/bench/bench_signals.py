"""What a tracer's stop at each of the program's own signals costs: samples/bench
raising SIGUSR1 at itself (a handler counts them), untraced, under gdb (``handle
SIGUSR1 nostop noprint pass``), strace (``-e trace=none -e signal=none``: it stops at
each signal all the same), uemu (``run -c``, the jump path on) and uemu ``--no-jumps``.
Prints microseconds per signal and each tracer's ratio to gdb's.

    python3 tests/bench/bench_signals.py [SIGNALS] [--repeat N] [--one-cpu]

Every tracer stops the program at each signal its thread is given and sends the
signal on (ptrace's signal-delivery stop); uemu also asks, at each, whether the thread
is inside the jump path's code.  The program times its own loop, so start-up and
attaching are not counted.  Medians of --repeat interleaved rounds after a warm-up.
With --one-cpu the stop is a context switch on one CPU, not a wake-up on the other,
and the tracers' own work weighs more.
"""

from __future__ import annotations

import shutil
import sys
import tempfile

from bench_hits import BENCH, ROOT, bench_arguments, compile_uemu, interleaved, loop_ns, run_sample

GDB = ["gdb", "-q", "-batch", "-ex", "handle SIGUSR1 nostop noprint pass", "-ex", "run", "--args"]
STRACE = ["strace", "-f", "-qq", "-e", "trace=none", "-e", "signal=none"]


def per_signal_us(prefix: list[str], signals: int) -> float:
    """The sample's ``signal`` loop under ``prefix``, per signal (no other loop runs: 0
    iterations of the probes' loops)."""
    count, ns = loop_ns(run_sample(prefix, 0, arguments=[str(signals)]), "signal")
    if count != signals:
        raise RuntimeError(f"{' '.join(prefix) or 'untraced'}: the handler counted {count} of {signals} signals")
    return ns / count / 1000


def uemu(signals: int, *options: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        return per_signal_us([sys.executable, "-m", "uemu", "run", "-c", *options, "-o", f"{tmp}/counts",
                              "bench:*", "--"], signals)


def main() -> None:
    args = bench_arguments(__doc__, 20_000)
    if not BENCH.exists():
        sys.exit(f"build the samples first: make -C {ROOT / 'samples'}")
    print(compile_uemu())
    n, repeat = args.iterations, args.repeat
    measures = {
        "untraced": lambda: per_signal_us([], n),
        "gdb": lambda: per_signal_us(GDB, n),
        "strace": lambda: per_signal_us(STRACE, n),
        "uemu run -c": lambda: uemu(n),
        "uemu run -c --no-jumps": lambda: uemu(n, "--no-jumps"),
    }
    for tool in ("gdb", "strace"):
        if shutil.which(tool) is None:
            del measures[tool]
            print(f"({tool} is not installed: left out)")
    rows = interleaved(measures, repeat)
    gdb = rows.get("gdb")
    placement = "on one CPU" if args.one_cpu else "on any CPU"
    print(f"SIGUSR1 raised {n} times per run, median of {repeat} runs {placement}; time per signal")
    for name, value in rows.items():
        assert value is not None, "every measure here gives a figure"
        ratio = f"{value / gdb:5.2f}x gdb" if gdb else ""
        print(f"  {name:24} {value:8.2f} us  {ratio}")


if __name__ == "__main__":
    main()
