"""The journal: what uemu wrote into each traced process, kept outside it.

The safety net's table (``net.py``) lives inside the process and undoes uemu's writes
from inside when a thread meets a breakpoint after uemu died.  A process that never
meets one (a probe on a path not taken, a program stopped with SIGSTOP when uemu was
killed) keeps them all, and nothing outside it would know.  So uemu also keeps a
journal of every write it has not undone, and ``uemu repair PID`` (``repair.py``)
undoes them from outside.

One file per traced process, named ``PID-START`` after the process's pid and start time
(field 22 of /proc/PID/stat, clock ticks since boot), so that a reused pid is never
taken for the process that had it; the header also holds the boot id (a directory
that outlives a reboot cannot mix up two boots).  Records are lines of text appended
*before* the write they describe, and on the way out *after* the write is undone, as
the table's entries are, so the journal never claims less than the process holds.
Each record is one unbuffered ``write``: a dead uemu does not lose the page cache, and a
machine crash kills the process too, so no fsync.  A line cut short by a kill is the
last one, describes a write that was not made yet, and is skipped by the reader.

What it holds, and nothing else: the process's identity (pid, start time, boot), the
area's place, size and ABI, the program's SIGTRAP action (bytes), each breakpoint
(address, original bytes, written bytes), each raised counter (address, count), each
XOL slot's plan (slot, site, length, how it ends), the XOL area (start, size), the jump
path's landing pages and event ring (start, size).  Never
a path, an argument value or anything the program computed.

Where: ``/run/uemu`` for root, ``$XDG_RUNTIME_DIR/uemu`` for others, or
``$UEMU_JOURNAL_DIR``; both are tmpfs, wiped at boot.  Root's journals stay in /run/uemu
even where XDG_RUNTIME_DIR is set: logind deletes /run/user/0 at logout, and ``sudo
uemu repair`` sees no XDG_RUNTIME_DIR.  The directory is 0700 and owned by uemu's user,
each file 0600; the directory is opened once without following a symlink and every
file is created with O_EXCL|O_NOFOLLOW relative to it, so nobody can redirect uemu's
writes elsewhere.  A journal that cannot be kept is said once and tracing goes on:
the net inside the process does not depend on it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from . import errors

VERSION = 1
MAGIC = "uemu-journal"
DIR_ENV = "UEMU_JOURNAL_DIR"
ROOT_DIR = Path("/run/uemu")
MAX_SIZE = 64 << 20
"""A journal is read only up to this: compaction keeps real ones far smaller."""
COMPACT_AT = 1 << 20
"""Rewrite a journal as its current state once this many bytes were appended since
(a program that maps and unmaps a probed library forever would grow it without end)."""
_NAME = re.compile(r"(\d+)-(\d+)")
_NEW = ".new"

Warn = Callable[[str], None]


# ---- whose journal ----------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """A process as the journal names it: a pid is reused, (pid, start, boot) is not."""

    pid: int
    start: int
    """Field 22 of /proc/PID/stat: clock ticks from boot to the process's start (exec keeps it)."""
    boot: str

    @property
    def name(self) -> str:
        return f"{self.pid}-{self.start}"

    @classmethod
    def of(cls, pid: int) -> Identity:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stream:  # bytes: the name in it is the program's
                fields = stream.read().rsplit(b")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            raise errors.NoSuchProcess(pid) from None
        return cls(pid, int(fields[19]), boot_id())

    def alive(self) -> bool:
        """Whether this very process still runs."""
        try:
            return Identity.of(self.pid) == self
        except errors.NoSuchProcess:
            return False


@cache
def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as stream:
            return stream.read().strip()
    except OSError:
        return "-"


# ---- the directory -----------------------------------------------------------------------


class Unavailable(errors.UemuError):
    """No journal can be kept or read here; the message says why."""


def directory_path() -> Path | None:
    override = os.environ.get(DIR_ENV)
    if override:
        return Path(override)
    if os.geteuid() == 0:
        return ROOT_DIR
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "uemu" if runtime else None


_opened: dict[Path, Directory] = {}


def directory(create: bool) -> Directory | None:
    """This uemu's journal directory (``Directory.open``), opened once and kept open."""
    path = directory_path()
    if path is None:
        raise Unavailable(f"no journal directory: XDG_RUNTIME_DIR is not set (set it, or {DIR_ENV})")
    opened = _opened.get(path)
    if opened is None:
        opened = Directory.open(path, create)
        if opened is not None:
            _opened[path] = opened
    return opened


class Directory:
    """The journal directory, held open: every file is reached relative to it.  Opened
    once per uemu process (``directory``) and shared by every journal."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd = fd

    @classmethod
    def open(cls, path: Path, create: bool) -> Directory | None:
        """The directory, checked private to uemu's user (created so with ``create``);
        None when it does not exist and ``create`` is false."""
        if create:
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
            except OSError as err:
                raise Unavailable(f"cannot create the journal directory {path}: {err.strerror}") from None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if create:
                raise Unavailable(f"the journal directory {path} vanished") from None
            return None
        except OSError as err:
            what = "is a symlink or not a directory" if err.errno in (errno.ELOOP, errno.ENOTDIR) else err.strerror
            raise Unavailable(f"journal directory {path}: {what}; uemu keeps no journal there") from None
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            os.close(fd)
            raise Unavailable(f"journal directory {path} belongs to uid {info.st_uid}, not to uemu's user; "
                              "uemu keeps no journal there")
        if info.st_mode & 0o077:
            os.fchmod(fd, 0o700)  # ours: made private; each file in it is checked again anyway
        return cls(path, fd)

    def names(self) -> list[str]:
        """The journals in it (``PID-START``), by pid."""
        found = [name for name in os.listdir(self.fd) if _NAME.fullmatch(name)]
        return sorted(found, key=lambda name: tuple(int(part) for part in name.split("-")))

    def create(self, name: str) -> int:
        """A new private file, never through a symlink nor over an existing file."""
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_APPEND | os.O_CLOEXEC,
                     0o600, dir_fd=self.fd)
        os.fchmod(fd, 0o600)
        return fd

    def open_journal(self, name: str, flags: int) -> int:
        """An existing journal, only if it is a regular file of uemu's user that only it may
        read (else it is not one uemu wrote: ``Unavailable``)."""
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENXIO):
                raise Unavailable(f"{self.path / name} is a symlink or a special file, not a journal; "
                                  "left alone") from None
            raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            os.close(fd)
            raise Unavailable(f"{self.path / name} is not a private file of uemu's user, not a journal; left alone")
        return fd

    def remove(self, name: str) -> None:
        for each in (name, name + _NEW):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(each, dir_fd=self.fd)

    def exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False


# ---- the records ---------------------------------------------------------------------------


Value = int | bytes | str
"""A record's field: an address or a count, bytes, or a word (an ABI's name, a ``StepEnd``)."""


def _int(value: Value) -> int:
    assert isinstance(value, int)
    return value


def _bytes(value: Value) -> bytes:
    assert isinstance(value, bytes)
    return value


def _word(value: Value) -> str:
    assert isinstance(value, str)
    return value


@dataclass(frozen=True)
class Area:
    base: int
    size: int
    arch: str
    """``Arch.name`` of the process's ABI."""


