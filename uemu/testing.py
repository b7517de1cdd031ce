"""Tracing a command or a running process for a test: the ``usdt`` fixture of
the pytest plugin (README: "Testing a program's probes").

Each trace runs in a tracer process of its own, forked here, while the test's
``with`` block runs beside it.  Not a thread: ptrace stops go to the tracing
thread only (another thread cannot interrupt it), and its ``waitpid(-1)``
would reap the processes the block starts, whose ``subprocess`` calls would
then see a made-up exit status.  A process of its own can also always be
ended, whatever the block does: an attached process is left on SIGTERM as
``uemu attach`` leaves it, a spawned command is killed.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import select
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from types import TracebackType
from typing import IO, NoReturn

from .errors import UemuError
from .events import Event
from .probetrace import Args, Report, Trace, undeclared_strings
from .session import Session

DEFAULT_TIMEOUT = 60.0
"""Seconds a command may run once its probes are armed."""
_ARMING_TIMEOUT = 60.0
"""Seconds uemu may take to arm the probes (reading ELF files, on a loaded machine)."""
_GRACE = 10.0
"""Seconds for each step of making a late trace end: the command, then the tracer."""
_PR_SET_PDEATHSIG = 1

Strings = Mapping[str, int | Iterable[int]]
"""Per probe (``provider:name``), which arguments are pointers to strings."""


class Usdt:
    """The ``usdt`` fixture: ``run()`` and ``attach()`` start a trace for a ``with`` block."""

    def run(self, argv: Sequence[str | os.PathLike[str]], probes: Sequence[str] = (), *,
            strings: Strings | None = None, env: dict[str, str] | None = None, follow_forks: bool = False,
            mappings: str | None = None, strict: bool = False, strsize: int = 256,
            timeout: float = DEFAULT_TIMEOUT) -> Tracing:
        """Start ``argv`` under uemu; the block's end waits for it to exit (killed
        after ``timeout`` seconds, which fails the test)."""
        command = [os.fspath(arg) for arg in argv]
        options = _Options(list(probes), _declared(strings), follow_forks, mappings, strict, strsize)
        return Tracing(_Job(_Spawn(command, env), options), timeout)

    def attach(self, pid: int, probes: Sequence[str] = (), *, strings: Strings | None = None,
               follow_forks: bool = False, mappings: str | None = None, strict: bool = False,
               strsize: int = 256) -> Tracing:
        """Attach to a running process; the block's end detaches, leaving it as it was."""
        options = _Options(list(probes), _declared(strings), follow_forks, mappings, strict, strsize)
        return Tracing(_Job(_Attach(pid), options), DEFAULT_TIMEOUT)


@dataclass(frozen=True)
class _Spawn:
    argv: list[str]
    env: dict[str, str] | None
    orphaned = signal.SIGKILL
    """What the tracer gets if the test process dies: the command dies with it."""

    @property
    def name(self) -> str:
        return self.argv[0]

    def start(self, session: Session) -> int:
        session.spawn(self.argv, self.env)
        pid = session.child_pid
        assert pid is not None  # spawn returned: the command was started
        return pid


@dataclass(frozen=True)
class _Attach:
    pid: int
    orphaned = signal.SIGTERM
    """What the tracer gets if the test process dies: it leaves the process as it was."""

    @property
    def name(self) -> str:
        return f"process {self.pid}"

    def start(self, session: Session) -> int:
        session.attach(self.pid)
        return self.pid


@dataclass(frozen=True)
class _Options:
    """The session's (``Session``'s own, then the strings to read at each hit)."""

    probes: list[str]
    strings: dict[str, frozenset[int]]
    follow_forks: bool
    mappings: str | None
    strict: bool
    strsize: int


@dataclass(frozen=True)
class _Job:
    """What the tracer process does: one session, its hits recorded."""

    target: _Spawn | _Attach
    options: _Options


@dataclass(frozen=True)
class _Armed:
    """The tracer's first message: the probes are in place in ``pid``."""

    pid: int


@dataclass(frozen=True)
class _Failed:
    """An error in the tracer, as the test process can rebuild it: uemu's own
    errors as they are (a test may expect one; pickle cannot make them, their
    __init__ takes other arguments than ``args``), others with the tracer's
    traceback."""

    error: type[BaseException]
    args: tuple[object, ...]
    state: dict[str, object]

    @classmethod
    def of(cls, error: BaseException) -> _Failed:
        if isinstance(error, UemuError):
            return cls(type(error), error.args, dict(error.__dict__))
        return cls(RuntimeError, (f"in uemu's tracer process: {''.join(traceback.format_exception(error))}",), {})


