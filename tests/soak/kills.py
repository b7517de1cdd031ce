"""``kill -9`` of uemu at random moments while it traces samples/survival (or
samples/evict, below).

Moments: while arming (after the seize for ``attach``, after the fork for
``run``), armed but before any hit (``cold``: the slow guarded probe every
0.5 s, whose next pass is the first orphaned hit), under a hot semaphore-guarded
probe, during out-of-line steps in jump
and in step slots (raw probes on work()), while following forks (``-f``, the
sample forking a child every 50 ms), while every thread is parked to mend a
semaphore lowered behind uemu's back (``mending``: the hot threads single-step
work()'s ret, so a thread is often parked right after its step), and while
leaving (SIGINT, then SIGKILL within 1.2 times what leaving took in a try that
was not killed).  Then the target
must make its first orphaned hits and be judged (judge.py).  ``run`` sets
PTRACE_O_EXITKILL (README): its rows say what that does.  The repair variant runs
``uemu repair PID`` right after the kill, once that command exists.

``evict`` (attach only, x86_64 builds: the sample is x86-64 assembly) kills uemu
as ``hot`` does while it traces ``samples/evict hot``, whose threads call the
functions of every site whose successor uemu evicts (the program maps a page at
each pun's own target before its ``start``; README: the jump path), each result
checked by the program; the notes say how many of those sites held their two
writes (e9 e9) at the kill.  Not under ``run``: uemu would arm before the program
blocks the targets, so only evict:mov_imm (its target in the program's own text)
would be evicted, and EXITKILL ends the command anyway.
"""

from __future__ import annotations

import functools
import random
import signal
import subprocess
import time
from dataclasses import dataclass

from conftest import Build
from judge import PROGRESS_TIMEOUT, judge
from residue import semaphores
from sites import stepped
from tally import Outcome
from target import UEMU, Target, Uemu, ignored, wait_for
from tracee import thread_states, tracer_pid

MOMENTS = ("arming", "cold", "hot", "jump", "step", "forks", "mending", "leaving")
EVICT = "evict"
"""The moment of ``hot``, on samples/evict's evicted sites (attach only)."""
THREADS = 4
SLOW_MS = 3000
"""survival:slow every 3 s, as in the issue; 0.5 s where it is the probe hit,
50 ms where the sample forks."""
COLD_MS = 500
FORK_MS = 50
LIFETIME_MS = 120_000
"""survival's own end: no target outlives a try that lost track of it."""
ARMING_SPAN = 1.2
"""A kill while arming (leaving) lands at random within this many times the time
arming (leaving) took in a try that was not killed (measured once per scenario and
soak run: arming from the seize for attach, from the fork for run; leaving from
SIGINT to uemu's end); the notes say how many kills came before uemu was armed (after
it had ended)."""
TRACING_WINDOW = 0.4
PARK_WAIT = 3.0
"""Seconds to watch for every thread parked at once (uemu looks for changes every second,
``ownsignals.CHECK_INTERVAL``) once the semaphore is lowered."""


