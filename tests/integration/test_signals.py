"""Signals reach the program as without uemu: its own breakpoint instruction and
raise(SIGTRAP) under a SIGTRAP handler, a 100 µs SIGALRM timer whose handler
passes a probe, SIGSTOP and SIGCONT (also in the middle of out-of-line steps, and
before uemu comes)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from residue import harm, turns
from samplelog import counts, expected_hits, per_probe, reported_hits, run_traced, run_untraced
from tracee import Tracee, attach_cli, stop_cli, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "soak"))
from sites import stepped

STOP_CYCLES = 20
NO_STEP = "no instruction of survival's work() takes two stops out of line here (aarch64, riscv64: all jump back)"


def _signal_facts(lines):
    """What the program saw of its signals, without pids."""
    return [(line.word, line.values) for line in lines if line.kind == "signal"]


@pytest.fixture(scope="module")
def untraced(samples):
    lines, status = run_untraced([samples / "signals", "200"])
    assert status == 0
    facts = _signal_facts(lines)
    assert {word for word, _ in facts} == {"trap", "raise", "continued"}, facts
    return facts


@pytest.mark.parametrize("follow", [False, True], ids=["plain", "follow-forks"])
def test_run_delivers_every_signal_as_untraced(samples, untraced, follow):
    run = run_traced([samples / "signals", "200"], follow_forks=follow)
    assert run.exit_status == 0
    assert _signal_facts(run.lines) == untraced
    # the probes in the main loop and in the SIGALRM handler were all reported
    assert per_probe(reported_hits(run.events)) == per_probe(expected_hits(run.lines))
    assert counts(reported_hits(run.events))["signals:handler"] > 0


def test_attach_delivers_every_signal_as_untraced(samples, untraced, tmp_path):
    with Tracee([samples / "signals", "200"]) as tracee:
        tracee.wait_sync("start")
        cli = attach_cli(str(tracee.pid), "--json", "-o", str(tmp_path / "events"))
        wait_until(lambda: (tmp_path / "events").exists(), what="uemu to start")
        wait_until(lambda: Path(f"/proc/{tracee.pid}/status").read_text().find("TracerPid:\t0") < 0,
                   what="uemu to attach")
        tracee.release()
        # every 100 us timer signal passes a probe: slow where the CPU is emulated (test guests)
        tracee.wait_sync("end", timeout=300)
        code, _, err = stop_cli(cli, signal.SIGINT)
        assert code == 0 and err == "", err
        tracee.run_out()
        assert _signal_facts(tracee.lines()) == untraced
        hits = expected_hits(tracee.lines())
    events = (tmp_path / "events").read_text().splitlines()
    assert len(events) == len(hits) > 0


def test_sigstop_and_sigcont_from_outside_while_attached(samples, tmp_path):
    """A traced program stopped by SIGSTOP stays stopped (no probe passes) until
    SIGCONT, as without a tracer (group-stop answered with PTRACE_LISTEN)."""
    with Tracee([samples / "longrun", "2", "2"]) as tracee:
        tracee.wait_sync("started")
        tracee.release()
        cli = attach_cli(str(tracee.pid), "longrun:beat", "-o", str(tmp_path / "events"))
        wait_until(lambda: (tmp_path / "events").exists() and (tmp_path / "events").stat().st_size > 0,
                   what="hits while attached")

        def beats() -> int:
            return len([line for line in tracee.lines() if line.word == "longrun:beat"])

        os.kill(tracee.pid, signal.SIGSTOP)
        wait_until(lambda: _all_threads_stopped(tracee.pid), what="every thread stopped")
        stopped_at = beats()
        time.sleep(0.3)
        assert beats() == stopped_at, "the program ran while stopped"
        os.kill(tracee.pid, signal.SIGCONT)
        wait_until(lambda: beats() > stopped_at + 10, what="the program to run again")
        code, _, err = stop_cli(cli, signal.SIGINT)
        assert code == 0 and err == "", err
        after = beats()
        wait_until(lambda: beats() > after + 10, what="the program to run on after detach")
        tracee.process.send_signal(signal.SIGTERM)
        assert tracee.process.wait(10) == 0


def test_sigstop_and_sigcont_while_threads_step_out_of_line(samples, tmp_path):
    """SIGSTOP and SIGCONT over and over while two threads single-step a probed ``ret``
    out of line: a thread stopped in the middle of its step stays stopped with its
    program and steps on after SIGCONT.  uemu died of PTRACE_LISTEN's EIO in most runs
    (it single-stepped the group-stopped thread, which ran in a stopped program, then
    answered its step's trap with LISTEN)."""
    word = stepped(samples / "survival", "work").get("step") or pytest.skip(NO_STEP)
    counts_file = tmp_path / "counts"
    with Tracee([samples / "survival", "2", "600000", "0"]) as tracee:
        tracee.wait_sync("started")
        tracee.release()
        cli = attach_cli(str(tracee.pid), "--count", "-o", str(counts_file), word)
        for _ in range(STOP_CYCLES):
            os.kill(tracee.pid, signal.SIGSTOP)
            wait_until(lambda: _group_stopped(tracee.pid), what="the program to stop")
            stopped_at = turns(tracee.pid, tracee.lines())
            time.sleep(0.02)
            assert turns(tracee.pid, tracee.lines()) == stopped_at, "the program ran while stopped"
            os.kill(tracee.pid, signal.SIGCONT)
            wait_until(lambda at=stopped_at: turns(tracee.pid, tracee.lines()) > at + 5, what="the program to go on")
            assert cli.poll() is None, cli.communicate()
        code, _, err = stop_cli(cli, signal.SIGINT)
        assert code == 0 and err == "", err
        assert harm(tracee.pid, tracee.lines()) == []
        tracee.process.send_signal(signal.SIGTERM)
        assert tracee.process.wait(20) == 0
        results = [line.values for line in tracee.lines() if line.kind == "result"]
    assert results and all(values == ("0",) for values in results), results
    assert int(counts_file.read_text().split()[1]) > 0


def test_attach_to_a_stopped_program(samples, tmp_path):
    """A program stopped by SIGSTOP before uemu comes stays stopped while uemu arms
    (it runs system calls in a group-stopped thread, which must go back to its
    group-stop: PTRACE_LISTEN answers nothing else), and goes on at SIGCONT."""
    words = stepped(samples / "survival", "work")
    word = words.get("step", words["jump"])
    counts_file = tmp_path / "counts"
    with Tracee([samples / "survival", "2", "600000", "0"]) as tracee:
        tracee.wait_sync("started")
        tracee.release()
        wait_until(lambda: turns(tracee.pid, tracee.lines()) > 100, what="the threads to run")  # made, signals open
        os.kill(tracee.pid, signal.SIGSTOP)
        wait_until(lambda: _group_stopped(tracee.pid), what="the program to stop")
        stopped_at = turns(tracee.pid, tracee.lines())
        cli = attach_cli(str(tracee.pid), "--count", "-o", str(counts_file), word)
        time.sleep(0.2)
        assert cli.poll() is None, cli.communicate()
        assert turns(tracee.pid, tracee.lines()) == stopped_at, "the program ran while stopped"
        os.kill(tracee.pid, signal.SIGCONT)
        wait_until(lambda: turns(tracee.pid, tracee.lines()) > stopped_at + 100, what="the program to go on")
        code, _, err = stop_cli(cli, signal.SIGINT)
        assert code == 0 and err == "", err
        assert harm(tracee.pid, tracee.lines()) == []
    assert int(counts_file.read_text().split()[1]) > 0


def _group_stopped(pid: int) -> bool:
    """Whether the program's group-stop is complete, as its parent (this test) is told
    (CLD_STOPPED; WNOWAIT leaves it to be told again).  Every thread in a ptrace stop
    is not enough: the thread that took SIGSTOP starts the group-stop only once uemu
    resumes it, and another, stopped at a hit meanwhile, may run a few turns first."""
    info = os.waitid(os.P_PID, pid, os.WSTOPPED | os.WNOHANG | os.WNOWAIT)
    return info is not None and info.si_code == os.CLD_STOPPED


def _all_threads_stopped(pid: int) -> bool:
    states = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as stream:
            states.append(stream.read().rsplit(")", 1)[1].split()[0])
    return all(state in ("T", "t") for state in states)
