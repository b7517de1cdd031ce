"""uemu leaving in the ordinary ways while a program runs through its probes.

- sigstop5: uemu stopped with SIGSTOP for 5 s (threads wait at their hits),
  then SIGCONT, then told to leave (SIGINT).
- signal: SIGTERM, SIGINT or SIGHUP at a random moment from uemu's start
  (interpreter start, seize, arming or tracing).
- parked: threads parked in read, futex, nanosleep and epoll_wait (samples/parked)
  while others pass a probe stepped out of line; uemu leaves.  Counts the
  kernel-internal errnos (512 ERESTARTSYS and kin) and early returns the program
  sees.  ``parked/strace`` is the baseline of any ptrace tool: ``strace -f -p``
  attached and gone, no uemu.
- swarm: thousands of threads passing a probe stepped out of line (two stops,
  the thread in its slot between them; on aarch64 and riscv64, which have no
  such site, a slot that jumps back); uemu must not abort for want of slots.

For ``run``, leaving removes the probes and uemu stays until the command ends
(README): the command is judged first, then ended, then uemu's status is its.
"""

from __future__ import annotations

import errno
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

from conftest import Build
from judge import judge
from kills import LIFETIME_MS, SLOW_MS, THREADS, TRACING_WINDOW
from sites import every_kind, step_or_jump
from tally import Outcome
from target import Target, Uemu, describe, ignored, wait_for
from tracee import process_state

KERNEL_INTERNAL = range(512, 531)
"""ERESTARTSYS .. (include/linux/errno.h): never meant for user space."""
LEAVE_TIMEOUT = 30.0
STOP_SECONDS = 5.0
START_WINDOW = 1.2
"""Seconds from uemu's start in which a leaving signal lands at random in half
the tries: the interpreter starting, the seize, arming and the first hits; in
the other half, within TRACING_WINDOW once armed."""


def _survival_under(command: str, build: Build, probes: list[str]) -> tuple[Target, Uemu]:
    argv = [build.directory / "survival", THREADS, SLOW_MS, LIFETIME_MS]
    if command == "attach":
        target = Target(argv)
        target.wait_line("sync")
        return target, Uemu("attach", ["-o", "/dev/null", str(target.pid), *probes])
    target = Target(argv, under=["-o", "/dev/null", *probes])
    assert target.uemu is not None
    return target, target.uemu


def _every_kind(build: Build) -> list[str]:
    """A hot guarded probe and every kind of out-of-line step the build has."""
    return ["survival:hot", *every_kind(build.directory / "survival", "work")]


def _leave(command: str, target: Target, uemu: Uemu, signo: int, outcome: Outcome) -> None:
    """Tell uemu to leave, and judge the target."""
    uemu.send(signo)
    _judge_leaving(command, target, uemu, signal.Signals(signo).name, outcome)


def _judge_leaving(command: str, target: Target, uemu: Uemu, after: str, outcome: Outcome) -> None:
    """Judge the target after uemu's end for attach, before it for run (uemu run
    ends with the command)."""
    if command == "attach":
        _uemu_ended(command, uemu, target, after, outcome)
        judge(target, outcome)
    else:
        judge(target, outcome)
        _uemu_ended(command, uemu, target, after, outcome)


def _uemu_ended(command: str, uemu: Uemu, target: Target, after: str, outcome: Outcome) -> None:
    """uemu's end once told to leave: its exit code or a hang, its own failures, and
    for run the command's death when uemu reaped it (status 128+N: signal N)."""
    if not wait_for(lambda: uemu.process.poll() is not None, LEAVE_TIMEOUT):
        outcome.hangs.append(f"uemu {command} did not end in {LEAVE_TIMEOUT:g} s after {after} (uemu "
                             f"{process_state(uemu.pid)}, target threads {target.states()})")
    code = uemu.finish(0)
    outcome.internal += uemu.failures()
    if code is None:
        return
    outcome.notes[f"uemu {command} exit {describe(code)}"] += 1
    said = uemu.stderr().strip().splitlines()
    if code != 0 and said and code <= 128:  # its own error, not the command's status
        outcome.notes[f"uemu {command} said: {said[-1]}"] += 1
    if command == "run" and target.pid is not None and target.code is None and code > 128:
        outcome.died.append(f"ended with signal {signal.Signals(code - 128).name} (uemu run's status)")