@dataclass(frozen=True)
class SlotPlan:
    """What runs in one XOL slot: the displaced instruction of ``site``, ``length`` bytes,
    then (``ends``, a ``StepEnd`` value) a trap, nothing (single-stepped) or a jump back."""

    site: int
    length: int
    ends: str


@dataclass
class State:
    """What a journal says is in the process now: its records replayed in order."""

    area: Area | None = None
    action: bytes | None = None
    """The program's own SIGTRAP action, as the kernel's rt_sigaction gave it."""
    sites: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    """Breakpoint address -> (original bytes, written bytes)."""
    counters: dict[int, int] = field(default_factory=dict)
    """Counter address -> how many times uemu raised it."""
    slots: dict[int, SlotPlan] = field(default_factory=dict)
    xol: tuple[int, int] | None = None
    """(start, size) of the XOL area."""
    mappings: dict[int, int] = field(default_factory=dict)
    """Start -> size of the jump path's other mappings (landing pages, the event ring)."""

    def apply(self, kind: str, values: tuple[Value, ...]) -> None:
        if kind == "area":
            self.area = Area(_int(values[0]), _int(values[1]), _word(values[2]))
        elif kind == "action":
            self.action = _bytes(values[0])
        elif kind == "site":
            self.sites[_int(values[0])] = (_bytes(values[1]), _bytes(values[2]))
        elif kind == "site-gone":
            self.sites.pop(_int(values[0]), None)
        elif kind == "counter":
            if _int(values[1]):
                self.counters[_int(values[0])] = _int(values[1])
            else:
                self.counters.pop(_int(values[0]), None)
        elif kind == "slot":
            self.slots[_int(values[0])] = SlotPlan(_int(values[1]), _int(values[2]), _word(values[3]))
        elif kind == "xol":
            self.xol = (_int(values[0]), _int(values[1]))
        elif kind == "xol-gone":
            self.xol = None
            self.slots.clear()
        elif kind == "mapping":
            self.mappings[_int(values[0])] = _int(values[1])
        elif kind == "mapping-gone":
            self.mappings.pop(_int(values[0]), None)

    def records(self) -> Iterator[tuple[str, tuple[Value, ...]]]:
        """Records that rebuild this state (a compacted journal, a forked child's)."""
        if self.area is not None:
            yield "area", (self.area.base, self.area.size, self.area.arch)
        if self.action is not None:
            yield "action", (self.action,)
        for addr, (orig, trap) in self.sites.items():
            yield "site", (addr, orig, trap)
        for addr, count in self.counters.items():
            yield "counter", (addr, count)
        if self.xol is not None:
            yield "xol", self.xol
            for slot, plan in self.slots.items():
                yield "slot", (slot, plan.site, plan.length, plan.ends)
        for start, size in self.mappings.items():
            yield "mapping", (start, size)

    def fork(self) -> State:
        """A forked child's: the area, action, breakpoints, counters and the jump path's
        mappings are copied with its pages; the XOL area is not (MADV_DONTFORK)."""
        return State(self.area, self.action, dict(self.sites), dict(self.counters), mappings=dict(self.mappings))