@functools.cache
def repair_available() -> bool:
    return subprocess.run([*UEMU, "repair", "--help"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          check=False).returncode == 0


@dataclass(frozen=True)
class Kill:
    command: str
    """attach or run"""
    moment: str
    build: Build
    repair: bool = False

    @property
    def name(self) -> str:
        return f"kill9/{self.command}/{self.moment}/{self.build.name}" + ("/repair" if self.repair else "")

    @property
    def full(self) -> int:
        """200 tries of attach (the issue's goal: 0 dead in 200); run dies by design (EXITKILL)."""
        return 200 if self.command == "attach" else 20

    @property
    def short(self) -> int:
        if self.moment == EVICT:  # once in CI's --short, on the default build
            return int(not self.repair and self.build.name == "x86_64-O2")
        if self.command == "attach" and not self.repair:
            return 1
        return int(self.moment == "hot" and self.build.target == "x86_64")

    @property
    def available(self) -> str | None:
        """Why the scenario cannot run here, or None."""
        if self.repair and not repair_available():
            return "repair: not available"
        if self.moment == "leaving":
            return ignored(signal.SIGINT)
        if self.moment == EVICT:
            if not (self.build.directory / "evict").exists():
                return f"kill9/attach/evict/{self.build.name}: no samples/evict in this build (x86_64 only)"
            return None
        if self.moment in ("step", "mending") and "step" not in stepped(self.build.directory / "survival", "work"):
            return f"kill9/*/{self.moment}/{self.build.name}: no two-stop site (every slot near the code jumps back)"
        return None

    def probes(self) -> list[str]:
        """The moment's probes: "jump" and "step" stand for work()'s raw sites of that
        kind (sites.stepped), of which aarch64 and riscv64 have only the first."""
        if self.moment == EVICT:
            return ["evict:*"]
        raw = stepped(self.build.directory / "survival", "work")
        words = {
            "arming": ["survival:*", *raw],
            "cold": ["survival:slow"],
            "hot": ["survival:hot"],
            "jump": ["jump"],
            "step": ["step"],
            "forks": ["survival:hot", "jump"],
            "mending": ["survival:hot", "step"],
            "leaving": ["survival:hot", *raw],
        }[self.moment]
        return [raw.get(word, word) for word in words]

    def _start(self) -> tuple[Target, Uemu]:
        forks = self.moment == "forks"
        slow_ms = {"forks": FORK_MS, "cold": COLD_MS}.get(self.moment, SLOW_MS)
        argv: list[object] = [self.build.directory / "survival", THREADS, slow_ms, LIFETIME_MS,
                              *(["fork"] if forks else [])]
        if self.moment == EVICT:  # its pun targets blocked before its "sync start"
            argv = [self.build.directory / "evict", "hot", THREADS, LIFETIME_MS]
        options = ["-o", "/dev/null", *(["-f"] if forks else [])]
        if self.command == "attach":
            target = Target(argv)
            target.wait_line("sync")
            return target, Uemu("attach", [*options, str(target.pid), *self.probes()])
        target = Target(argv, under=[*options, *self.probes()])
        assert target.uemu is not None
        return target, target.uemu

    @property
    def _start_word(self) -> str:
        return "seize" if self.command == "attach" else "fork"

    def _seized(self, uemu: Uemu, target: Target) -> bool:
        """Wait until uemu holds the target (attach) or has started it (run), or has ended."""
        if self.command == "attach":
            return wait_for(lambda: tracer_pid(target.known_pid) == uemu.pid or uemu.process.poll() is not None, 30)
        return wait_for(lambda: target.pid is not None or uemu.process.poll() is not None, 30)

    def __call__(self, rng: random.Random) -> Outcome:
        outcome = Outcome()
        if self.moment in ("arming", "leaving"):
            phase_time(self, self.moment)  # measured before this try starts, once
        target, uemu = self._start()
        try:
            self._kill(uemu, target, rng, outcome)
            uemu.finish(30)
            outcome.internal += uemu.failures()
            if target.pid is None:
                return outcome
            if self.repair:
                _repair(target.pid, outcome)
            if self.moment == "cold":  # two slow periods: one whole pass after the kill
                judge(target, outcome, ticks=2, timeout=PROGRESS_TIMEOUT + 2 * COLD_MS / 1000)
            else:
                judge(target, outcome)
        finally:
            target.close()
            uemu.close()
        return outcome

    def _kill(self, uemu: Uemu, target: Target, rng: random.Random, outcome: Outcome) -> None:
        if self.moment == "arming":
            window = ARMING_SPAN * phase_time(self, "arming")
            outcome.notes[f"killed within {window * 1000:.0f} ms of the {self._start_word}"] += 1
            if not self._seized(uemu, target):
                outcome.hangs.append("uemu neither seized nor ended in 30 s")
            time.sleep(rng.uniform(0, window))
        else:
            if not uemu.wait_ready():
                outcome.notes[f"uemu ended before it was armed ({uemu.process.returncode})"] += 1
            time.sleep(rng.uniform(0, TRACING_WINDOW))
            if self.moment == "mending":
                _kill_parked(uemu, target, outcome)
                return
            if self.moment == "leaving":
                uemu.send(signal.SIGINT)
                time.sleep(rng.uniform(0, ARMING_SPAN * phase_time(self, "leaving")))
            if self.moment == EVICT:
                _count_evicted(target, outcome)
        if uemu.process.poll() is not None:
            outcome.notes["uemu had ended before the kill"] += 1
        elif not uemu.ready.exists():
            outcome.notes["killed before armed"] += 1
        if target.pid is None:  # run: found while still uemu's child, or never
            outcome.notes["killed before the command existed"] += 1
        uemu.send(signal.SIGKILL)


def _count_evicted(target: Target, outcome: Outcome) -> None:
    """A note of how many of samples/evict's evictable sites (its ``site`` lines) hold
    both of uemu's writes, the pun's opcode over the nop and a jump's over the successor."""
    sites = [int(line.values[0]) for line in target.lines() if line.kind == "site"]
    try:
        with open(f"/proc/{target.known_pid}/mem", "rb", buffering=0) as mem:
            evicted = 0
            for site in sites:
                mem.seek(site)
                evicted += mem.read(2) == b"\xe9\xe9"
    except OSError:
        outcome.notes["sites not read at the kill"] += 1
        return
    outcome.notes[f"killed with {evicted} of {len(sites)} sites evicted"] += 1


def _kill_parked(uemu: Uemu, target: Target, outcome: Outcome) -> None:
    """Lower the hot probe's semaphore behind uemu's back: at its next look uemu parks
    every thread to raise it again (``Tracer.while_parked``).  SIGKILL as soon as every
    thread is seen stopped at once, the program's own time never stopping them all."""
    pid = target.known_pid
    with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
        mem.seek(semaphores(target.lines())["survival:hot"])
        mem.write(bytes(2))
    try:
        parked = wait_for(lambda: set(thread_states(pid).values()) == {"t"}, PARK_WAIT, step=0)
    except OSError:
        parked = False
    outcome.notes["killed with every thread seen parked" if parked else f"no park seen in {PARK_WAIT:g} s"] += 1
    uemu.send(signal.SIGKILL)


@functools.cache
def phase_time(kill: Kill, phase: str) -> float:
    """Seconds a try left to end the ordinary way spends ``arming`` (from the seize for
    attach, from the fork for run, to armed) or ``leaving`` (from SIGINT, once it has
    traced for TRACING_WINDOW, to uemu's end)."""
    target, uemu = kill._start()
    try:
        kill._seized(uemu, target)
        began = time.monotonic()
        uemu.wait_ready()
        if phase == "arming":
            return time.monotonic() - began
        time.sleep(TRACING_WINDOW)
        began = time.monotonic()
        uemu.send(signal.SIGINT)
        uemu.finish(30)
        return time.monotonic() - began
    finally:
        uemu.send(signal.SIGINT)
        uemu.finish(30)
        target.close()
        uemu.close()


def _repair(pid: int, outcome: Outcome) -> None:
    try:
        result = subprocess.run([*UEMU, "repair", str(pid)], capture_output=True, text=True, timeout=30,
                                check=False)
    except subprocess.TimeoutExpired:
        outcome.hangs.append("uemu repair did not end in 30 s")
        return
    outcome.notes[f"repair exit {result.returncode}"] += 1
    if "Traceback" in result.stderr or "internal error" in result.stderr:
        outcome.internal.append("repair: " + result.stderr.strip().splitlines()[-1])


def scenarios(builds: list[Build]) -> list[Kill]:
    return [Kill(command, moment, build, repair)
            for repair in (False, True) for command in ("attach", "run") if not (repair and command == "run")
            for moment in (*MOMENTS, *([EVICT] if command == "attach" else [])) for build in builds]