@dataclass(frozen=True)
class Stopped:
    """SIGSTOP of uemu for 5 s, SIGCONT, then SIGINT."""

    command: str
    build: Build

    @property
    def name(self) -> str:
        return f"sigstop5/{self.command}/{self.build.name}"

    @property
    def available(self) -> str | None:
        return ignored(signal.SIGINT)

    @property
    def full(self) -> int:
        return 20

    @property
    def short(self) -> int:
        return int(self.command == "attach" and self.build.target == "x86_64")

    def __call__(self, rng: random.Random) -> Outcome:
        outcome = Outcome()
        target, uemu = _survival_under(self.command, self.build, _every_kind(self.build))
        try:
            if not uemu.wait_ready():
                outcome.notes["uemu ended before it was armed"] += 1
            time.sleep(rng.uniform(0, 0.4))
            uemu.send(signal.SIGSTOP)
            time.sleep(STOP_SECONDS)
            uemu.send(signal.SIGCONT)
            time.sleep(0.3)
            _leave(self.command, target, uemu, signal.SIGINT, outcome)
        finally:
            target.close()
            uemu.close()
        return outcome


@dataclass(frozen=True)
class Signalled:
    """A leaving signal at a random moment from uemu's start, or while it traces."""

    command: str
    signo: signal.Signals
    build: Build

    @property
    def name(self) -> str:
        return f"signal/{self.command}/{self.signo.name}/{self.build.name}"

    @property
    def available(self) -> str | None:
        return ignored(self.signo)

    @property
    def full(self) -> int:
        return 100 if self.command == "attach" else 30

    @property
    def short(self) -> int:
        return int(self.build.target == "x86_64")

    def __call__(self, rng: random.Random) -> Outcome:
        outcome = Outcome()
        target, uemu = _survival_under(self.command, self.build, _every_kind(self.build))
        try:
            if rng.random() < 0.5:
                time.sleep(rng.uniform(0, START_WINDOW))
            else:
                uemu.wait_ready()
                time.sleep(rng.uniform(0, TRACING_WINDOW))
            if not uemu.ready.exists():
                outcome.notes["signalled before armed"] += 1
            if target.pid is not None:
                _leave(self.command, target, uemu, self.signo, outcome)
                return outcome
            # run, the command not started yet: uemu may end, or start it and stay until it ends
            outcome.notes["signalled before the command existed"] += 1
            uemu.send(self.signo)
            if wait_for(lambda: target.pid is not None or uemu.process.poll() is not None, LEAVE_TIMEOUT) \
                    and target.pid is not None:
                outcome.notes["uemu run started the command after the signal"] += 1
                _judge_leaving(self.command, target, uemu, self.signo.name, outcome)
            else:
                _uemu_ended(self.command, uemu, target, self.signo.name, outcome)
        finally:
            target.close()
            uemu.close()
        return outcome


def woke(target: Target, parkers: int, outcome: Outcome) -> None:
    """The parked threads' own account (samples/parked), and its results."""
    lines = target.lines()
    reports = [line for line in lines if line.kind == "woke"]
    for line in reports:
        result, err, early = (int(v) for v in line.values)
        if err in KERNEL_INTERNAL:
            outcome.harmed.append(f"{line.word} returned {result} with errno {err} (kernel-internal)")
            outcome.notes[f"{line.word}: errno {err}"] += 1
        elif line.word == "epoll_wait" and err == errno.EINTR:
            outcome.notes["epoll_wait: EINTR (what any ptrace stop does: see parked/strace)"] += 1
        elif line.word == "futex" and err == errno.EAGAIN and not early:
            outcome.notes["futex: EAGAIN, woken while in a ptrace stop (the kernel's restart sees the new value)"] += 1
        elif early or err:
            when = "early" if early else "after the release"
            outcome.harmed.append(f"{line.word} returned {result}, errno {err}, {when}")
            outcome.notes[f"{line.word}: errno {err}, {when}"] += 1
    if len(reports) != parkers + 1:
        outcome.harmed.append(f"{len(reports)} of {parkers + 1} parked threads reported")
    wrong = [int(line.values[0]) for line in lines if line.kind == "result" and line.values != ("0",)]
    if wrong:
        outcome.harmed.append(f"step() returned a wrong value {sum(wrong)} times in {len(wrong)} threads")


