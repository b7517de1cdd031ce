"""``--output-format chrome``: Trace Event Format files read back by the checker
of the format's and Perfetto's rules (trace_event_format.py, which says why
Perfetto's own trace processor cannot run here), against a program's own
account of its calls, and against bpftrace's counts on CPython."""

from __future__ import annotations

import io
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trace_event_format import FormatViolation, Instant, load
from tracee import attach_cli, compile_program, stop_cli

from uemu.chrome import ChromeTrace, SlicePair
from uemu.events import Event
from uemu.probespec import parse

# ---- the writer on made-up hits (pure) --------------------------------------------------


def hit(name: str, ts_ns: int, tid: int = 10, args: list | None = None, provider: str = "app") -> Event:
    return Event(ts_ns, 10, tid, "/bin/app", provider, name, 0x1000, [], args or [])


def pair(text: str) -> SlicePair:
    begin, end = (parse(word) for word in text.split("="))
    return SlicePair(begin, end)  # type: ignore[arg-type]


def write(events: list[Event], slices: list[SlicePair], **options) -> str:
    stream = io.StringIO()
    trace = ChromeTrace(stream, slices, **options)
    for event in events:
        trace.write(event)
    trace.close()
    return stream.getvalue()


def test_hits_are_instants_with_their_arguments_and_names_once_per_thread():
    asked = []

    def comm(pid: int, tid: int) -> bytes:
        asked.append((pid, tid))
        return b"app" if tid == pid else b"w\x1bork"

    text = write([hit("a", 1_000_000_001, 10, [1, -2]), hit("b", 1_000_002_500, 11, [2.5]),
                  hit("a", 1_000_003_000, 10)], [], comm=comm)
    trace = load(text)
    assert asked == [(10, 10), (10, 11)]
    assert trace.processes == {10: "app"}
    assert trace.threads == {(10, 10): "app", (10, 11): r"w\x1bork"}
    assert trace.instants == [
        Instant(10, 10, "app:a", "app", 1_000_000.001, {"arg0": 1, "arg1": -2}),
        Instant(10, 11, "app:b", "app", 1_000_002.5, {"arg0": 2.5}),
        Instant(10, 10, "app:a", "app", 1_000_003.0, {}),
    ]


def test_slices_nest_per_thread_and_an_end_closes_its_own_pair():
    events = [
        hit("leave", 100, 10),                 # its BEGIN came before tracing: an instant
        hit("enter", 200, 10, [1]),
        hit("enter", 250, 11, [7]),            # another thread: its own stack
        hit("enter", 300, 10, [2]),
        hit("scope_begin", 400, 10),
        hit("enter", 500, 10, [3]),            # never left: closed with its scope
        hit("scope_end", 600, 10),
        hit("leave", 700, 10, [2]),
        hit("leave", 800, 10, [1]),
        hit("enter", 900, 10, [4]),            # still open at the end
    ]
    trace = load(write(events, [pair("app:enter=app:leave"), pair("app:scope_begin=app:scope_end")]))
    shape = [(s.tid, s.name, s.depth, s.begin * 1000, None if s.end is None else s.end * 1000)
             for s in trace.slices]
    assert shape == [
        (10, "app:enter", 0, 200, 800),
        (11, "app:enter", 0, 250, None),
        (10, "app:enter", 1, 300, 700),
        (10, "app:scope_begin", 2, 400, 600),
        (10, "app:enter", 3, 500, 600),
        (10, "app:enter", 0, 900, None),
    ]
    assert [(i.name, i.ts * 1000) for i in trace.instants] == [("app:leave", 100)]
    assert trace.slices[2].args == {"arg0": 2} and trace.slices[2].end_args == {"end_arg0": 2}
    assert trace.slices[4].end_args == {}


def test_a_probe_matching_both_globs_ends_the_slice():
    trace = load(write([hit("open", 1), hit("op_end", 2)], [pair("app:op*=app:op_end")]))
    assert [(s.name, s.end) for s in trace.slices] == [("app:open", 0.002)]


def test_names_from_a_format_and_values_json_cannot_hold():
    from uemu.printf import PrintfFormat

    name = PrintfFormat("call %d\\x1b", escape_literal=True).text
    text = write([hit("x", 5, args=[1 << 60, math.nan, -math.inf, -(1 << 53)])], [], name=name)
    (instant,) = load(text).instants
    assert instant.name == r"call 1152921504606846976\x1b"
    assert instant.args == {"arg0": str(1 << 60), "arg1": "NaN", "arg2": "-Infinity", "arg3": -(1 << 53)}


def test_a_trace_cut_short_still_loads():
    text = write([hit("a", i * 1000) for i in range(1, 6)], [])
    lines = text.splitlines()
    assert len(load("\n".join(lines[:4])).instants) == 3
    with pytest.raises(FormatViolation):
        load(text.replace('"ph":"i"', '"ph":"E"', 1))


# ---- a program's own account of its calls --------------------------------------------------

CALLS_C = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/sdt.h>
#include <sys/syscall.h>
#include <unistd.h>