_ADDR, _BYTES, _COUNT, _WORD = "addr", "bytes", "count", "word"
_FIELDS: dict[str, tuple[str, ...]] = {
    "area": (_ADDR, _ADDR, _WORD),
    "action": (_BYTES,),
    "site": (_ADDR, _BYTES, _BYTES),
    "site-gone": (_ADDR,),
    "counter": (_ADDR, _COUNT),
    "slot": (_ADDR, _ADDR, _COUNT, _WORD),
    "xol": (_ADDR, _ADDR),
    "xol-gone": (),
    "mapping": (_ADDR, _ADDR),
    "mapping-gone": (_ADDR,),
}
_WORD_TEXT = re.compile(r"[a-z0-9_]{1,32}")


def encode(kind: str, values: tuple[Value, ...]) -> str:
    out = [kind]
    for kind_of, value in zip(_FIELDS[kind], values, strict=True):
        if kind_of == _ADDR:
            out.append(f"{_int(value):#x}")
        elif kind_of == _BYTES:
            out.append(_bytes(value).hex() or "-")
        elif kind_of == _COUNT:
            out.append(str(_int(value)))
        else:
            assert _WORD_TEXT.fullmatch(_word(value)), value
            out.append(_word(value))
    return " ".join(out) + "\n"


def decode(line: str) -> tuple[str, tuple[Value, ...]] | None:
    """A record, or None for a line that is not one (cut short by a kill)."""
    words = line.split()
    if not words or words[0] not in _FIELDS or len(words) != len(_FIELDS[words[0]]) + 1:
        return None
    values: list[Value] = []
    try:
        for kind_of, word in zip(_FIELDS[words[0]], words[1:], strict=True):
            if kind_of == _ADDR:
                values.append(int(word, 16))
            elif kind_of == _BYTES:
                values.append(b"" if word == "-" else bytes.fromhex(word))
            elif kind_of == _COUNT:
                values.append(int(word))
            elif _WORD_TEXT.fullmatch(word):
                values.append(word)
            else:
                return None
    except ValueError:
        return None
    return words[0], tuple(values)


