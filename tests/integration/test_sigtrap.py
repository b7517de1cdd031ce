"""A program that owns SIGTRAP while uemu's safety net holds the kernel's action.

samples/sigtrap.c sets, reads and resets its own SIGTRAP action and raises its own
traps on command (a line of stdin per step) and prints what it saw: its own truth,
compared with what it prints untraced.  uemu must keep the program's view of its
action, keep the net in place while it is traced (so an orphaned breakpoint after
uemu's death is still undone, not taken by the program's handler), and leave the
program's action in place at detach.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from tracee import UEMU, attach_cli, stop_cli, wait_until

STEPS = ["query", "set", "query", "trap", "hit", "query", "reset", "query", "set", "hit", "trap", "quit"]


def converse(program: subprocess.Popen, steps: list[str]) -> list[str]:
    """Send each step and read the program's answer to it."""
    assert program.stdin is not None and program.stdout is not None
    answers = []
    for step in steps:
        program.stdin.write(step + "\n")
        program.stdin.flush()
        if step != "quit":
            answers.append(program.stdout.readline().strip())
    return answers


def start(command: list[str]) -> subprocess.Popen:
    program = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert program.stdout is not None and program.stdout.readline() == "ready\n"
    return program


def untraced(path: Path) -> list[str]:
    program = start([str(path)])
    answers = converse(program, STEPS)
    assert program.wait(10) == 0
    return answers


@pytest.mark.parametrize("mode", ["seccomp", "syscall"])
def test_run_keeps_the_programs_view_of_its_action(runnable_build, mode):
    """Every answer equals the untraced run's ("query: default" first, not the net's
    handler; "reset: was own"), its own traps reach its handler, and the hits are reported."""
    path = runnable_build.directory / "sigtrap"
    program = start([*UEMU, "run", "--mappings", mode, "sigtrap:hit", "--", str(path)])
    answers = converse(program, STEPS)
    assert program.wait(30) == 0
    assert answers == untraced(path)
    assert [line.split()[-1] for line in program.stderr.read().splitlines() if "sigtrap:hit" in line] == ["1", "2"]


def test_attach_leaves_the_action_the_program_set_where_it_did_not_see_it(runnable_build):
    """``--mappings rendezvous`` (attach's default) does not stop rt_sigaction: the program
    sets its action while traced, uemu detaches, and the action is still the program's."""
    path = runnable_build.directory / "sigtrap"
    program = start([str(path)])
    try:
        uemu = attach_cli(str(program.pid), "sigtrap:hit")
        assert converse(program, ["set", "hit"]) == ["set: was other", "hit: 1 caught 0"]
        code, _, err = stop_cli(uemu, signal.SIGINT)
        assert code == 0, err
        answers = converse(program, ["query", "trap", "hit", "quit"])
        assert answers == ["query: own", "trap: caught 1", "hit: 2 caught 1"]
        assert program.wait(10) == 0
    finally:
        program.kill()


def test_uemu_killed_after_the_program_set_its_action(runnable_build):
    """Under ``--mappings syscall`` uemu sees the program set its action, so the net stays
    the kernel's: once uemu is killed, the next hit is undone by the net, not taken by
    the program's handler (its count stays 1), and the program's action is then back."""
    path = runnable_build.directory / "sigtrap"
    program = start([str(path)])
    try:
        uemu = attach_cli("--mappings", "syscall", str(program.pid), "sigtrap:hit")
        assert converse(program, ["set", "trap", "hit"]) == ["set: was default", "trap: caught 1", "hit: 1 caught 1"]
        uemu.kill()
        uemu.communicate(timeout=30)
        wait_until(lambda: _tracer(program.pid) == 0, what="uemu's ptrace to end")
        assert converse(program, ["hit", "hit", "query", "trap", "quit"]) == \
            ["hit: 2 caught 1", "hit: 3 caught 1", "query: own", "trap: caught 2"]
        assert program.wait(10) == 0
    finally:
        program.kill()


def _tracer(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("TracerPid:"))
