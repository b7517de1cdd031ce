"""The jump path (issue 12) on real software, beside bpftrace and the trap path.

    python3 tests/bench/bench_real.py [--repeat N] [--only pgbench,python,java]
                                      [--transactions T] [--fib N]

Each workload runs untraced, under bpftrace (the same probes, counting; attached before
the command starts, so its start is not counted; for python also ``bpftrace -c``, which
starts the command itself as ``uemu run`` does, its start counted as uemu's is), under
``uemu -c`` (the jump path, the default: counted in the target), ``uemu --json`` (the
jump path, a record per hit read by uemu, counted here from the events) and
``uemu --no-jumps -c`` (the trap path), and for python ``uemu attach -c`` (attached to the
command before it runs, as bpftrace is, its start not counted), interleaved: a round runs every mode once,
after one warm-up round; figures are the medians of --repeat rounds, each with the
1-minute load average when it started.

- pgbench: ``pgbench -S -c 4 -j 2 -t T`` on a throw-away cluster (autovacuum off),
  ``postgresql:transaction__start`` and ``postgresql:query__start`` on every backend
  (uemu attach -f to the postmaster; bpftrace on the file, kept to the cluster's user).
  The server restarts at each round: its address space layout decides which pun
  targets are free (query__start's falls where the heap may grow in about 1 layout in 4).
  Figure: pgbench's tps (without connection time).  Goal: uemu >= 0.95x untraced.
- python: Debian's python3.11 runs a script (recursion, imports, gc) with every
  ``python:*`` probe (the line probe's semaphore turns on function__entry/return).
  Figure: wall seconds of the whole command (the pause below not counted).
  Goal: uemu no slower than bpftrace.
- java: OpenJDK 17 runs a class that starts threads, with hotspot's thread__start,
  thread__stop and class__loaded probes.  Figure: wall seconds.

A ratio is of the medians, and "by round" the median of each round's ratio to that
round's untraced run (rounds run back to back: this machine's speed drifts between
rounds by more than the goals' margins).

Per run: the hits per probe (bpftrace's are the oracle: uemu's must be equal; a
difference is printed as MISMATCH with the command to reproduce it), how many probed
sites took a jump (the byte at each site, read in the traced processes: 0xe9 a jump
or pun, 0xcc a trap) and the jump path's lost hits uemu reported.  The python and
java programs pause once before their work so the sites can be read; the pause is
not counted in their wall time.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests" / "bench"), str(ROOT / "tests" / "integration")]

from bench_hits import compile_uemu, interleaved  # noqa: E402
from pgcluster import PostgresCluster  # noqa: E402

from uemu import process  # noqa: E402
from uemu.errors import UemuError  # noqa: E402
from uemu.maps import read_maps  # noqa: E402
from uemu.objects import mapped_objects  # noqa: E402

UEMU = [sys.executable, "-m", "uemu"]
UEMU_MODES = {  # uemu's options in each of its modes
    "uemu": ["-c"],
    "uemu --json": ["--json"],
    "uemu --no-jumps": ["--no-jumps", "-c"],
}
"""-c counts in the target on the jump path; --json makes a record per hit, read by uemu."""
MODES = ("untraced", "bpftrace", *UEMU_MODES)
BPFTRACE_C = "bpftrace -c"
"""bpftrace starting the command itself, as ``uemu run`` does (python; java's probes are in
a library -c cannot find before it is loaded): its start is counted as uemu's is; the
``bpftrace`` mode attaches before the command and leaves it out."""
UEMU_ATTACH = "uemu attach"
"""``uemu attach -c`` to the command, started stopped before its exec (python): attached
before the command runs, as the ``bpftrace`` mode is, so neither tool's start is counted
and both see every hit."""
COMMAND_MODES = ("untraced", "bpftrace", BPFTRACE_C, *UEMU_MODES, UEMU_ATTACH)
PYTHON = "/usr/bin/python3.11"
POSTGRES_BIN = "/usr/lib/postgresql/15/bin/postgres"
JAVA_HOME = "/usr/lib/jvm/java-17-openjdk-amd64"
JAVA_LAUNCHER = f"{JAVA_HOME}/bin/java"
LIBJVM = f"{JAVA_HOME}/lib/server/libjvm.so"
CLIENTS = 4
PG_PROBES = ("postgresql:transaction__start", "postgresql:query__start")
JAVA_PROBES = ("hotspot:thread__start", "hotspot:thread__stop", "hotspot:class__loaded")
SITE_BYTES = {0xE9: "jump", 0xCC: "trap", 0x90: "nop"}
PAUSE = "REALBENCH_PAUSE"
BPFTRACE_SETTLE = 1.0
"""Seconds to wait after bpftrace's BEGIN: without it, bpftrace 0.17 here missed the first hits
of a process started at once (python's first 2% of hits, pgbench's first connection)."""
BPFTRACE_STOP_TRIES = 5
BPFTRACE_STOP_WAIT = 20.0  # seconds for bpftrace to print its maps and exit at a SIGINT
PROGRAM_USER = "daemon"
"""python and java run as this user: bpftrace, which sees every process, keeps to it."""

SCRIPT = f"""\
import gc, os, sys, time
if os.environ.get("{PAUSE}"):
    print("pid", os.getpid(), flush=True)
    sys.stdin.readline()
