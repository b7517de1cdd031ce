"""The pytest plugin's ``usdt`` fixture on real samples: every hit with its
strings read at the hit, as the program itself says; a block that runs beside
the traced program; attach and detach; and the failure messages as pytest
prints them (pytester runs small test files that fail on purpose)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from samplelog import parse
from tracee import process_state, tracer_pid, wait_until

from uemu import testing
from uemu.errors import ProbeNotFound

pytest_plugins = ["pytester"]

CACHE_STRINGS = {"cache:hit": 1, "cache:miss": 0, "cache:evict": 1}


def _truth(stdout: bytes) -> dict[str, list[tuple]]:
    """The arguments of each hit the program announced, its keys as bytes (each
    ``hit`` line is preceded by a ``text`` line giving the key at its address)."""
    texts: dict[str, bytes] = {}
    hits: dict[str, list[tuple]] = {}
    for line in parse(stdout.decode()):
        if line.kind == "text":
            texts[line.word] = " ".join(line.values).encode()
        elif line.kind == "hit":
            strings = CACHE_STRINGS[line.word]
            args = tuple(texts[v] if i == strings else int(v) for i, v in enumerate(line.values))
            hits.setdefault(line.word, []).append(args)
    return hits


def test_every_hit_with_its_key_read_at_the_hit(usdt, samples):
    """samples/cache overwrites an evicted key right after its probe: a key read
    afterwards would be the new one (key-4 for the first eviction, not key-3)."""
    with usdt.run([samples / "cache", "--fill", "10", "key-0", "key-5"], probes=["cache:*"],
                  strings=CACHE_STRINGS) as trace:
        pass
    truth = _truth(trace.stdout)
    assert truth["cache:evict"][0] == (3, b"key-3")
    assert {probe: trace.args(probe) for probe in trace.counts()} == truth
    assert trace.count("cache:miss") == 11
    assert trace.args("cache:evict")[0] == (3, b"key-3")
    assert trace.args("cache:hit") == [(0, b"key-0")]
    assert trace.exit_status == 0
    assert trace.probes == ["cache:evict", "cache:hit", "cache:miss"]


def _hits(path: Path, probe: str) -> list[tuple]:
    """The arguments of each hit of ``probe`` a sample has announced so far."""
    return [tuple(map(int, line.values)) for line in parse(path.read_text()) if line.word == probe]


def test_the_block_runs_beside_the_traced_command(usdt, samples, tmp_path):
    """The block sees the command running (here it ends it with SIGTERM), and a
    process the block starts is its own: the tracer does not reap it."""
    out = tmp_path / "out"
    out.touch()
    env = dict(os.environ, SAMPLE_OUT=str(out))
    with usdt.run([samples / "longrun", "2", "5"], probes=["longrun:beat"], env=env) as trace:
        wait_until(lambda: len(_hits(out, "longrun:beat")) >= 10, what="beats")
        assert subprocess.run(["sh", "-c", "exit 3"], check=False).returncode == 3
        os.kill(trace.pid, signal.SIGTERM)
    assert trace.exit_status == 0
    assert trace.count("longrun:beat") >= 10
    assert sorted(trace.args("longrun:beat")) == sorted(_hits(out, "longrun:beat"))


def test_attach_then_leave_as_it_was(usdt, samples, tmp_path):
    out = tmp_path / "out"
    out.touch()
    program = subprocess.Popen([samples / "longrun", "2", "5"], env=dict(os.environ, SAMPLE_OUT=str(out)))
    try:
        wait_until(lambda: _hits(out, "longrun:beat"), what="longrun to start")
        with usdt.attach(program.pid, probes=["longrun:*"]) as trace:
            assert tracer_pid(program.pid) not in (0, os.getpid())
            wait_until(lambda: len(_hits(out, "longrun:tick")) >= 10, what="ticks")
        assert tracer_pid(program.pid) == 0
        ticks = len(_hits(out, "longrun:tick"))
        beats = len(_hits(out, "longrun:beat"))
        wait_until(lambda: len(_hits(out, "longrun:beat")) > beats + 10, what="beats after detaching")
        # Its semaphore is back at 0: it passes longrun:tick without announcing a hit.
        assert len(_hits(out, "longrun:tick")) == ticks
    finally:
        program.terminate()
    assert program.wait(20) == 0
    announced, traced = set(_hits(out, "longrun:tick")), set(trace.args("longrun:tick"))
    assert len(announced) == ticks and traced <= announced
    # A thread may announce a tick, then pass the probe just after the detach.
    last = {thread: max(i for t, i in announced if t == thread) for thread, _ in announced}
    assert all(iteration == last[thread] for thread, iteration in announced - traced)
    assert trace.count("longrun:beat") > 0
    assert {e.pid for e in trace.events} == {program.pid}
    assert trace.exit_status is None and trace.stdout == b""


def test_a_probe_word_that_matches_nothing_is_uemus_own_error(usdt, samples):
    with pytest.raises(ProbeNotFound, match="did you mean cache:miss"), \
            usdt.run([samples / "cache"], probes=["cache:mis"], strict=True):
        pass


def _left_behind(marker: str) -> list[int]:
    """Processes a trace left: the command (``marker`` in its environment), or a
    child uemu forked for it and had not yet seized (a stopped copy of this
    process, which execs the command once seized)."""
    with open("/proc/self/cmdline", "rb") as stream:
        ours = stream.read()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as stream:
                environ = stream.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as stream:
                cmdline = stream.read()
        except OSError:
            continue
        if marker.encode() in environ or (cmdline == ours and process_state(int(pid)) in "tT"):
            found.append(int(pid))
    return found


@pytest.mark.parametrize("arming", [0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4])
def test_a_trace_given_up_leaves_nothing_running(usdt, samples, monkeypatch, arming):
    """The test stops waiting for the probes to be armed, at each point of uemu's
    start (before its signal handlers, while forking the command, while arming,
    after): the command never runs on, and nothing uemu forked stays stopped."""
    monkeypatch.setattr(testing, "_ARMING_TIMEOUT", arming)
    marker = f"UEMU_TEST_MARK={os.getpid()}-{arming}"
    env = dict(os.environ, UEMU_TEST_MARK=marker.split("=", 1)[1])
    with pytest.raises((TimeoutError, AssertionError), match="within"), \
            usdt.run([samples / "longrun", "1", "5"], env=env, timeout=0.2):
        pass
    assert _left_behind(marker) == []


def test_a_trace_given_up_while_uemu_forks_the_command(usdt, samples, monkeypatch):
    """The window above that timing rarely hits, held open: uemu's tracer
    sleeps after forking the command, before seizing it.  A tracer killed there
    would leave the child stopped, waiting to be seized, for ever."""
    real_fork, test_process = os.fork, os.getpid()

    def slow_fork() -> int:
        pid = real_fork()
        if pid and os.getpid() != test_process:  # in the tracer: uemu forked the command
            time.sleep(1)
        return pid

    monkeypatch.setattr(os, "fork", slow_fork)
    monkeypatch.setattr(testing, "_ARMING_TIMEOUT", 0.5)
    marker = f"UEMU_TEST_MARK={os.getpid()}-forking"
    env = dict(os.environ, UEMU_TEST_MARK=marker.split("=", 1)[1])
    with pytest.raises(TimeoutError, match=r"uemu did not arm its probes within 0\.5 s"), \
            usdt.run([samples / "longrun", "1", "5"], env=env):
        pass
    assert _left_behind(marker) == []


def _dies_in_the_block(trace_call: str) -> subprocess.CompletedProcess[str]:
    """A test process that SIGKILLs itself inside ``with usdt.TRACE_CALL``."""
    script = (f"import os, signal\nfrom uemu.testing import Usdt\nwith Usdt().{trace_call}:\n"
              "    print('armed', flush=True)\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)


def test_a_command_dies_with_its_test_process(samples):
    marker = f"UEMU_TEST_MARK={os.getpid()}-orphaned"
    env = dict(os.environ, UEMU_TEST_MARK=marker.split("=", 1)[1])
    died = _dies_in_the_block(f"run([{str(samples / 'longrun')!r}, '1', '5'], env={env!r})")
    assert died.returncode == -signal.SIGKILL and died.stdout == "armed\n", died.stderr
    wait_until(lambda: not _left_behind(marker), what="the command to die")


def test_an_attached_process_is_left_as_it_was_when_the_test_process_dies(samples, tmp_path):
    out = tmp_path / "out"
    out.touch()
    program = subprocess.Popen([samples / "longrun", "2", "5"], env=dict(os.environ, SAMPLE_OUT=str(out)))
    try:
        wait_until(lambda: _hits(out, "longrun:beat"), what="longrun to start")
        died = _dies_in_the_block(f"attach({program.pid}, ['longrun:tick'])")
        assert died.returncode == -signal.SIGKILL and died.stdout == "armed\n", died.stderr
        wait_until(lambda: tracer_pid(program.pid) == 0, what="the tracer to leave")
        ticks = len(_hits(out, "longrun:tick"))
        beats = len(_hits(out, "longrun:beat"))
        wait_until(lambda: len(_hits(out, "longrun:beat")) > beats + 10, what="beats after the tracer left")
        assert len(_hits(out, "longrun:tick")) <= ticks + 2  # its semaphore is back at 0
    finally:
        program.terminate()
    assert program.wait(20) == 0


# ---- failure messages, as pytest prints them ------------------------------------------

FAILING = """
import pytest

