"""Starting a command stopped before its first instruction, and its exit.

python-ptrace's ``child.py`` job: fork; the child stops itself so the tracer
can seize it, installs what it was given (the seccomp mapping filter) and
execs.  An exec failure comes back through a close-on-exec pipe, so the
tracer can tell "no such file" (127) from "cannot execute" (126) as a shell
does.  Once the tracer has let the child go, it still reaps it as its parent.
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

    def exec_failure(self, argv: Sequence[str]) -> errors.UemuError:
        """The error for a child that died before its exec took (126/127 as a shell)."""
        data = os.read(self.exec_error_fd, 64)
        os.close(self.exec_error_fd)
        code = int(data) if data else errno.ENOEXEC
        if code == errno.ENOENT:
            return errors.CommandNotFound(argv[0])
        return errors.CommandNotExecutable(argv[0], os.strerror(code))


def fork_stopped(argv: Sequence[str], env: dict[str, str] | None, seccomp_filter: bytes | None) -> Spawned:
    """fork; the child stops itself (SIGSTOP), then installs the filter and execs."""
    from . import seccomp

    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(read_end)
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)  # as the shell would have left them
            os.kill(os.getpid(), signal.SIGSTOP)
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
    _, status = os.waitpid(pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):
        raise errors.UemuError(f"could not start {argv[0]}")
    return Spawned(pid, read_end)


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