start = time.perf_counter()
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
import json, decimal, fractions, statistics
total = fib(int(sys.argv[1]))
for _ in range(3):
    gc.collect()
print(total)
print("work", time.perf_counter() - start)
"""

JAVA = f"""\
public class Threads {{
    public static void main(String[] args) throws Exception {{
        if (System.getenv("{PAUSE}") != null) {{
            System.out.println("pid " + ProcessHandle.current().pid());
            System.out.flush();
            new java.io.BufferedReader(new java.io.InputStreamReader(System.in)).readLine();
        }}
        long start = System.nanoTime();
        Thread[] threads = new Thread[Integer.parseInt(args[0])];
        for (int i = 0; i < threads.length; i++) {{
            threads[i] = new Thread(() -> java.util.List.of(1, 2, 3).hashCode());
            threads[i].start();
        }}
        for (Thread t : threads) t.join();
        System.out.println("work " + (System.nanoTime() - start) / 1e9);
    }}
}}
"""


@dataclass
class Run:
    """One run of one mode: its figure, the 1-minute load when it began, hits per
    probe (bpftrace and uemu), the probed sites' bytes, the jump path's lost hits."""

    figure: float
    load: float
    counts: Counter[str] = field(default_factory=Counter)
    sites: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    work: float | None = None
    """The program's own time for its work (python, java), seconds."""
    tracer_cpu: float | None = None
    """uemu's CPU seconds (all its threads) while attached (pgbench)."""


@dataclass
class Workload:
    name: str
    unit: str
    higher_is_better: bool
    object_path: str
    probes: tuple[str, ...]
    modes: tuple[str, ...] = MODES
    runs: dict[str, list[Run]] = field(init=False)
    reproduce: dict[str, str] = field(default_factory=dict)
    expected: Counter[str] = field(default_factory=Counter)
    """The hits the workload makes, where it says so itself (else bpftrace's are the oracle)."""

    def __post_init__(self) -> None:
        self.runs = {mode: [] for mode in self.modes}

    def record(self, mode: str, run: Run) -> float:
        self.runs[mode].append(run)
        return run.figure


# ---- reading what the tracers say and what the processes hold --------------------------------------


def bpftrace_program(path: str, probes: Iterable[str], predicate: str = "") -> str:
    targets = ",".join(f"usdt:{path}:{probe}" for probe in probes)
    return f'BEGIN {{ printf("ready\\n"); }} {targets} {predicate} {{ @[probe] = count(); }}'


def bpftrace_counts(output: str) -> Counter[str]:
    """``@[usdt:PATH:PROVIDER:NAME]: N`` lines, keyed PROVIDER:NAME."""
    return Counter({m[1]: int(m[2]) for m in re.finditer(r"^@\[usdt:[^:]+:(\S+)\]: (\d+)$", output, re.M)})


def uemu_counts(path: Path) -> Counter[str]:
    """``uemu -c``'s ``PROVIDER:NAME N`` lines, or the hits of ``--json``'s events."""
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            counts[f"{event['provider']}:{event['name']}"] += 1
            continue
        name, _, number = line.rpartition(" ")
        if name and number.isdigit():
            counts[name.rpartition(" ")[2] if " " in name else name] += int(number)
    return counts