_Message = _Armed | Report | _Failed
"""What the tracer says: armed, then its report or an error; or at once an error."""


def _failure(message: _Message) -> BaseException:
    assert isinstance(message, _Failed), f"the tracer said {message!r} out of turn"
    error: BaseException = message.error.__new__(message.error, *message.args)
    error.args = message.args
    error.__dict__.update(message.state)
    return error


class Tracing:
    """One trace: ``with`` gives its ``Trace``, filled when the block ends."""

    def __init__(self, job: _Job, timeout: float):
        self.job = job
        self.timeout = timeout
        self.trace: Trace | None = None
        self._tracer = 0
        self._channel = -1
        self._command = -1
        """A pidfd of the spawned command: killing it never hits a process that took its pid."""
        self._stdout: IO[bytes] | None = None
        self._deadline = 0.0

    def __enter__(self) -> Trace:
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        spawn = isinstance(self.job.target, _Spawn)
        self._stdout = tempfile.TemporaryFile(prefix="uemu-stdout-") if spawn else None
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        parent = os.getpid()
        self._tracer = os.fork()
        if self._tracer == 0:
            os.close(read_end)
            _tracer_main(write_end, self.job, parent, self._stdout)
        _own_group(self._tracer)
        os.close(write_end)
        self._channel = read_end
        message = self._receive(_ARMING_TIMEOUT)
        if not isinstance(message, _Armed):
            if message is None:
                self._end(0)
            self._close()
            if message is None:
                raise TimeoutError(f"uemu did not arm its probes within {_ARMING_TIMEOUT:g} s")
            raise _failure(message)
        self._armed(message)
        self._deadline = time.monotonic() + self.timeout
        self.trace = Trace(pid=message.pid)
        return self.trace

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        __tracebackhide__ = True
        spawned = isinstance(self.job.target, _Spawn)
        # A command runs to its end (or its time); an attached process is left at once.
        wait = self._deadline - time.monotonic() if spawned and exc is None else 0
        message, forced = self._end(wait)
        stdout = self._read_stdout()
        self._close()
        if exc is not None:
            return
        if not isinstance(message, Report):
            raise _failure(message)
        assert self.trace is not None
        self.trace.complete(message, stdout)
        problems = undeclared_strings(self.job.options.strings, self.trace)
        if spawned and forced:
            problems.insert(0, f"{self.job.target.name} did not exit within {self.timeout:g} s: uemu killed it")
        if problems:
            raise AssertionError("\n".join(problems + self.trace._summary()))

    # ---- the tracer process, seen from the test ----------------------------------

    def _end(self, wait: float) -> tuple[Report | _Failed, bool]:
        """The tracer's last word, and whether the trace had to be made to end:
        after ``wait`` seconds, the first step, then after a grace period the
        last resort.  A spawned command is killed (under ``run`` uemu stays its
        tracer until it exits, even on SIGTERM); an attached process is left
        with SIGTERM, as ``uemu attach`` leaves, every byte restored."""
        spawned = isinstance(self.job.target, _Spawn)
        steps = iter((self._stop_command if spawned else self._stop_tracer, self._kill_tracers))
        forced = False
        while True:
            message = self._receive(wait)
            if isinstance(message, _Armed):  # late, while giving up: the command goes
                self._armed(message)
                self._stop_command()
            elif message is not None:
                return message, forced
            elif (step := next(steps, None)) is None:
                return _Failed(RuntimeError, ("uemu's tracer process did not end",), {}), True
            else:
                step()
                forced, wait = True, _GRACE

    def _armed(self, message: _Armed) -> None:
        if isinstance(self.job.target, _Spawn):
            self._command = _pidfd(message.pid)

    def _receive(self, timeout: float) -> _Message | None:
        """The tracer's next message, or None if none came within ``timeout`` seconds."""
        if not select.select([self._channel], [], [], max(timeout, 0))[0]:
            return None
        header = _read_exactly(self._channel, 8)
        if len(header) < 8:
            return _Failed(RuntimeError, (f"uemu's tracer process ended without a word ({self._reap()})",), {})
        message: _Message = pickle.loads(_read_exactly(self._channel, int.from_bytes(header, "little")))
        return message

    def _stop_command(self) -> None:
        """Its tracer then sees it exit (not armed yet: nothing to kill but the tracers)."""
        if self._command >= 0:
            with suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._command, signal.SIGKILL)

    def _stop_tracer(self) -> None:
        os.kill(self._tracer, signal.SIGTERM)

    def _kill_tracers(self) -> None:
        """The last resort: SIGKILL to the tracer's process group, which holds the
        command too, even a child uemu forked and had not yet seized."""
        with suppress(ProcessLookupError):
            os.killpg(self._tracer, signal.SIGKILL)

    def _read_stdout(self) -> bytes:
        if self._stdout is None:
            return b""
        self._stdout.seek(0)
        data = self._stdout.read()
        # Shown by pytest with the test's own output when it fails.
        sys.stdout.write(data.decode(errors="replace"))
        return data

    def _reap(self) -> str:
        try:
            _, status = os.waitpid(self._tracer, 0)
        except ChildProcessError:
            return "reaped elsewhere"
        self._tracer = 0
        return f"wait status {status:#x}"

    def _close(self) -> None:
        if self._stdout is not None:
            self._stdout.close()
        for fd in (self._channel, self._command):
            if fd >= 0:
                os.close(fd)
        self._channel = self._command = -1
        if self._tracer:
            self._reap()


