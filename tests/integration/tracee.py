"""A sample program run as a target to attach to, paused at its sync points
(samples/README.md: SAMPLE_SYNC), and the memory facts tests compare."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import pytest
from samplelog import Line, expected_hits, parse

from uemu.maps import read_maps

SLOWDOWN = float(os.environ.get("UEMU_TEST_SLOWDOWN", "1"))
"""How many times slower than a native machine the tests run: the test guests
(tests/vm/guest-tests.sh) set it, as their CPU is emulated.  Every wait here is
stretched by it; a wait only lasts that long when what it waits for fails."""


def wait_until(condition: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout * SLOWDOWN
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Tracee:
    """A sample started with SAMPLE_SYNC=1: it stops at each ``sync`` line until
    ``release()`` writes a line to its stdin.

    ``under`` runs it under another command (``uemu run --``), which passes
    stdin through; ``pid`` is then the sample's, from its own lines.
    """

    def __init__(self, argv: Sequence[str | Path], env: dict[str, str] | None = None,
                 under: Sequence[str] = ()):
        # both live as long as the Tracee: closed by close()
        self._out = tempfile.NamedTemporaryFile("r", prefix="tracee-")  # noqa: SIM115
        self._err = tempfile.NamedTemporaryFile("r", prefix="tracee-err-")  # noqa: SIM115
        environment = dict(os.environ, SAMPLE_OUT=self._out.name, SAMPLE_SYNC="1", **(env or {}))
        self.process = subprocess.Popen([*under, *(str(a) for a in argv)], stdin=subprocess.PIPE,
                                        env=environment, stdout=subprocess.DEVNULL, stderr=self._err)
        self.pid = self.process.pid
        if under:
            self.pid = wait_until(lambda: next((line.pid for line in self.lines()), None), what="the sample")
        self.syncs_seen = 0

    def lines(self) -> list[Line]:
        self._out.seek(0)
        return parse(self._out.read())

    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read()

    def wait_sync(self, label: str, timeout: float = 20.0) -> None:
        """Wait until the program stands at the next sync point, which must be ``label``."""
        want = self.syncs_seen + 1

        def reached() -> bool:
            syncs = [line.word for line in self.lines() if line.kind == "sync"]
            return len(syncs) >= want

        wait_until(reached, timeout, what=f"sync {label}")
        syncs = [line.word for line in self.lines() if line.kind == "sync"]
        assert syncs[want - 1] == label, syncs
        self.syncs_seen = want
        # it prints the line, then blocks reading stdin
        wait_until(lambda: process_state(self.pid) in ("S", "D"), what="the program to block")

    def release(self) -> None:
        self.process.stdin.write(b"\n")
        self.process.stdin.flush()

    def run_out(self) -> None:
        """Let the program run its remaining phases to the end; it must exit 0."""
        self.process.stdin.close()
        assert self.process.wait(20 * SLOWDOWN) == 0

    def finish(self, timeout: float = 20.0) -> int:
        self.process.stdin.close()
        return self.process.wait(timeout * SLOWDOWN)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            try:
                self.process.wait(timeout=30 * SLOWDOWN)
            except subprocess.TimeoutExpired:  # a fail, not a hang of the whole suite
                raise AssertionError(f"process {self.pid} was killed but is not gone: tracer "
                                     f"{tracer_pid(self.pid)} holds its threads") from None
        self._out.close()
        self._err.close()

    def __enter__(self) -> Tracee:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stream:
        return stream.read().rsplit(")", 1)[1].split()[0]


def cpu_ticks(pid: int, tid: int | None = None) -> int:
    """User plus system time, in clock ticks, the process has run (or its thread ``tid``):
    /proc/PID/stat's (or /proc/PID/task/TID/stat's) utime and stime."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path, "rb") as stream:
        fields = stream.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def tracer_pid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as stream:
        for line in stream:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    raise AssertionError("no TracerPid line")


