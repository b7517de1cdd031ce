"""The jump path (issue 12): cost per hit beside the trap path and a kernel uprobe on the
same site, and the share of real SDT sites that can take a jump.

    python3 tests/bench/bench_jumps.py [ITERATIONS] [--repeat N] [--shares-only | --per-hit-only]

Per hit: samples/bench's timed loops (the program times itself, so starting and arming
are not counted) untraced, under a kernel uprobe (tracefs, with its ref_ctr_offset),
bare and fetching the site's arguments as uemu's records do (``kernel + args``),
under ``uemu run`` (the jump path, the default: the SDT nops are punned, bench:evict's
with its successor evicted) counting only
(``-c``: each hit adds to a counter in the target, no record) and writing every event
to a file (``--json``: a record per hit in the ring, read by uemu), and under ``uemu run --no-jumps`` (the trap path; a
twentieth of the iterations: it is that much slower).  Cost per hit = (loop with the
probe - empty loop) / hits.  The goal: a jumped hit at most 0.05x a kernel uprobe.

Shares: per object, how many of its SDT sites take a jump (a whole jmp, or a pun whose
target is free), judged from the file (a pun target inside the object's own image keeps
the trap) and, where the program can be started here, in a running process (its
mappings, heap and stack decide).  Objects: Debian's python3.11 and libpython3.11,
PostgreSQL 15's postgres, OpenJDK 17's libjvm.so, libstdc++.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests" / "bench"), str(ROOT / "tests" / "integration")]

from bench_hits import BENCH, _tracefs_append, loop_ns, run_sample  # noqa: E402
from oracle import fetcharg  # noqa: E402

from uemu import argspec, sdt  # noqa: E402
from uemu.jumpplan import Neighbours, plan_of_site  # noqa: E402
from uemu.maps import read_maps  # noqa: E402
from uemu.objects import mapped_objects  # noqa: E402
from uemu.process import start_brk  # noqa: E402

TRACEFS = Path("/sys/kernel/tracing")
PROBES = tuple(name for name in ("bench:nop", "bench:sema", "bench:evict")
               if name in {p.full_name for p in sdt.open_elf(str(BENCH)).probes})
"""bench:evict (x86): a pun whose own target is in the program's text, its successor evicted."""
OBJECTS = {
    "python3.11": "/usr/bin/python3.11",
    "libpython3.11": "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0",
    "postgres": "/usr/lib/postgresql/15/bin/postgres",
    "libjvm.so": "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so",
    "libstdc++": "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
}


def per_hit_ns(output: str, probe: str) -> float:
    count, probed = loop_ns(output, probe)
    _, empty = loop_ns(output, "none")
    return (probed - empty) / count


# ---- per hit ----------------------------------------------------------------------------


def untraced(n: int) -> dict[str, float]:
    output = run_sample([], n)
    return {probe: per_hit_ns(output, probe) for probe in PROBES}


def kernel(n: int, with_args: bool = False) -> dict[str, float] | None:
    """A tracefs uprobe on each site (with its ref_ctr_offset: the guarded loop runs);
    ``with_args``: fetching the site's arguments too, as uemu's records carry them (the
    tests' kernel oracle's fetch-args)."""
    events = TRACEFS / "uprobe_events"
    if not os.access(events, os.W_OK):
        return None
    elf = sdt.open_elf(str(BENCH))
    sites = {p.full_name: p for p in elf.probes if p.full_name in PROBES}
    out = {}
    for probe, site in sites.items():
        ref = f"({site.semaphore_offset:#x})" if site.semaphore_offset else ""
        specs = argspec.parse_all(site.args, elf.arch_name) if with_args else []
        fetched = [fetcharg(spec, elf, site.address) for spec in specs]
        if None in fetched:
            return None  # not like for like
        fetch = "".join(f" a{i}={arg}" for i, arg in enumerate(fetched))
        _tracefs_append(events, f"p:uemu_bench_jumps/hit {BENCH}:{site.file_offset:#x}{ref}{fetch}\n")
        enable = TRACEFS / "events/uemu_bench_jumps/hit/enable"
        try:
            enable.write_text("1")
            out[probe] = per_hit_ns(run_sample([], n), probe)
        finally:
            enable.write_text("0")
            _tracefs_append(events, "-:uemu_bench_jumps/hit\n")
    return out


