"""The in-target runtime in real processes: a tracer arms samples/orphan the way uemu
does (the area, the handler with the program's action saved, a breakpoint and a raised
semaphore, each written to the table first), then dies of SIGKILL without undoing
anything.  The program must go on as if never traced: its own lines (and an untraced run
of it) are the oracle, its text must be byte-identical to what it was before, its
semaphore back to 0, its own SIGTRAP action back, and a raise(SIGTRAP) must reach its
own handler, before and after the net has undone everything.

The tracer is a forked child of the test, killed as uemu would be by the OOM killer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from samplelog import Line, parse
from tracee import differences, file_memory, wait_until

from uemu import ptrace, sdt, xol
from uemu.arch import by_name
from uemu.maps import read_maps
from uemu.net import PROT_EXEC, PROT_READ, Net, map_area, read_table
from uemu.runtime import has_blob
from uemu.runtime.layout import TableState

SI_TKILL = -6
SA_SIGINFO, SA_RESTART = 0x4, 0x10000000


@dataclass
class Armed:
    tracer: int
    site: int
    semaphore: int
    base: int


def _arm(pid: int, trapped: bool, report: int) -> None:
    """The tracer (a forked child): arm ``pid``, say so on ``report``, then wait to die."""
    ptrace.seize(pid, ptrace.O_TRACESYSGOOD)
    ptrace.interrupt(pid)
    os.waitpid(pid, ptrace.WALL)
    vmas = read_maps(pid)
    memory = ptrace.Memory(pid)
    objects, _ = sdt.mapped_objects(pid, vmas)
    program = next(obj for obj in objects if any(p.full_name == "orphan:tick" for p in obj.elf.probes))
    probe = next(p for p in program.elf.probes if p.full_name == "orphan:tick")
    arch = by_name(program.elf.arch_name)
    regs = ptrace.Regset(arch.regset, arch.regset_word)
    regs.fetch(pid)
    at = xol.find_syscall_insn(arch, vmas, memory)

    def hold(sig: int, info: bytes) -> None:
        raise AssertionError(f"signal {sig} while injecting")

    def call(name: str, *args: int) -> int:
        return xol.inject_syscall(pid, regs, arch, at, arch.xol_syscalls[name], args, hold)

    base = map_area(arch, call)
    net = Net(arch, base, memory)
    net.install(call, tracer_pid=os.getpid())
    site = program.runtime_address(probe.file_offset)
    semaphore = program.runtime_semaphore(probe.semaphore_offset)
    orig = memory.read(site, arch.backend.max_insn_len)
    trap = arch.backend.trap_bytes(orig)
    net.add_site(site, orig, trap, PROT_READ | PROT_EXEC)
    memory.write(site, trap)
    value = int.from_bytes(memory.read(semaphore, 2), "little")
    net.raise_counter(semaphore)
    memory.write(semaphore, (value + 1).to_bytes(2, "little"))
    ptrace.cont(pid)
    os.write(report, f"armed {site} {semaphore} {base}\n".encode())
    if trapped:
        while True:  # the program's thread stops at our breakpoint; we die with it stopped there
            tid, status = os.waitpid(-1, ptrace.WALL)
            if os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGTRAP:
                os.write(report, b"trapped\n")
                break
            ptrace.cont(tid, os.WSTOPSIG(status) if ptrace.stop_event(status) == 0 else 0)
    while True:
        signal.pause()


@contextmanager
def tracer(pid: int, trapped: bool = False) -> Iterator[tuple[Armed, object]]:
    """Fork a tracer that arms ``pid``; yields what it armed and a way to read its next line."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        status = 1
        try:
            os.close(read_end)
            _arm(pid, trapped, write_end)
        except BaseException as err:  # noqa: BLE001  (the child must never return into pytest)
            os.write(2, f"tracer: {err!r}\n".encode())
        finally:
            os._exit(status)
    os.close(write_end)
    lines = os.fdopen(read_end, "r")
    try:
        words = lines.readline().split()
        assert words and words[0] == "armed", "the tracer failed (see stderr)"
        yield Armed(child, *(int(w) for w in words[1:])), lines
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        lines.close()