def _declared(strings: Strings | None) -> dict[str, frozenset[int]]:
    declared = {}
    for probe, indexes in (strings or {}).items():
        chosen = frozenset([indexes] if isinstance(indexes, int) else indexes)
        if ":" not in probe or not all(isinstance(i, int) and i >= 0 for i in chosen):
            raise ValueError(f"strings: {probe!r}: {indexes!r}: want 'provider:name': argument index or indexes")
        declared[probe] = chosen
    return declared


def _pidfd(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:  # it has exited and its tracer reaped it
        return -1


def _read_exactly(fd: int, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


# ---- inside the tracer process ---------------------------------------------------------


class _Recorder:
    """The session's handler: each hit kept, its declared strings read while the
    thread is still stopped there (afterwards the program may have changed them)."""

    def __init__(self, strings: dict[str, frozenset[int]], strsize: int):
        self.strings = strings
        self.strsize = strsize
        self.events: list[Event] = []
        self.args: list[Args] = []

    def hit(self, event: Event) -> None:
        wanted = self.strings.get(f"{event.provider}:{event.name}", frozenset())
        self.args.append(tuple(self._string(event, value) if i in wanted else value
                               for i, value in enumerate(event.args or ())))
        self.events.append(replace(event, read_string=None))

    def _string(self, event: Event, pointer: object) -> bytes | None:
        if not isinstance(pointer, int) or pointer == 0 or event.read_string is None:
            return None
        return event.read_string(pointer, self.strsize)


def _tracer_main(channel: int, job: _Job, parent: int, stdout: IO[bytes] | None) -> NoReturn:
    """The forked tracer: arm, say so, trace until the end, send the report.  Never
    returns into the test's code."""
    try:
        _own_group(0)
        _die_with(parent, job.target.orphaned)
        if stdout is not None:
            os.dup2(stdout.fileno(), 1)  # the command inherits it
        warnings: list[str] = []

        def warn(message: str) -> None:
            warnings.append(message)
            print(f"uemu: warning: {message}", file=sys.stderr, flush=True)

        options = job.options
        recorder = _Recorder(options.strings, options.strsize)
        # the jump path copies strings at the hit (the recorder reads them later): every
        # index declared for any probe
        copied = sorted(set().union(*options.strings.values()))
        with Session(options.probes, follow_forks=options.follow_forks, mappings=options.mappings,
                     strict=options.strict, warn=warn, strings=copied, strsize=options.strsize) as session:
            _send(channel, _Armed(job.target.start(session)))
            session.run(recorder.hit)
        _send(channel, Report(recorder.events, recorder.args, list(session.counts()), session.exit_status, warnings))
    except BaseException as error:  # noqa: BLE001  # every error goes to the test
        try:
            _send(channel, _Failed.of(error))
        finally:
            os._exit(1)
    os._exit(0)


def _own_group(pid: int) -> None:
    """The tracer leads a process group of its own, so that the last resort
    reaches what it forked.  Called on both sides of the fork, so that the group
    exists whichever runs first."""
    with suppress(ProcessLookupError):  # it is gone already
        os.setpgid(pid, pid)


def _die_with(parent: int, sig: signal.Signals) -> None:
    """``sig`` when the test process dies first (or has died already)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def _send(channel: int, message: _Message) -> None:
    data = pickle.dumps(message)
    data = len(data).to_bytes(8, "little") + data
    while data:
        data = data[os.write(channel, data):]
