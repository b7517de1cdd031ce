"""errors.os_errors: the one place where OSError becomes a documented exit code."""

from __future__ import annotations

import errno
import os

import pytest

from uemu import errors


@pytest.mark.parametrize(("code", "pid", "kind", "exit_code", "words"), [
    (errno.ENOENT, None, errors.NoSuchFile, 3, "/x: no such file"),
    (errno.ELOOP, None, errors.NoSuchFile, 3, "/x: too many levels of symbolic links"),
    (errno.ENOTDIR, None, errors.NoSuchFile, 3, "/x: not a directory"),
    (errno.ENAMETOOLONG, None, errors.NoSuchFile, 3, "/x: file name too long"),
    (errno.ENOENT, 42, errors.NoSuchProcess, 3, "no such process: 42"),
    (errno.ESRCH, 42, errors.NoSuchProcess, 3, "no such process: 42"),
    (errno.EACCES, None, errors.AccessDenied, 4, "permission denied: cannot read /x"),
    (errno.EPERM, 42, errors.AccessDenied, 4, "permission denied: cannot read /x"),
    (errno.EISDIR, None, errors.Unreadable, 5, "/x: is a directory"),
    (errno.EIO, None, errors.Unreadable, 5, "/x: cannot read: Input/output error"),
    (errno.EINVAL, None, errors.Unreadable, 5, "/x: cannot read: Invalid argument"),
])
def test_translation(code: int, pid: int | None, kind: type, exit_code: int, words: str) -> None:
    with pytest.raises(kind) as raised, errors.os_errors("/x", pid):
        raise OSError(code, os.strerror(code))
    assert raised.value.exit_code == exit_code and raised.value.message == words
    assert isinstance(raised.value.__cause__, OSError)  # UEMU_DEBUG shows where it came from


def test_an_oserror_without_errno_is_unreadable_input() -> None:
    with pytest.raises(errors.Unreadable, match="short read"), errors.os_errors("/x"):
        raise OSError("short read")


def test_other_exceptions_pass_through() -> None:
    with pytest.raises(ValueError), errors.os_errors("/x"):
        raise ValueError("not ours to translate")