def under_uemu(*options: str, share: int = 1) -> Callable[[int], dict[str, float]]:
    """samples/bench under ``uemu run OPTIONS`` (``share``: run 1/share of the iterations)."""

    def measure(n: int) -> dict[str, float]:
        with tempfile.TemporaryDirectory() as tmp:
            output = run_sample([sys.executable, "-m", "uemu", "run", *options, "-o", f"{tmp}/events", "--"],
                                max(n // share, 1000))
        return {probe: per_hit_ns(output, probe) for probe in PROBES}

    return measure


def per_hit(n: int, repeat: int) -> None:
    """Median of ``repeat`` interleaved rounds, after a warm-up round (as bench_hits)."""
    measures: dict[str, Callable[[int], dict[str, float] | None]] = {
        "untraced": untraced,
        "kernel uprobe": kernel,
        "kernel + args": lambda n: kernel(n, with_args=True),
        "jump path -c": under_uemu("-c"),
        "jump path events": under_uemu("--json"),
        "trap path -c": under_uemu("-c", "--no-jumps", share=20),
    }
    samples: dict[str, dict[str, list[float]]] = {name: {probe: [] for probe in PROBES} for name in measures}
    for round_number in range(repeat + 1):
        for name, measure in measures.items():
            value = measure(n)
            if round_number and value is not None:
                for probe in PROBES:
                    samples[name][probe].append(value[probe])
    rows = {name: {probe: statistics.median(values) for probe, values in by_probe.items() if values}
            for name, by_probe in samples.items()}
    print(f"per hit, ns over the empty loop, {n} hits per loop (trap path {n // 20}), "
          f"median of {repeat} interleaved runs")
    for probe in PROBES:
        print(f"  {probe}")
        kernel_ns = rows["kernel uprobe"].get(probe)
        args_ns = rows["kernel + args"].get(probe)
        trap_ns = rows["trap path -c"].get(probe)
        for name in measures:
            value = rows[name].get(probe)
            if value is None:
                print(f"    {name:17} unavailable")
                continue
            ratios = []
            if kernel_ns and not name.startswith(("kernel", "untraced")):
                ratios.append(f"{value / kernel_ns:.3f}x kernel")
            if args_ns and name == "jump path events":
                ratios.append(f"{value / args_ns:.3f}x kernel + args")
            if trap_ns and name.startswith("jump"):
                ratios.append(f"{value / trap_ns:.4f}x trap path")
            print(f"    {name:17} {value:9.1f}   {'   '.join(ratios)}")
    print("  goal: jump path <= 0.05x kernel uprobe (events carry the arguments: 'kernel + args' fetches them too)")


# ---- shares -------------------------------------------------------------------------------


def file_share(path: str) -> Counter[str]:
    elf = sdt.open_elf(path)
    neighbours = Neighbours(sorted(p.address for p in elf.probes))
    return Counter(plan_of_site(elf, p.file_offset, p.address, neighbours).path
                   for p in elf.probes if p.file_offset is not None)


def process_share(pid: int, path: str) -> Counter[str] | None:
    objects, _ = mapped_objects(pid, read_maps(pid))
    mapped = next((o for o in objects if os.path.realpath(o.elf.path) == os.path.realpath(path)), None)
    if mapped is None:
        return None
    vmas, brk = read_maps(pid), start_brk(pid)
    offsets = sorted(p.file_offset for p in mapped.elf.probes if p.file_offset is not None)
    out: Counter[str] = Counter()
    for offset in offsets:
        where = mapped.runtime_address(offset)
        if where is not None:
            out[plan_of_site(mapped.elf, offset, where, Neighbours(offsets, where - offset), vmas, brk).path] += 1
    return out


def running(name: str, tmp: Path) -> subprocess.Popen | None:
    """A process that maps the object, idle for a while; None where it cannot be started here."""
    if name == "python3.11":
        return subprocess.Popen(["/usr/bin/python3.11", "-c", "import time; time.sleep(30)"])
    if name == "libstdc++" and shutil.which("gdb"):
        return subprocess.Popen(["gdb", "-q", "-batch", "-ex", "shell sleep 30"], stdout=subprocess.DEVNULL)
    if name == "libjvm.so" and shutil.which("javac"):
        (tmp / "Idle.java").write_text("class Idle { public static void main(String[] a) throws Exception "
                                       "{ Thread.sleep(30000); } }")
        subprocess.run(["javac", "-d", str(tmp), str(tmp / "Idle.java")], check=True)
        return subprocess.Popen(["java", "-cp", str(tmp), "Idle"])
    return None


def shares() -> None:
    print("share of SDT sites that can take a jump (jump + pun + evict of all sites)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in OBJECTS.items():
            if not os.path.exists(path):
                print(f"  {name:11} not installed")
                continue
            static = file_share(path)
            line = f"  {name:11} file: {_share(static)}"
            process = running(name, Path(tmp))
            if process is not None:
                try:
                    time.sleep(3 if name == "libjvm.so" else 1)
                    live = process_share(process.pid, path)
                    if live is not None:
                        line += f"   in a process: {_share(live)}"
                finally:
                    process.kill()
                    process.wait()
            print(line)


def _share(counts: Counter[str]) -> str:
    total = sum(counts.values())
    jumps = counts["jump"] + counts["pun"] + counts["evict"]
    return f"{jumps}/{total} ({100 * jumps / total:.0f}%: {counts['jump']} jump, {counts['pun']} pun, " \
           f"{counts['evict']} evict, {counts['trap']} trap)" if total else "no sites"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("iterations", type=int, nargs="?", default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--shares-only", action="store_true")
    only.add_argument("--per-hit-only", action="store_true")
    args = parser.parse_args()
    if not args.shares_only:
        if not BENCH.exists():
            sys.exit(f"build the samples first: make -C {ROOT / 'samples'}")
        per_hit(args.iterations, args.repeat)
    if not args.per_hit_only:
        shares()


if __name__ == "__main__":
    main()
