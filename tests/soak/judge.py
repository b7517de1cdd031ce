"""The verdict on a samples/survival (or ``evict hot``) target once uemu is gone
(killed, or left): it must make its next hits (the first orphaned ones), be
alive, hold every executable mapping as its file and every semaphore back at 0,
end on SIGTERM with status 0, and have had every probed function right every
time (its ``result PID TID PROVIDER:wrong N`` lines), in every child too."""

from __future__ import annotations

import signal

from residue import anonymous_code, harm
from tally import Outcome
from target import Target, describe

ORPHANED_TURNS = 200
"""Turns of the hot threads (4 threads, each passing its probe sites once a turn)
awaited after uemu is gone: every thread has passed its sites several times."""
PROGRESS_TIMEOUT = 5.0


def judge(target: Target, outcome: Outcome, ticks: int = 0, timeout: float = PROGRESS_TIMEOUT) -> None:
    """``ticks``: slow periods to await too, where the slow probe is the one hit."""
    why = target.progress(ORPHANED_TURNS, timeout, ticks)
    if why is None:
        outcome.harmed += harm(target.known_pid, target.lines())
        if anonymous_code(target.known_pid):
            outcome.notes["anonymous executable mapping left (XOL area or jump landing pages, kept until repair)"] += 1
    elif why != "ended":
        outcome.hangs.append(f"target: {why}")
    if not target.stop():
        outcome.hangs.append("target: did not end on SIGTERM")
    elif target.code not in (0, None):
        outcome.died.append(f"target ended with {describe(target.code)}")
    elif target.code is None:
        outcome.notes["target's status unknown (reaped by uemu)"] += 1
    _lines(target, outcome)


CHECKED = {"survival": "work()", "evict": "an evicted site's function"}
"""What each sample's ``PROVIDER:wrong`` result line counts the wrong results of."""


def _lines(target: Target, outcome: Outcome) -> None:
    for line in target.lines():
        provider, _, name = line.word.partition(":")
        if line.kind == "result" and name == "wrong" and line.values != ("0",):
            what = CHECKED.get(provider, f"a function of {provider}")
            outcome.harmed.append(f"{what} returned a wrong value {line.values[0]} times in a thread")
        if line.kind == "child" and line.word == "waited" and line.values != ("0",):
            outcome.died.append(f"a child ended with {_wait_status(int(line.values[0]))}")


def _wait_status(status: int) -> str:
    if status & 0x7f:
        return f"signal {signal.Signals(status & 0x7f).name}"
    return f"status {status >> 8}"