def uemu_lost(stderr: str) -> int:
    """The jump path's lost hits uemu reported; -1 when another tracer's breakpoint was
    at a site (a kernel uprobe on the same file from other work on the machine: the run
    is not uemu's alone)."""
    if "holds another tracer's breakpoint" in stderr:
        return -1
    found = re.search(r"(\d+) hits? of the jump path lost", stderr)
    return int(found[1]) if found else 0


def site_bytes(pid: int, path: str, probes: Iterable[str]) -> Counter[str]:
    """What is at each site of ``probes`` (globs) in ``path`` as process ``pid`` maps it
    (a trapped site by its probe's name)."""
    wanted = list(probes)
    out: Counter[str] = Counter()
    try:
        objects, _ = mapped_objects(pid, read_maps(pid))
        mapped = next((o for o in objects if os.path.realpath(o.elf.path) == os.path.realpath(path)), None)
        if mapped is None:
            return out
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            for probe in mapped.elf.probes:
                where = mapped.runtime_address(probe.file_offset) if probe.file_offset is not None else None
                if where is not None and any(fnmatch.fnmatchcase(probe.full_name, glob) for glob in wanted):
                    mem.seek(where)
                    kind = SITE_BYTES.get(mem.read(1)[0], "other")
                    out[kind if kind != "trap" else f"trap {probe.name}"] += 1
    except (OSError, UemuError):  # the process went away: what was read so far
        pass
    return out