class Orphan:
    """samples/orphan, its lines in a file; it spins until SIGUSR1, and waits at ``done``."""

    def __init__(self, program: Path, *args: str):
        self._out = tempfile.NamedTemporaryFile("r", prefix="orphan-")
        env = dict(os.environ, SAMPLE_OUT=self._out.name, SAMPLE_SYNC="1")
        self.process = subprocess.Popen([str(program), *args], stdin=subprocess.PIPE, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.pid = self.process.pid
        wait_until(lambda: self.sync("ready"), what="orphan to start")

    def lines(self) -> list[Line]:
        self._out.seek(0)
        return parse(self._out.read())

    def sync(self, label: str) -> bool:
        return any(line.kind == "sync" and line.word == label for line in self.lines())

    def go(self) -> None:
        os.kill(self.pid, signal.SIGUSR1)

    def finish(self) -> int:
        """Let it exit from ``done`` (or wait for its death)."""
        self.process.stdin.close()
        return self.process.wait(30)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._out.close()


def untraced(program: Path, *args: str) -> tuple[int, list[Line]]:
    """The oracle: the same run without any tracer."""
    orphan = Orphan(program, *args)
    try:
        orphan.go()
        if orphan.process.poll() is None:
            wait_until(lambda: orphan.sync("done") or orphan.process.poll() is not None, what="orphan to end")
        return orphan.finish(), orphan.lines()
    finally:
        orphan.close()


def facts(lines: list[Line]) -> dict[str, list[tuple[str, ...]]]:
    """What the program says about itself, minus what differs from run to run (pids,
    addresses, hit counts)."""
    out: dict[str, list[tuple[str, ...]]] = {}
    for line in lines:
        if line.kind in ("trap", "action", "sync"):
            out.setdefault(line.kind, []).append((line.word, *line.values))
        elif line.kind == "sema":
            out.setdefault("sema", []).append(line.values[-1:])
    return out


@pytest.fixture
def orphan_program(runnable_build) -> Path:
    program = runnable_build.directory / "orphan"
    arch = sdt.open_elf(str(program)).arch_name
    if not has_blob(arch):
        pytest.skip(f"no in-target runtime for {arch}")
    return program


def _orphaned_run(program: Path, mode: str, threads: int, trapped: bool) -> tuple[int, list[Line], list[str]]:
    orphan = Orphan(program, mode, str(threads))
    try:
        before = file_memory(orphan.pid, writable=False)
        with tracer(orphan.pid, trapped) as (armed, report):
            if trapped:
                orphan.go()
                assert report.readline().strip() == "trapped"
        # the tracer is dead: nothing of it undone by it
        table = read_table(armed.base, ptrace.Memory(orphan.pid))
        assert [site.addr for _, site in table.sites] == [armed.site]
        if not trapped:
            orphan.go()
        wait_until(lambda: orphan.sync("done") or orphan.process.poll() is not None, what="orphan to end")
        changed = []
        if orphan.process.poll() is None:
            changed = differences(before, file_memory(orphan.pid, writable=False))
            state = read_table(armed.base, ptrace.Memory(orphan.pid)).header.state
            assert state == TableState.DETACHED
        return orphan.finish(), orphan.lines(), changed
    finally:
        orphan.close()


@pytest.mark.parametrize("threads", [1, 4])
def test_program_outlives_its_tracer(orphan_program: Path, threads: int) -> None:
    """The tracer dies while the program runs; its threads then meet the breakpoint."""
    status, lines, changed = _orphaned_run(orphan_program, "handler", threads, trapped=False)
    assert status == 0
    assert changed == [], "text differs from before the tracer came"
    got = facts(lines)
    assert got["sema"] == [("1",), ("0",)], "raised by the tracer, then lowered by the net"
    assert sum(int(line.values[0]) for line in lines if line.kind == "hits") >= 1
    # its own raise(SIGTRAP) reached its own handler, through the net and after it
    assert got["trap"] == [("1", str(SI_TKILL)), ("2", str(SI_TKILL))]
    _, oracle = untraced(orphan_program, "handler", str(threads))
    assert got["action"] == facts(oracle)["action"]
    assert got["action"][0][0] == "own" and int(got["action"][0][1]) & (SA_SIGINFO | SA_RESTART)


def test_tracer_dies_with_the_thread_stopped_at_its_breakpoint(orphan_program: Path) -> None:
    """The tracer dies while the thread sits in the signal-delivery stop of our trap:
    on Linux 6.x that SIGTRAP is dropped and the thread resumes past the int3 (harmless
    over an SDT nop); its next pass meets the breakpoint untraced and the net restores."""
    status, lines, changed = _orphaned_run(orphan_program, "handler", 1, trapped=True)
    assert status == 0
    assert changed == []
    got = facts(lines)
    assert got["sema"][-1] == ("0",)
    assert got["action"][0][0] == "own"


@pytest.mark.parametrize("mode", ["default", "raise"])
def test_default_action_comes_back(orphan_program: Path, mode: str) -> None:
    """SIGTRAP at SIG_DFL: the action goes back to SIG_DFL; a raise(SIGTRAP) that is not
    ours kills the program through the net exactly as it does untraced."""
    status, lines, changed = _orphaned_run(orphan_program, mode, 2, trapped=False)
    oracle_status, oracle = untraced(orphan_program, mode, "2")
    assert status == oracle_status
    assert facts(lines).get("action") == facts(oracle).get("action")
    if mode == "default":
        assert status == 0 and changed == []
        assert facts(lines)["sema"] == [("1",), ("0",)]
    else:
        assert status == -signal.SIGTRAP