@dataclass(frozen=True)
class Parked:
    """uemu (or strace, the baseline) leaves while threads are parked in system calls."""

    command: str
    """run, attach, or strace"""
    parkers: int
    build: Build
    hitters: int = 2
    pause_us: int = 200
    leave_after: tuple[float, float] = (0.2, 0.6)
    """Seconds from the moment every thread has started to the leaving, at random."""

    @property
    def name(self) -> str:
        return f"parked/{self.command}/{self.parkers}/{self.build.name}"

    @property
    def available(self) -> str | None:
        return "parked/strace: strace is not installed" if self.command == "strace" and not shutil.which(
            "strace") else None

    @property
    def full(self) -> int:
        return 20 if self.parkers < 100 else 5

    @property
    def short(self) -> int:
        return int(self.build.target == "x86_64" and self.parkers < 100)

    def duration_ms(self) -> int:
        """The program's own run after every thread has started: past the leaving."""
        return int(1000 * self.leave_after[1]) + 1000 + 5 * self.parkers

    def __call__(self, rng: random.Random) -> Outcome:
        outcome = Outcome()
        program = self.build.directory / "parked"
        argv = [program, self.parkers, self.hitters, self.duration_ms(), self.pause_us]
        probe = step_or_jump(program, "step")
        target = Target(argv, under=["-o", "/dev/null", probe] if self.command == "run" else None)
        uemu = target.uemu
        try:
            if not target.wait_line("sync", timeout=60):
                outcome.hangs.append("the threads did not all start in 60 s")
                return outcome
            if self.command == "attach":
                uemu = Uemu("attach", ["-o", "/dev/null", str(target.pid), probe])
                uemu.wait_ready()
            time.sleep(rng.uniform(*self.leave_after))
            if self.command == "strace":
                self._strace(target, rng)
            else:
                assert uemu is not None
                uemu.send(signal.SIGINT)
            if not target.wait_end(self.duration_ms() / 1000 + LEAVE_TIMEOUT):
                outcome.hangs.append("the program did not end after its deadline")
            if uemu is not None:
                _uemu_ended(self.command, uemu, target, "SIGINT", outcome)
            if target.code:  # ours: attached to, or orphaned by uemu run
                outcome.died.append(f"ended with {describe(target.code)}")
            woke(target, self.parkers, outcome)
        finally:
            target.close()
            if uemu is not None:
                uemu.close()
        return outcome

    def _strace(self, target: Target, rng: random.Random) -> None:
        strace = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", "-p", str(target.pid)],
                                  stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 0.6))
        strace.send_signal(signal.SIGINT)
        strace.wait()


@dataclass(frozen=True)
class Swarm:
    """THREADS threads passing a probe stepped out of line in a step slot (a jump slot where there is none)."""

    command: str
    threads: int
    build: Build
    available = None

    @property
    def name(self) -> str:
        return f"swarm/{self.command}/{self.threads}/{self.build.name}"

    @property
    def full(self) -> int:
        return 5

    @property
    def short(self) -> int:
        return int(self.command == "attach" and self.build.target == "x86_64" and self.threads < 1000)

    def __call__(self, rng: random.Random) -> Outcome:
        return Parked(self.command, 0, self.build, hitters=self.threads, pause_us=500_000,
                      leave_after=(1.0, 2.0))(rng)


def scenarios(builds: list[Build]) -> list:
    commands = ("attach", "run")
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    return [
        *(Stopped(command, build) for command in commands for build in builds),
        *(Signalled(command, signo, build) for command in commands for signo in signals for build in builds),
        *(Parked(command, parkers, build) for parkers in (40, 600) for command in ("run", "attach", "strace")
          for build in builds),
        *(Swarm(command, threads, build) for threads in (600, 2000) for command in commands for build in builds),
    ]