def cpu_seconds(pid: int) -> float:
    """User + system time of process ``pid`` so far, its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> float:
    return os.getloadavg()[0]


# ---- python and java: one command, paused once to read its sites ----------------------------------


def bpftrace_ready(path: str, probes: Iterable[str], user: str) -> subprocess.Popen[str]:
    """bpftrace counting ``probes`` of ``path`` in every process of ``user`` (on the
    file, as for any process: ``-c`` cannot find probes of a library not yet loaded),
    returned once BEGIN has run: every probe is attached."""
    predicate = f"/uid == {pwd.getpwnam(user).pw_uid}/"
    tracer = subprocess.Popen(["bpftrace", "-e", bpftrace_program(path, probes, predicate)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert tracer.stdout is not None
    tracer.stdout.readline()
    time.sleep(BPFTRACE_SETTLE)
    return tracer


def uemu_attached(args: list[str], ready: Path) -> subprocess.Popen[str]:
    """``uemu attach ARGS``, returned once it is tracing every probe it found (its
    --ready-file ``ready``)."""
    ready.unlink(missing_ok=True)
    tracer = subprocess.Popen([*UEMU, "attach", "--ready-file", str(ready), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not ready.exists():
        if tracer.poll() is not None:
            raise SystemExit(f"uemu attach failed: {tracer.communicate()[1]}")
        time.sleep(0.01)
    return tracer


def stopped_before_exec(argv: list[str]) -> list[str]:
    """``argv`` behind a shell that stops itself and then execs it."""
    return ["sh", "-c", 'kill -STOP $$; exec "$@"', "sh", *argv]


def wait_stopped(program: subprocess.Popen[str]) -> None:
    """Until ``program`` (``stopped_before_exec``) has stopped itself."""
    while Path(f"/proc/{program.pid}/stat").read_text().rpartition(")")[2].split()[0] != "T":
        if program.poll() is not None:
            raise SystemExit(f"{program.args} exited before it stopped: {program.communicate()[1]}")
        time.sleep(0.005)


def bpftrace_stop(tracer: subprocess.Popen[str]) -> Counter[str]:
    """SIGINT, again every few seconds: bpftrace 0.17 on Linux 6.18 was seen to take one
    and sit on in epoll_wait (SIGINT caught, nothing pending) until a second came."""
    for _ in range(BPFTRACE_STOP_TRIES):
        tracer.send_signal(signal.SIGINT)
        try:
            return bpftrace_counts(tracer.communicate(timeout=BPFTRACE_STOP_WAIT)[0])
        except subprocess.TimeoutExpired:
            continue
    tracer.kill()
    raise SystemExit(f"bpftrace did not stop at {BPFTRACE_STOP_TRIES} SIGINTs: {tracer.communicate()[1]}")


def paused_command(workload: Workload, mode: str, argv: list[str], cwd: str) -> float:
    """Run ``argv`` as PROGRAM_USER under ``mode``; the program prints ``pid N`` and
    waits for a line: its sites are read then.  The wall time leaves that pause out
    (and the start of bpftrace and of ``uemu attach``: they are attached before the
    program starts)."""
    with tempfile.TemporaryDirectory() as tmp:
        counts_file = Path(tmp) / "counts"
        attach = mode == UEMU_ATTACH
        as_user = ["setpriv", f"--reuid={PROGRAM_USER}", f"--regid={PROGRAM_USER}", "--clear-groups",
                   *(stopped_before_exec(argv) if attach else argv)]
        uemu = [*UEMU, "run", *UEMU_MODES.get(mode, []), "-o", str(counts_file),
                *workload.probes, "--"]
        command = [*uemu, *as_user] if mode in UEMU_MODES else as_user
        if mode == BPFTRACE_C:
            # As root, the command itself: bpftrace -c finds USDT probes in the child it
            # starts, and under setpriv that child is setpriv; -c wants a path.
            command = ["bpftrace", "-e", bpftrace_program(workload.object_path, workload.probes),
                       "-c", _shell([shutil.which(argv[0]) or argv[0], *argv[1:]])]
        tracer = bpftrace_ready(workload.object_path, workload.probes, PROGRAM_USER) if mode == "bpftrace" else None
        workload.reproduce[mode] = _shell(tracer.args if tracer else command)  # type: ignore[arg-type]
        began = load()
        start = time.perf_counter()
        program = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, cwd=cwd, env=dict(os.environ, **{PAUSE: "1"}))
        assert program.stdout is not None and program.stdin is not None
        if attach:
            wait_stopped(program)
            args = ["-c", "-o", str(counts_file), str(program.pid), *workload.probes]
            workload.reproduce[mode] = f"{_shell([*UEMU, 'attach', *args])}  # to {_shell(command)}"
            tracer = uemu_attached(args, Path(tmp) / "ready")
            start = time.perf_counter()
            program.send_signal(signal.SIGCONT)
        before_pause = after_pause = time.perf_counter()
        sites: Counter[str] = Counter()
        for line in program.stdout:
            if line.startswith("pid "):
                before_pause = time.perf_counter()
                sites = site_bytes(int(line.split()[1]), workload.object_path, workload.probes)
                after_pause = time.perf_counter()
                program.stdin.write("\n")
                program.stdin.flush()
                break
        out, err = program.communicate(timeout=600)
        wall = time.perf_counter() - start - (after_pause - before_pause)
        if program.returncode:
            raise SystemExit(f"{workload.name} under {mode}: exit status {program.returncode}\n{err}")
        if attach:
            err = tracer.communicate(timeout=120)[1]  # type: ignore[union-attr]  (it leaves when the program exits)
        counts = (bpftrace_stop(tracer) if mode == "bpftrace" else bpftrace_counts(out) if mode == BPFTRACE_C  # type: ignore[arg-type]
                  else uemu_counts(counts_file) if mode != "untraced" else Counter())
        work = float(re.search(r"^work ([\d.]+)$", out, re.M)[1])  # type: ignore[index]
        return workload.record(mode, Run(wall, began, counts, sites, uemu_lost(err), work))


def _shell(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def python_workload(repeat: int, fib: int) -> Workload:
    workload = Workload("python3.11, all python:* probes", "s wall", False, PYTHON, ("python:*",), COMMAND_MODES)
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # for PROGRAM_USER
        script = Path(tmp) / "realbench.py"
        script.write_text(SCRIPT)
        argv = [PYTHON, str(script), str(fib)]
        interleaved({mode: functools.partial(paused_command, workload, mode, argv, tmp) for mode in workload.modes},
                    repeat)
    return workload


def java_workload(repeat: int, threads: int) -> Workload:
    workload = Workload("java 17, hotspot thread__start/stop + class__loaded", "s wall", False, LIBJVM, JAVA_PROBES)
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # for PROGRAM_USER
        (Path(tmp) / "Threads.java").write_text(JAVA)
        subprocess.run([f"{JAVA_HOME}/bin/javac", "-d", tmp, str(Path(tmp) / "Threads.java")], check=True)
        argv = [JAVA_LAUNCHER, "-cp", tmp, "Threads", str(threads)]
        interleaved({mode: functools.partial(paused_command, workload, mode, argv, tmp) for mode in workload.modes},
                    repeat)
    return workload


# ---- pgbench: a server traced while a client drives it -------------------------------------------


class PgbenchRun:
    """One pgbench run against ``cluster`` under ``mode``; the tracer is started
    before pgbench and stopped (SIGINT) after it."""

    def __init__(self, cluster: PostgresCluster, workload: Workload, transactions: int, tmp: Path):
        self.cluster, self.workload, self.transactions, self.tmp = cluster, workload, transactions, tmp

    def tracer(self, mode: str) -> subprocess.Popen[str] | None:
        if mode == "untraced":
            return None
        if mode == "bpftrace":
            tracer = bpftrace_ready(POSTGRES_BIN, PG_PROBES, self.cluster.user)
            self.workload.reproduce[mode] = _shell(tracer.args)  # type: ignore[arg-type]
            return tracer
        args = ["-f", *UEMU_MODES[mode], "-o", str(self.tmp / "counts"), str(self.cluster.postmaster), *PG_PROBES]
        self.workload.reproduce[mode] = _shell([*UEMU, "attach", *args])
        return uemu_attached(args, self.tmp / "ready")

    def __call__(self, mode: str) -> float:
        if mode == MODES[0]:
            self.cluster.restart()  # each round a new layout: where a pun target falls varies
        began = load()
        tracer = self.tracer(mode)
        sites: Counter[str] = Counter()
        bench = subprocess.Popen(self.cluster.client("pgbench", "-n", "-S", "-c", str(CLIENTS), "-j", "2", "-t",
                                                     str(self.transactions), "postgres"),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        reader = threading.Thread(target=self.read_sites, args=(bench, sites))
        reader.start()
        out, err = bench.communicate(timeout=900)
        reader.join()
        if bench.returncode:
            raise SystemExit(f"pgbench under {mode}: {err}")
        counts, lost, tracer_cpu = Counter[str](), 0, None
        if mode == "bpftrace":
            counts = bpftrace_stop(tracer)  # type: ignore[arg-type]
        elif tracer is not None:
            tracer_cpu = cpu_seconds(tracer.pid)
            tracer.send_signal(signal.SIGINT)
            lost = uemu_lost(tracer.communicate(timeout=120)[1])  # then its counts are written
            counts = uemu_counts(self.tmp / "counts")
        tps = float(re.search(r"tps = ([\d.]+) \(without initial", out)[1])  # type: ignore[index]
        return self.workload.record(mode, Run(tps, began, counts, sites, lost, tracer_cpu=tracer_cpu))

    def read_sites(self, bench: subprocess.Popen[str], sites: Counter[str]) -> None:
        """The probed sites' bytes in the 4 backends, once they are all there."""
        while bench.poll() is None:
            backends = [pid for pid in process.descendants(self.cluster.postmaster)
                        if "postgres [local]" in _cmdline(pid)]
            if len(backends) >= CLIENTS:
                for pid in backends:
                    sites.update(site_bytes(pid, POSTGRES_BIN, PG_PROBES))
                return
            time.sleep(0.05)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pgbench_workload(repeat: int, transactions: int) -> Workload:
    workload = Workload("pgbench -S -c 4 -j 2, transaction__start + query__start", "tps", True, POSTGRES_BIN,
                        PG_PROBES)
    # each backend's start-up runs a transaction; pgbench's first connection (the
    # scale's count(*) and a partitioning query) two more, each with its query
    workload.expected = Counter({"postgresql:transaction__start": CLIENTS * (transactions + 1) + 3,
                                 "postgresql:query__start": CLIENTS * transactions + 2})
    directory = Path(tempfile.mkdtemp(prefix="uemu-realbench-"))
    cluster = PostgresCluster(directory, user="postgres", port=5491, settings=("autovacuum=off",))
    with cluster, tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        subprocess.run(cluster.client("pgbench", "-i", "-q", "-s", "1", "postgres"), check=True, capture_output=True)
        measure = PgbenchRun(cluster, workload, transactions, Path(tmp))
        interleaved({mode: functools.partial(measure, mode) for mode in MODES}, repeat)
    return workload