def thread_states(pid: int) -> dict[int, str]:
    return {int(tid): process_state(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def read_memory(pid: int, address: int, size: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(address)
        return mem.read(size)


def semaphore(pid: int, address: int) -> int:
    return int.from_bytes(read_memory(pid, address, 2), sys.byteorder)


def file_memory(pid: int, writable: bool = True) -> dict[tuple[int, int, str, str], bytes]:
    """Every file-backed mapping's bytes (text, rodata, and unless told not to,
    data and .probes), keyed (start, end, perms, path)."""
    snapshot = {}
    for vma in read_maps(pid):
        if vma.file_backed and vma.readable and vma.path.startswith("/") and (writable or not vma.writable):
            snapshot[(vma.start, vma.end, vma.perms, vma.path)] = read_memory(pid, vma.start, vma.end - vma.start)
    return snapshot


def differences(before: dict, after: dict) -> list[str]:
    """Human-readable list of what changed between two ``file_memory`` snapshots."""
    changed = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old != new:
            if old is None or new is None:
                changed.append(f"{key[3]} {key[0]:#x}: mapping {'appeared' if old is None else 'vanished'}")
                continue
            first = next(i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b)
            was, now = old[first:first + 8].hex(), new[first:first + 8].hex()
            changed.append(f"{key[3]} {key[0] + first:#x}: {was} -> {now}")
    return changed


def compile_program(directory: Path, name: str, source: str, *flags: str) -> Path:
    """A small C program a test writes for itself (a case no sample should carry),
    built with gcc -O1 into ``directory``; the test skips without gcc."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    (directory / f"{name}.c").write_text(source)
    subprocess.run(["gcc", "-O1", *flags, str(directory / f"{name}.c"), "-o", str(directory / name)], check=True)
    return directory / name


UEMU = (sys.executable, "-m", "uemu")
"""The command line of uemu itself, for ``Tracee(under=(*UEMU, "run", "--"))``."""


def uemu_cli(*args: str) -> subprocess.Popen:
    """``uemu ARGS`` in its own process (leaving on signals is part of what is tested)."""
    return subprocess.Popen([*UEMU, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


class SpooledCli(subprocess.Popen[str]):
    """``uemu ARGS`` whose stdout and stderr go to files, read by communicate() at the
    end.  A pipe nobody reads until then fills at 64 KiB and blocks uemu's next write,
    and with it every hit of the program: a hit on the trap path waits in its stop, one
    on the jump path for room in the ring (the riscv64 guest, whose sites all trap,
    filled it in the time between arming and a test's next step)."""

    def __init__(self, *args: str) -> None:
        # as long as this object: communicate() may be called again (a failed assert's message)
        self._spools = (tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+"))  # noqa: SIM115
        super().__init__([*UEMU, *args], stdout=self._spools[0], stderr=self._spools[1], text=True)

    def communicate(self, input: str | None = None, timeout: float | None = None) -> tuple[str, str]:
        assert input is None, "uemu reads nothing from its stdin here"
        self.wait(timeout)
        out, err = (self._read(spool) for spool in self._spools)
        return out, err

    @staticmethod
    def _read(spool: IO[str]) -> str:
        spool.seek(0)
        return spool.read()


def attach_cli(*args: str) -> SpooledCli:
    """``uemu attach ARGS``, returned once its probes are armed (``--ready-file``)
    or it has ended (an error): before that the program may pass probes uemu has
    not yet put in place."""
    ready = Path(tempfile.mkdtemp(prefix="uemu-ready-")) / "ready"
    process = SpooledCli("attach", "--ready-file", str(ready), *args)
    try:
        wait_until(lambda: ready.exists() or process.poll() is not None, what="uemu to arm")
    finally:
        shutil.rmtree(ready.parent)
    return process


def one_error_line(result: subprocess.CompletedProcess, code: int, *words: str) -> None:
    """The CLI failed as documented: exit ``code``, one ``uemu: ...`` line on stderr
    holding ``words``, no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("uemu: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def stop_cli(process: subprocess.Popen, how: int | None) -> tuple[int, str, str]:
    if how is not None:
        process.send_signal(how)
    out, err = process.communicate(timeout=30 * SLOWDOWN)
    return process.returncode, out, err


def interrupt_and_run_out(tracee: Tracee, cli: subprocess.Popen) -> list[tuple[str, tuple, int]]:
    """Stop an attached uemu with SIGINT, which must leave quietly (exit 0, nothing on
    stderr), let the program run to its end, and return the hits it printed."""
    code, _, err = stop_cli(cli, signal.SIGINT)
    assert code == 0 and err == "", err
    tracee.run_out()
    return expected_hits(tracee.lines())