def _header(identity: Identity) -> str:
    return f"{MAGIC} {VERSION} {identity.pid} {identity.start} {identity.boot}\n"


def parse(text: str) -> tuple[Identity, State]:
    """A journal's identity and state; ``Unavailable`` if it is not a journal of this version."""
    lines = text.split("\n")
    head = lines[0].split()
    if len(head) != 5 or head[0] != MAGIC or head[1] != str(VERSION) or not head[2].isdigit() or not head[3].isdigit():
        raise Unavailable("not a uemu journal of version 1")
    identity = Identity(int(head[2]), int(head[3]), head[4])
    state = State()
    complete = lines[1:-1]  # the text after the last newline is a record cut short, or nothing
    for line in complete:
        record = decode(line)
        if record is not None:
            state.apply(*record)
    return identity, state


def read(directory: Directory, name: str) -> tuple[Identity, State]:
    fd = directory.open_journal(name, os.O_RDONLY)
    with os.fdopen(fd, "rb") as stream:
        data = stream.read(MAX_SIZE)
    try:
        identity, state = parse(data.decode("ascii", "replace"))
    except Unavailable as err:
        raise Unavailable(f"{directory.path / name}: {err.message}; left alone") from None
    if identity.name != name:
        raise Unavailable(f"{directory.path / name} names another process ({identity.name}); left alone")
    return identity, state


# ---- the writer --------------------------------------------------------------------------

_said: set[str] = set()