# ---- the report ---------------------------------------------------------------------------------


def report(workload: Workload) -> None:
    print(f"\n{workload.name} ({workload.unit}; median of {len(workload.runs['untraced']) - 1} rounds after a "
          "warm-up)", flush=True)
    medians = {mode: statistics.median(r.figure for r in runs[1:]) for mode, runs in workload.runs.items()}
    untraced = workload.runs["untraced"][1:]
    for mode, runs in workload.runs.items():
        kept = runs[1:]
        paired = statistics.median(r.figure / u.figure for r, u in zip(kept, untraced, strict=True))
        ratios = f"{medians[mode] / medians['untraced']:6.2f}x untraced ({paired:.2f}x by round)"
        if mode.startswith("uemu"):
            ratios += f"  {medians[mode] / medians['bpftrace']:6.2f}x bpftrace"
            if BPFTRACE_C in medians:
                ratios += f"  {medians[mode] / medians[BPFTRACE_C]:6.2f}x {BPFTRACE_C}"
        loads = "-".join(f"{x:.1f}" for x in (min(r.load for r in kept), max(r.load for r in kept)))
        works = [r.work for r in kept if r.work is not None]
        work = f"   work {statistics.median(works):7.3f} s" if works else ""
        print(f"  {mode:16} {medians[mode]:10.3f}  {ratios}{work}   load {loads}")
        jumped = [r.figure for r in kept if not any(kind.startswith("trap") for kind in r.sites)]
        if mode.startswith("uemu") and "no-jumps" not in mode and 0 < len(jumped) < len(kept):
            print(f"  {'':16} {statistics.median(jumped):10.3f}  "
                  f"{statistics.median(jumped) / medians['untraced']:6.2f}x untraced in the {len(jumped)} rounds "
                  "where every site jumped (the others depend on the layout)")
        for run in kept:
            work = f"  work {run.work:.3f}" if run.work is not None else ""
            if run.tracer_cpu is not None:
                hits = sum(run.counts.values())
                work += f"  uemu CPU {run.tracer_cpu:.2f} s ({1e6 * run.tracer_cpu / max(hits, 1):.1f} us/hit)"
            lost = "  DISTURBED (another tracer)" if run.lost < 0 else f"  lost {run.lost}" if run.lost else ""
            print(f"      {run.figure:10.3f}{work}  load {run.load:4.1f}  sites {dict(run.sites)}"
                  f"{lost}  hits {_short(run.counts)}")
    mismatches(workload)