CACHE = {cache!r}
LONGRUN = {longrun!r}

@pytest.fixture(scope="module")
def trace():
    from uemu.testing import Usdt
    with Usdt().run([CACHE, "--fill", "10"], probes=["cache:*"], strings={{"cache:evict": 1}}) as trace:
        pass
    return trace

def test_readme_example(usdt):
    with usdt.run([CACHE, "--fill", "10"], probes=["cache:*"], strings={{"cache:evict": 1}}) as trace:
        pass
    assert trace.count("cache:miss") == 10
    assert trace.args("cache:evict")[0] == (3, b"key-3")

def test_count_of_a_misspelt_probe(trace):
    assert trace.count("cache:mis") == 10

def test_count(trace):
    assert trace.count("cache:miss") == 9

def test_count_the_other_way_round(trace):
    assert 11 <= trace.count("cache:evict")

def test_arguments(trace):
    assert trace.args("cache:evict")[0] == (3, b"key-4")

def test_arguments_of_every_hit(trace):
    assert trace.args("cache:evict")[:2] == [(3, b"key-3"), (3, b"key-4")]
    assert trace.args("cache:evict") == [(3, b"key-3"), (3, b"key-5")]

def test_hit_that_never_happened(trace):
    trace.args("cache:hit")[0]

def test_fired_with(trace):
    trace.assert_fired_with("cache:evict", 3, b"key-30")