class Journal:
    """The journal of one traced process, its state kept in memory too (to compact it and
    to start a forked child's).  Without a directory it keeps nothing (``disabled``)."""

    def __init__(self, directory: Directory | None = None, identity: Identity | None = None,
                 warn: Warn | None = None, state: State | None = None, fd: int | None = None):
        self.directory = directory
        self.identity = identity
        self.warn = warn or (lambda message: None)
        self.state = state or State()
        self._fd = fd
        self._appended = 0

    @classmethod
    def disabled(cls) -> Journal:
        return cls()

    @classmethod
    def for_process(cls, pid: int, warn: Warn) -> Journal:
        """The journal uemu is about to start for ``pid``, before it writes anything there.
        The file comes with the first record.  A process that still has a journal holds
        what an earlier uemu wrote (it died; the process was not repaired): refused, as
        arming over it would save the dead uemu's handler as the program's action."""
        try:
            found = directory(create=True)
        except Unavailable as err:
            _say_once(warn, err.message)
            return cls.disabled()
        assert found is not None
        identity = Identity.of(pid)
        if found.exists(identity.name):
            try:
                read(found, identity.name)
            except Unavailable as err:  # something else under its name: never written through
                warn(f"{err.message}; no journal for process {pid}")
                return cls.disabled()
            raise errors.AttachRefused(f"process {pid} still holds what an earlier uemu wrote into it "
                                       f"(journal {found.path / identity.name}): 'uemu repair {pid}' first")
        return cls(found, identity, warn)

    @classmethod
    def reopen(cls, found: Directory, identity: Identity, state: State, warn: Warn) -> Journal:
        """An existing journal, to append what ``uemu repair`` undoes."""
        fd = found.open_journal(identity.name, os.O_RDWR | os.O_APPEND)
        journal = cls(found, identity, warn, state, fd)
        journal._end_cut_line()
        return journal

    # ---- records: each before the write it describes, or after the write it undoes ----

    def note_area(self, base: int, size: int, arch: str) -> None:
        self._record("area", (base, size, arch))

    def note_action(self, action: bytes) -> None:
        self._record("action", (action,))

    def note_site(self, addr: int, orig: bytes, trap: bytes) -> None:
        self._record("site", (addr, orig, trap))

    def note_site_gone(self, addr: int) -> None:
        if addr in self.state.sites:
            self._record("site-gone", (addr,))

    def note_counter(self, addr: int, raised: int) -> None:
        if self.state.counters.get(addr, 0) != raised:
            self._record("counter", (addr, raised))

    def note_slot(self, slot: int, site: int, length: int, ends: str) -> None:
        if self.state.slots.get(slot) != SlotPlan(site, length, ends):
            self._record("slot", (slot, site, length, ends))

    def note_xol_area(self, start: int, size: int) -> None:
        self._record("xol", (start, size))

    def note_xol_area_gone(self) -> None:
        self._record("xol-gone", ())

    def note_mapping(self, start: int, size: int) -> None:
        self._record("mapping", (start, size))

    def note_mapping_gone(self, start: int) -> None:
        if start in self.state.mappings:
            self._record("mapping-gone", (start,))

    def remove(self) -> None:
        """Nothing of uemu is left in the process (or the process is gone): the journal goes."""
        if self.directory is None or self.identity is None:
            return
        self._close()
        try:
            self.directory.remove(self.identity.name)
        except OSError as err:
            self.warn(f"cannot remove the journal {self.directory.path / self.identity.name}: {err.strerror}")
        self.directory = None

    def fork(self, pid: int) -> Journal:
        """The journal of a forked child, which inherits the area, the breakpoints and the
        counters with its pages: started at once with the parent's state."""
        if self.directory is None:
            return Journal.disabled()
        try:
            child = Journal(self.directory, Identity.of(pid), self.warn, self.state.fork())
        except errors.NoSuchProcess:
            return Journal.disabled()  # killed already: nothing to journal
        child._rewrite()
        return child

    # ---- writing ------------------------------------------------------------------------------

    def _record(self, kind: str, values: tuple[Value, ...]) -> None:
        if self.directory is None:
            return
        self.state.apply(kind, values)
        if self._fd is None or self._appended > COMPACT_AT:
            self._rewrite()
            return
        data = encode(kind, values).encode("ascii")
        try:
            os.write(self._fd, data)
        except OSError as err:
            self._give_up(err)
            return
        self._appended += len(data)

    def _end_cut_line(self) -> None:
        """A record a kill cut short is ended here, not glued to the next one."""
        assert self._fd is not None
        size = os.lseek(self._fd, 0, os.SEEK_END)
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            os.write(self._fd, b"\n")

    def _rewrite(self) -> None:
        """Write the whole state as a new file and put it in place (one rename: a kill
        leaves the old journal or the new one, never half of either)."""
        assert self.directory is not None and self.identity is not None
        name, new = self.identity.name, self.identity.name + _NEW
        text = _header(self.identity) + "".join(encode(kind, values) for kind, values in self.state.records())
        try:
            if self._fd is None and self.directory.exists(name):
                # not ours: planted, or left by another uemu since ``for_process`` looked
                raise FileExistsError(errno.EEXIST, "it exists and is not this uemu's")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(new, dir_fd=self.directory.fd)
            fd = self.directory.create(new)
            os.write(fd, text.encode("ascii"))
            os.rename(new, name, src_dir_fd=self.directory.fd, dst_dir_fd=self.directory.fd)
        except OSError as err:
            self._give_up(err)
            return
        self._close()
        self._fd = fd
        self._appended = 0

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _give_up(self, err: OSError) -> None:
        assert self.directory is not None and self.identity is not None
        self.warn(f"cannot keep the journal {self.directory.path / self.identity.name}: {err.strerror}; "
                  "'uemu repair' will not know this process")
        self._close()
        self.directory = None


def _say_once(warn: Warn, message: str) -> None:
    if message not in _said:
        _said.add(message)
        warn(message)
