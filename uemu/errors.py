"""The one error hierarchy of uemu.

Each error keeps the facts that identify what went wrong (path, pid, address)
and builds its one-line message from them.  ``exit_code`` is what the CLI
returns for it; the codes are documented in the README.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


class UemuError(Exception):
    """Base class: a failure uemu explains to the user in one line."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(UemuError):
    """A file or process the user named does not exist."""

    exit_code = 3


class NoSuchFile(NotFound):
    def __init__(self, path: str, detail: str = "no such file"):
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


class NoSuchProcess(NotFound):
    def __init__(self, pid: int):
        super().__init__(f"no such process: {pid}")
        self.pid = pid


class AccessDenied(UemuError):
    """The OS refused us (file permissions, ptrace policy)."""

    exit_code = 4

    def __init__(self, what: str, hint: str = ""):
        super().__init__(f"permission denied: {what}" + (f" ({hint})" if hint else ""))
        self.what = what
        self.hint = hint


class BadInput(UemuError):
    """The input is of the wrong kind: not an ELF, a malformed note, an unknown arch."""

    exit_code = 5


class ElfFormatError(BadInput):
    def __init__(self, path: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


class Unreadable(BadInput):
    """A file that exists but cannot be read as one: not a regular file, an I/O error."""

    def __init__(self, path: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


class NoteFormatError(BadInput):
    """One malformed ``.note.stapsdt`` entry; the other notes are still usable."""

    def __init__(self, path: str, index: int, detail: str):
        super().__init__(f"{path}: malformed stapsdt note #{index}: {detail}")
        self.path = path
        self.index = index
        self.detail = detail


class UnsupportedArch(BadInput):
    def __init__(self, machine: str, elf_class: int | None = None, what: str = ""):
        cls = f" (ELF{elf_class})" if elf_class else ""
        tail = f": {what}" if what else ""
        super().__init__(f"unsupported architecture {machine}{cls}{tail}")
        self.machine = machine
        self.elf_class = elf_class


class CommandNotFound(NotFound):
    """``uemu run``'s command does not exist: 127, as a shell says."""

    exit_code = 127

    def __init__(self, command: str):
        super().__init__(f"{command or repr(command)}: no such file")
        self.command = command


class CommandNotExecutable(UemuError):
    """``uemu run``'s command cannot be executed: 126, as a shell says."""

    exit_code = 126

    def __init__(self, command: str, reason: str):
        super().__init__(f"cannot run {command}: {reason}")
        self.command = command
        self.reason = reason


class ProbeNotFound(UemuError):
    """A probe pattern matched nothing; ``near`` holds the closest names."""

    exit_code = 6

    def __init__(self, pattern: str, near: Sequence[str] = (), hint: str = ""):
        did_you_mean = f"; did you mean {', '.join(near)}?" if near else ""
        super().__init__(f"no probe matches {pattern!r}{did_you_mean}" + (f" ({hint})" if hint else ""))
        self.pattern = pattern
        self.near = list(near)


class CountOnly(UemuError):
    """A handler, events or max_events asked of a session made to count only."""

    def __init__(self) -> None:
        super().__init__("a count_only session has counts, not events")


class AttachRefused(UemuError):
    """The process cannot be traced as it is (already traced, zombie, kernel thread)."""

    exit_code = 7


class UprobeError(UemuError):
    """A registration the kernel would refuse (offset mismatch, alignment, trap in file)."""

    exit_code = 8


class InTargetFailure(UemuError):
    """What uemu does inside a target failed: a system call made there (mmap,
    mprotect, rt_sigaction), no instruction to make one with, the runtime's table
    full or not found.  Exit 1; the targets are restored first."""


class OutputFailure(UemuError):
    """The hits (or the ready file) cannot be written once tracing began.  Exit 1;
    the targets are restored first."""


class TraceeGone(UemuError):
    """The task vanished under us (exit, exec, kill): a normal race, handled by callers."""

    def __init__(self, pid: int):
        super().__init__(f"process {pid} is gone")
        self.pid = pid


# Errors of path resolution: the name leads to no file (exit 3, as ENOENT).
_UNRESOLVED = frozenset({errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENAMETOOLONG})


def from_os_error(err: OSError, path: str, pid: int | None = None) -> UemuError:
    """The error, with its documented exit code, for an OSError met reading ``path``.

    ``pid``: ``path`` is under /proc/PID, so a vanished entry means the process
    is gone.  What is neither missing nor denied (EIO from /proc/PID/mem, EINVAL,
    ENXIO) is input uemu cannot read: exit 5 with the system's words.
    """
    if pid is not None and err.errno in (errno.ENOENT, errno.ESRCH):
        return NoSuchProcess(pid)
    if err.errno in _UNRESOLVED:
        return NoSuchFile(path, "no such file" if err.errno == errno.ENOENT else os.strerror(err.errno).lower())
    if err.errno in (errno.EACCES, errno.EPERM):
        return AccessDenied(f"cannot read {path}")
    if err.errno == errno.EISDIR:
        return Unreadable(path, "is a directory")
    return Unreadable(path, f"cannot read: {err.strerror or err}")


@contextmanager
def os_errors(path: str, pid: int | None = None) -> Iterator[None]:
    """The one boundary where the system's errors become ours (psutil's
    ``wrap_exceptions``): every OSError raised inside leaves as the UemuError
    ``from_os_error`` gives, chained to it for UEMU_DEBUG."""
    try:
        yield
    except OSError as err:
        raise from_os_error(err, path, pid) from err
