"""Starting a command under trace before its first instruction, and its exit.

python-ptrace's ``child.py`` job: fork; the child waits on a pipe until the
tracer has seized it, installs what it was given (the seccomp mapping filter)
and execs.  If the tracer dies before it says go, the pipe's end closes and
the child exits instead of running untraced (a child stopping itself with
SIGSTOP, as before, stayed stopped forever).  An exec failure comes back
through a close-on-exec pipe, so the tracer can tell "no such file" (127) from
"cannot execute" (126) as a shell does.  Once the tracer has let the child go,
it still reaps it as its parent.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from . import errors
from .stops import shell_status


@dataclass
class Spawned:
    """A forked child stopped before exec, and where its exec error would come."""

    pid: int
    exec_error_fd: int
    go_fd: int

    def go(self) -> None:
        """The tracer holds the child: let it install its filter and exec."""
        os.write(self.go_fd, b"g")
        os.close(self.go_fd)

    def exec_failure(self, argv: Sequence[str]) -> errors.UemuError | None:
        """For a child that is gone: the error if its exec failed (126/127 as a shell
        says), None if the exec took and the program itself ended (a truncated file
        the kernel runs and that dies of SIGSEGV is the program's 139, not ours)."""
        data = os.read(self.exec_error_fd, 64)
        os.close(self.exec_error_fd)
        if not data:
            return None
        code = int(data)
        if code == errno.ENOENT:
            return errors.CommandNotFound(argv[0])
        return errors.CommandNotExecutable(argv[0], os.strerror(code))


def fork_waiting(argv: Sequence[str], env: dict[str, str] | None, seccomp_filter: bytes | None) -> Spawned:
    """fork; the child waits for ``Spawned.go``, then installs the filter and execs."""
    from . import seccomp

    if not argv[0]:  # execvp refuses it with a ValueError, which the child cannot report
        raise errors.CommandNotFound(argv[0])
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    go_read, go_write = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(read_end)
            os.close(go_write)
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)  # as the shell would have left them
            if os.read(go_read, 1) != b"g":
                os._exit(127)  # the tracer is gone: never run untraced
            if seccomp_filter is not None:
                seccomp.install(seccomp_filter)
            if env is None:
                os.execvp(argv[0], list(argv))
            os.execvpe(argv[0], list(argv), env)
        except OSError as err:
            os.write(write_end, str(err.errno).encode())
        finally:
            os._exit(127)
    os.close(write_end)
    os.close(go_read)
    return Spawned(pid, read_end, go_write)


def wait_for_child(pid: int) -> int | None:
    """After detaching from a spawned command, wait for it as its parent; its
    status as the shell reports it (None if it was reaped already)."""
    while True:
        try:
            got, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return None
        except InterruptedError:
            continue
        if got == pid and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
            return shell_status(status)