def mismatches(workload: Workload) -> None:
    """Each traced run's counts against the oracle: the workload's known truth when it
    has one (pgbench), else bpftrace's run of the same round (the workloads are
    deterministic)."""
    for mode in [m for m in workload.modes if m != "untraced"]:
        for number, run in enumerate(workload.runs[mode]):
            oracle = workload.expected or workload.runs["bpftrace"][number].counts
            if run.counts != oracle:
                diff = {k: run.counts[k] - oracle[k] for k in run.counts | oracle if run.counts[k] != oracle[k]}
                against = "the truth" if workload.expected else "bpftrace"
                print(f"  MISMATCH {mode} round {number}: {mode} - {against} = {diff}\n"
                      f"    reproduce: {workload.reproduce[mode]}")
    print(f"  oracle: {_short(workload.expected) + ' (the truth)' if workload.expected else 'bpftrace'}")


def _short(counts: Counter[str]) -> str:
    return " ".join(f"{name.partition(':')[2]}={n}" for name, n in sorted(counts.items())) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="pgbench,python,java", help="workloads, comma-separated")
    parser.add_argument("--transactions", type=int, default=10000, help="pgbench -t (per client)")
    parser.add_argument("--fib", type=int, default=20, help="the python script's fib(N)")
    parser.add_argument("--threads", type=int, default=200, help="threads the java class starts")
    args = parser.parse_args()
    workloads: dict[str, Callable[[], Workload]] = {
        "pgbench": lambda: pgbench_workload(args.repeat, args.transactions),
        "python": lambda: python_workload(args.repeat, args.fib),
        "java": lambda: java_workload(args.repeat, args.threads),
    }
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    print(compile_uemu())
    for name in args.only.split(","):
        report(workloads[name]())


if __name__ == "__main__":
    main()
