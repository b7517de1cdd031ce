"""A sample started for one try (directly, or under ``uemu run``), the uemu
process beside it, and what the try sees of both: the sample's own lines, its
progress, how it ended, and what uemu said on stderr.

The soak process makes itself a child subreaper, so a command orphaned by the
death of ``uemu run`` becomes its child and its real exit status is known.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]

from conftest import PREBUILT, SAMPLES_DIR, Build  # noqa: E402
from residue import turns  # noqa: E402
from samplelog import Line, parse  # noqa: E402
from tracee import process_state  # noqa: E402

UEMU = (sys.executable, "-m", "uemu")
PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> None:
    """Orphaned descendants (the command of a killed ``uemu run``) become ours to wait for."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def build_samples(build: Build) -> None:
    """``make`` for one configuration of the samples (quick when nothing changed), unless
    it was built elsewhere (UEMU_SAMPLE_BUILDS: the test guests have no compiler)."""
    if build in PREBUILT:
        return
    subprocess.run(["make", "-s", "-j2", "-C", str(SAMPLES_DIR), f"TARGET={build.target}", f"OPT={build.opt}",
                    f"PIE={'yes' if build.pie else 'no'}"], check=True, stdout=subprocess.DEVNULL)


def describe(code: int) -> str:
    """A ``Popen.returncode``-style status in words."""
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"


def child_running(parent: int, program: str) -> int | None:
    """A child of ``parent`` that has executed ``program`` (uemu runs other
    programs too, such as ``ldd``, before the command)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stream:
                    if int(stream.read().rsplit(")", 1)[1].split()[1]) != parent:
                        continue
                with open(f"/proc/{entry}/cmdline", "rb") as stream:
                    if stream.read().split(b"\0")[0] == os.fsencode(program):
                        return int(entry)
            except (FileNotFoundError, ProcessLookupError):
                continue
    return None


def ignored(signo: int) -> str | None:
    """Why a scenario that tells uemu to leave by ``signo`` means nothing here, or None: this
    process ignores the signal (a background job of a shell without job control ignores
    SIGINT and SIGQUIT, nohup SIGHUP), uemu inherits that, and drops one sent before it
    takes the signal for itself: the tries would count hangs of uemu's not leaving."""
    if signal.getsignal(signo) is signal.SIG_IGN:
        return f"{signal.Signals(signo).name} is ignored here (a background job? nohup?): uemu would inherit that"
    return None