def test_not_fired(trace):
    trace.assert_not_fired("cache:evict")

def test_undeclared_string(usdt):
    with usdt.run([CACHE, "--fill", "10"], probes=["cache:evict"]) as trace:
        pass
    assert trace.args("cache:evict")[0] == (3, b"key-3")

def test_misspelt_probe_word(usdt):
    with usdt.run([CACHE, "--fill", "10"], probes=["cache:mis"]) as trace:
        pass
    assert trace.count("cache:miss") == 10

def test_misspelt_string_declaration(usdt):
    with usdt.run([CACHE, "--fill", "10"], probes=["cache:*"], strings={{"cache:evcit": 1}}):
        pass

def test_command_that_does_not_exit(usdt):
    with usdt.run([LONGRUN, "1", "5"], probes=["longrun:beat"], timeout=1):
        pass

def test_exception_in_the_block(usdt):
    with usdt.run([LONGRUN, "1", "5"], timeout=600):
        raise KeyError("from the block")
"""


def test_failure_messages(pytester, samples):
    pytester.makepyfile(FAILING.format(cache=str(samples / "cache"), longrun=str(samples / "longrun")))
    result = pytester.runpytest("-p", "no:cacheprovider")
    out = result.stdout
    out.fnmatch_lines(["*test_count_of_a_misspelt_probe*", "E * cache:mis fired 0 times, expected 10",
                       "E * did you mean cache:miss (10 hits)?", "E * fired: cache:evict 6, cache:miss 10",
                       "E * armed, never fired: cache:hit"])
    out.fnmatch_lines(["*_ test_count _*", "E * cache:miss fired 10 times, expected 9"])
    out.fnmatch_lines(["*test_count_the_other_way_round*", "E * cache:evict fired 6 times, expected at least 11"])
    out.fnmatch_lines(["*_ test_arguments _*",
                       "E * arguments of cache:evict #0 were (3, b'key-3'), expected (3, b'key-4') "
                       "(argument 1 differs)",
                       "E * hit #1 had those arguments", "E * hits of cache:evict:", "E * #0 (3, b'key-3')"])
    out.fnmatch_lines(["*test_arguments_of_every_hit*",
                       "E * arguments of cache:evict differ first at #1: were (3, b'key-4'), "
                       "expected (3, b'key-5') (argument 1 differs)"])
    out.fnmatch_lines(["*test_hit_that_never_happened*", "E * IndexError: cache:hit fired 0 times: no hit #0",
                       "E * cache:hit was armed but never fired"])
    out.fnmatch_lines(["*test_fired_with*", "E * cache:evict never fired with (3, b'key-30')",
                       "E * closest: #0 (3, b'key-3') (argument 1 differs)"])
    out.fnmatch_lines(["*test_not_fired*", "E * cache:evict fired 6 times, expected 0"])
    out.fnmatch_lines(["*test_undeclared_string*",
                       "E * argument 1 is a number: to read it as a string, declare it: "
                       "strings={'cache:evict': 1}"])
    out.fnmatch_lines(["*test_misspelt_probe_word*", "E * cache:miss fired 0 times, expected 10",
                       "E * nothing fired", "E * uemu warned: 'cache:mis' never matched a probe; closest probes "
                       "seen: cache:miss, *"])
    out.fnmatch_lines(["*test_misspelt_string_declaration*",
                       "E * strings= names cache:evcit, which uemu did not arm; did you mean cache:evict (6 hits)?"])
    out.fnmatch_lines(["*test_command_that_does_not_exit*",
                       f"E * {samples / 'longrun'} did not exit within 1 s: uemu killed it",
                       "E * fired: longrun:beat *"])
    out.fnmatch_lines(["*test_exception_in_the_block*", "E * KeyError: 'from the block'"])
    result.assert_outcomes(passed=1, failed=13)
    # The block's exception ended the program at once, not after its 600 s.
    assert result.duration < 300