static void say(const char *what, long value) {
    char line[64];
    int n = snprintf(line, sizeof line, "%s %ld %ld\n", what, (long)syscall(SYS_gettid), value);
    write(1, line, n);
}
static void work(int depth) {
    say("enter", depth); STAP_PROBE1(ct, enter, depth);
    if (depth < 3) { work(depth + 1); work(depth + 1); }
    say("leave", depth); STAP_PROBE1(ct, leave, depth);
}
static void *worker(void *unused) {
    prctl(PR_SET_NAME, "work\033er");
    work(1);
    say("mark", 0); STAP_PROBE1(ct, mark, 0);
    return unused;
}
int main(void) {
    prctl(PR_SET_NAME, "ct-main");
    say("leave", 7); STAP_PROBE1(ct, leave, 7);
    pthread_t thread;
    pthread_create(&thread, NULL, worker, NULL);
    pthread_join(thread, NULL);
    say("scope", 1); STAP_PROBE(ct, scope_begin);
    say("enter", 4); STAP_PROBE1(ct, enter, 4);
    say("scope", 0); STAP_PROBE(ct, scope_end);
    say("enter", 5); STAP_PROBE1(ct, enter, 5);
    say("mark", 1); STAP_PROBE1(ct, mark, 1);
    return 0;
}
"""


@pytest.fixture(scope="module")
def calls(tmp_path_factory) -> Path:
    return compile_program(tmp_path_factory.mktemp("calls"), "calls", CALLS_C, "-pthread")


def test_slices_follow_the_programs_calls(uemu, calls, tmp_path):
    out = tmp_path / "trace.json"
    start = time.monotonic_ns()
    result = uemu("run", "--output-format", "chrome", "--slice", "ct:enter=ct:leave",
                  "--slice", "ct:scope_begin=ct:scope_end", "ct:mark", "-o", str(out), "--", str(calls))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    truth = [line.split() for line in result.stdout.splitlines()]
    main_tid = int(truth[0][1])
    worker_tid = next(int(tid) for word, tid, _ in truth if int(tid) != main_tid)
    trace = load(out.read_text())

    assert trace.processes == {main_tid: "ct-main"}
    assert trace.threads == {(main_tid, main_tid): "ct-main", (main_tid, worker_tid): r"work\x1ber"}
    # The worker's calls as it printed them: depth in the tree, argument at entry and exit.
    entered = [int(value) for word, tid, value in truth if word == "enter" and int(tid) == worker_tid]
    worker = trace.thread_slices(main_tid, worker_tid)
    assert [(s.name, s.depth, s.args, s.end_args) for s in worker] == [
        ("ct:enter", depth - 1, {"arg0": depth}, {"end_arg0": depth}) for depth in entered]
    assert all(s.begin <= s.end for s in worker)
    # Main: the END it passed before any BEGIN is an instant; the slice left open
    # inside its scope ends with it; the last one is still open when tracing ends.
    main = trace.thread_slices(main_tid, main_tid)
    assert [(s.name, s.depth, s.args) for s in main] == [
        ("ct:scope_begin", 0, {}), ("ct:enter", 1, {"arg0": 4}), ("ct:enter", 0, {"arg0": 5})]
    assert main[1].end == main[0].end is not None and main[2].end is None
    assert [(i.tid, i.name, i.args) for i in trace.instants] == [
        (main_tid, "ct:leave", {"arg0": 7}), (worker_tid, "ct:mark", {"arg0": 0}),
        (main_tid, "ct:mark", {"arg0": 1})]
    # CLOCK_MONOTONIC microseconds, in the order of the hits.
    stamps = [s.begin for s in trace.slices] + [i.ts for i in trace.instants]
    assert all(start / 1000 < ts < time.monotonic_ns() / 1000 for ts in stamps)


def test_attach_writes_a_chrome_trace_to_stdout(samples, tmp_path):
    target = subprocess.Popen([str(samples / "longrun"), "2", "5", "20000"],
                              env=dict(os.environ, SAMPLE_OUT=os.devnull))
    try:
        cli = attach_cli("--output-format", "chrome", "--duration", "1", str(target.pid), "longrun:tick")
        code, out, err = stop_cli(cli, None)
    finally:
        target.terminate()
        target.wait()
    assert code == 0 and err == "", err
    trace = load(out)
    assert trace.processes == {target.pid: "longrun"}
    assert len(trace.threads) >= 2 and trace.instants
    assert {i.name for i in trace.instants} == {"longrun:tick"}


def test_python_function_slices_against_bpftrace_counts(tmp_path):
    """The issue's example on Debian's CPython 3.11, whose function__entry fires
    only for frames entered from C while function__return fires for all: BEGINs
    are the entries bpftrace counts, ENDs and instants its returns."""
    python = "/usr/bin/python3.11"
    if not os.path.exists(python) or shutil.which("bpftrace") is None or os.geteuid() != 0:
        pytest.skip("needs Debian's python3.11 (built with SDT probes), bpftrace and root")
    script = tmp_path / "calls.py"
    script.write_text("def leaf(n): return n\n"
                      "def inner(n): return leaf(n) + leaf(n + 1)\n"
                      "def outer(k): return sum(inner(i) for i in range(k))\n"
                      "outer(3)\n")
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    bpf = subprocess.run(
        ["bpftrace", "-e", f"usdt:{python}:python:function__entry {{ @entries = count(); }} "
         f"usdt:{python}:python:function__return {{ @returns = count(); }}", "-c", f"{python} {script}"],
        capture_output=True, text=True, timeout=120, env=env)
    counts = dict(line.replace("@", "").split(": ") for line in bpf.stdout.splitlines() if line.startswith("@"))
    out = tmp_path / "python.json"
    result = subprocess.run(
        [sys.executable, "-m", "uemu", "run", "--output-format", "chrome", "--format", "%2$s",
         "--slice", "python:function__entry=python:function__return", "-o", str(out), "--", python, str(script)],
        capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    trace = load(out.read_text())
    assert len(trace.slices) == int(counts["entries"])
    assert sum(s.end is not None for s in trace.slices) + len(trace.instants) == int(counts["returns"])
    assert "<genexpr>" in {s.name for s in trace.slices}  # resumed by sum(), a C function