def wait_for(condition, timeout: float, step: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


class Uemu:
    """One uemu command, its stderr kept in a file, its ready file in a fresh directory."""

    def __init__(self, command: str, args: Sequence[str], env: dict[str, str] | None = None):
        self.directory = tempfile.TemporaryDirectory(prefix="soak-uemu-")
        self.ready = Path(self.directory.name) / "ready"
        self._err = open(Path(self.directory.name) / "stderr", "w+")  # noqa: SIM115  (closed with the directory)
        self.process = subprocess.Popen([*UEMU, command, "--ready-file", str(self.ready), *args],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err,
                                        env=env)
        self.pid = self.process.pid

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """True once armed; False when uemu ended first or took too long."""
        return wait_for(lambda: self.ready.exists() or self.process.poll() is not None, timeout) \
            and self.ready.exists()

    def send(self, signo: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signo)

    def finish(self, timeout: float) -> int | None:
        """Its exit code, or None when it did not end in time (then it is killed)."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read()

    def failures(self) -> list[str]:
        """uemu's own failures: a traceback's last line, an internal error, an abort of tracing."""
        text = self.stderr()
        found = [line for line in text.splitlines()
                 if "internal error" in line or "every XOL slot is taken" in line]
        if "Traceback" in text:
            found.append("traceback: " + text.strip().splitlines()[-1])
        return found

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._err.close()
        self.directory.cleanup()


class Target:
    """A sample writing its lines to a file.  Started directly (our child), or under
    ``uemu run`` (``under``: the uemu arguments before ``--``), then uemu's child
    until uemu dies and it becomes ours."""

    def __init__(self, argv: Sequence[object], under: Sequence[str] | None = None):
        self._out = tempfile.NamedTemporaryFile("r", prefix="soak-sample-")  # noqa: SIM115  (lives as long as the sample)
        self._program = str(argv[0])
        env = dict(os.environ, SAMPLE_OUT=self._out.name)
        env.pop("SAMPLE_SYNC", None)
        self.process: subprocess.Popen | None = None
        self.uemu: Uemu | None = None
        self.code: int | None = None
        """How it ended, once known (``Popen.returncode`` style)."""
        if under is None:
            self.process = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, env=env)
            self._pid: int | None = self.process.pid
        else:
            self.uemu = Uemu("run", [*under, "--", *(str(a) for a in argv)], env=env)
            self._pid = None

    @property
    def pid(self) -> int | None:
        """Known once the command exists: from its lines, or as uemu's child."""
        if self._pid is None and self.uemu is not None:
            lines = self.lines()
            self._pid = lines[0].pid if lines else child_running(self.uemu.pid, self._program)
        return self._pid

    @property
    def known_pid(self) -> int:
        """``pid``, for a caller that has seen the command exist."""
        assert self.pid is not None, "the command does not exist yet"
        return self.pid

    def lines(self) -> list[Line]:
        self._out.seek(0)
        return parse(self._out.read())

    def wait_line(self, kind: str, timeout: float = 30.0) -> bool:
        return wait_for(lambda: any(line.kind == kind for line in self.lines()) or self.ended(), timeout, 0.01) \
            and not self.ended()

    def ended(self) -> bool:
        if self.code is not None:
            return True
        if self.process is not None:
            self.code = self.process.poll()
            return self.code is not None
        pid = self.pid
        if pid is None:
            return self.uemu is not None and self.uemu.process.poll() is not None
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # still uemu's: alive while /proc says so
            try:
                return process_state(pid) in ("Z", "X")
            except OSError:
                return True
        if done:
            self.code = os.waitstatus_to_exitcode(status)
        return bool(done)

    def wait_end(self, timeout: float) -> bool:
        return wait_for(self.ended, timeout, 0.01)

    def turns(self) -> int | None:
        """The survival sample's count of its threads' turns; None once it is gone."""
        if self.ended():
            return None
        try:
            return turns(self.known_pid, self.lines())
        except (OSError, ValueError):
            return None

    def ticks(self) -> int:
        """The survival sample's slow periods so far (its ``tick`` lines)."""
        return sum(line.kind == "tick" for line in self.lines())

    def progress(self, count: int, timeout: float, ticks: int = 0) -> str | None:
        """Wait until it made ``count`` more turns and ``ticks`` more slow periods.
        None when it did; else why not."""
        if not self.wait_line("counter", timeout):
            return "ended" if self.ended() else f"not started in {timeout:g} s"
        start, ticked = self.turns(), self.ticks()
        if start is None:
            return "ended"

        def done() -> bool:
            return ((self.turns() or start) - start >= count and self.ticks() >= ticked + ticks) or self.ended()

        if wait_for(done, timeout, 0.01) and not self.ended():
            return None
        if self.ended():
            return "ended"
        return f"no progress in {timeout:g} s (thread states {self.states()})"

    def states(self) -> str:
        """Its threads' states (``/proc/PID/task/*/stat``): ``S``, ``t`` (a ptrace stop)..."""
        try:
            return "".join(sorted({process_state(int(tid)) for tid in os.listdir(f"/proc/{self.pid}/task")}))
        except OSError:
            return "gone"

    def stop(self, timeout: float = 10.0) -> bool:
        """SIGTERM, as a user ends it; False when it did not end in time (then SIGKILL)."""
        if self.ended():
            return True
        os.kill(self.known_pid, signal.SIGTERM)
        if self.wait_end(timeout):
            return True
        os.kill(self.known_pid, signal.SIGKILL)
        self.wait_end(timeout)
        return False

    def close(self) -> None:
        if self.uemu is not None:  # first: a command it had started becomes ours
            self.uemu.close()
        pid = self.pid
        if pid is not None and not self.ended():
            os.kill(pid, signal.SIGKILL)
            self.wait_end(10.0)
        self._out.close()
