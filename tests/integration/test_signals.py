"""Signals reach the program as without uemu: its own breakpoint instruction and
raise(SIGTRAP) under a SIGTRAP handler, a 100 µs SIGALRM timer whose handler
passes a probe, SIGSTOP and SIGCONT."""

from __future__ import annotations

import signal

import pytest
from samplelog import counts, expected_hits, per_probe, reported_hits, run_traced, run_untraced
from tracee import Tracee, stop_cli, uemu_cli, wait_until


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
        cli = uemu_cli("attach", str(tracee.pid), "--json", "-o", str(tmp_path / "events"))
        wait_until(lambda: (tmp_path / "events").exists(), what="uemu to start")
        wait_until(lambda: open(f"/proc/{tracee.pid}/status").read().find("TracerPid:\t0") < 0,
                   what="uemu to attach")
        tracee.release()
        tracee.wait_sync("end")
        code, _, err = stop_cli(cli, signal.SIGINT)
        assert code == 0 and err == "", err
        tracee.release()
        assert tracee.finish() == 0
        assert _signal_facts(tracee.lines()) == untraced
        hits = expected_hits(tracee.lines())
    events = (tmp_path / "events").read_text().splitlines()
    assert len(events) == len(hits) > 0
