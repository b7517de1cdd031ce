"""Thin layer over ptrace(2): requests, registers, memory, and wait statuses.

libc's ``ptrace`` through ctypes, with errno.  Not python-ptrace: its debugger
classes cost about 1.7x a raw loop per stop (a stop is our unit of cost), and its
binding, once all uemu took of it (this function, three request numbers, the
iovec struct), cost every uemu start about 16 ms of imports (logging, pdb,
subprocess) and an ``ldconfig -p`` child (``find_library('c')``).  Every
call here is one system call.  ``ESRCH`` becomes ``TraceeGone``: a task can
die between any two calls (strace: "we assume that ptrace error was caused by
process death").
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import suppress
from ctypes import addressof, c_uint32, c_uint64, sizeof
from dataclasses import dataclass

from .errors import TraceeGone

_libc_ptrace = ctypes.CDLL(None, use_errno=True).ptrace
"""long ptrace(enum __ptrace_request, pid_t, void *, void *); its result is read
unsigned (-1 is ``_MINUS_ONE``), so no request's value is truncated."""
_libc_ptrace.argtypes = (ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_libc_ptrace.restype = ctypes.c_ulong

PTRACE_CONT = 7
PTRACE_SINGLESTEP = 9
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_SETSIGINFO = 0x4203
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208
NT_PRSTATUS = 1

O_TRACESYSGOOD = 0x01
O_TRACEFORK = 0x02
O_TRACEVFORK = 0x04
O_TRACECLONE = 0x08
O_TRACEEXEC = 0x10
O_TRACEEXIT = 0x40
O_TRACESECCOMP = 0x80
O_EXITKILL = 0x100000

EVENT_FORK = 1
EVENT_VFORK = 2
EVENT_CLONE = 3
EVENT_EXEC = 4
EVENT_VFORK_DONE = 5
EVENT_EXIT = 6
EVENT_SECCOMP = 7
EVENT_STOP = 128

WALL = 0x40000000  # __WALL: threads and non-SIGCHLD children too

SI_USER = 0
SI_KERNEL = 0x80
TRAP_BRKPT = 1
TRAP_TRACE = 2


def _request(request: int, tid: int, addr: int = 0, data: int = 0) -> int:
    """One request; none of ours is a PEEK, so -1 always means an error and errno
    needs no clearing before the call (one C call less per request)."""
    result = _libc_ptrace(request, tid, addr, data)
    if result == _MINUS_ONE:
        err = ctypes.get_errno()
        if err == errno.ESRCH:
            raise TraceeGone(tid)
        raise OSError(err, f"ptrace({request:#x}, {tid}): {os.strerror(err)}")
    return int(result)


_MINUS_ONE = (1 << (8 * ctypes.sizeof(ctypes.c_ulong))) - 1  # -1 as the unsigned long result


def seize(tid: int, options: int) -> None:
    _request(PTRACE_SEIZE, tid, 0, options)


def interrupt(tid: int) -> None:
    _request(PTRACE_INTERRUPT, tid)


def _restart(request: int, tid: int, sig: int) -> None:
    """A request that ends the task's stop: the kernel replaces the stop's signal with
    ``sig``, so nothing of a stop ``wait`` left with it remains to be taken."""
    taken = _peeked.pop(tid, None)
    try:
        _request(request, tid, 0, sig)
    except OSError:  # not restarted (EIO: no such restart from this stop): the stop stays
        if taken is not None:
            _peeked[tid] = taken
        raise


def cont(tid: int, sig: int = 0) -> None:
    _restart(PTRACE_CONT, tid, sig)


def syscall(tid: int, sig: int = 0) -> None:
    """Resume until the next syscall entry or exit."""
    _restart(PTRACE_SYSCALL, tid, sig)


def singlestep(tid: int, sig: int = 0) -> None:
    _restart(PTRACE_SINGLESTEP, tid, sig)


def listen(tid: int) -> None:
    """Leave a group-stopped task stopped but let SIGCONT wake it (seize only)."""
    _restart(PTRACE_LISTEN, tid, 0)


def detach(tid: int, sig: int = 0) -> None:
    _restart(PTRACE_DETACH, tid, sig)


def event_message(tid: int) -> int:
    value = ctypes.c_ulong()
    _request(PTRACE_GETEVENTMSG, tid, 0, addressof(value))
    return value.value


class _Iovec(ctypes.Structure):
    """Kernel: ``struct iovec`` (include/uapi/linux/uio.h), GETREGSET's buffer."""

    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class Regset:
    """One task's general registers (NT_PRSTATUS) in a reusable buffer.

    The layout is the tracee ABI's own (an i386 task yields 17 32-bit words
    even to a 64-bit tracer), described by ``Arch.regset``; GETREGSET and
    SETREGSET are each one system call, and reading a register is an index.
    """

    def __init__(self, names: tuple[str, ...], word: int):
        self.index = {name: i for i, name in enumerate(names) if name}
        self.words = ((c_uint64 if word == 8 else c_uint32) * len(names))()
        self._iov = _Iovec(addressof(self.words), sizeof(self.words))
        self._iov_addr = addressof(self._iov)

    def fetch(self, tid: int) -> None:
        self._iov.len = sizeof(self.words)
        _request(PTRACE_GETREGSET, tid, NT_PRSTATUS, self._iov_addr)

    def store(self, tid: int, recorded: bool = False) -> None:
        """Registers uemu changed: the stop ``wait`` left with the thread is taken first
        (``take``), or a uemu dying before the restart would leave the stop's signal to
        come with registers it was never meant for.  ``recorded``: the net holds these
        very registers' ip and sp as the thread's (``Task.net_record``, SWALLOW), so that
        signal is known for the stop's (the runtime's R3) and the stop may stay: one
        system call less per hit."""
        if not recorded:
            take(tid)
        self._iov.len = sizeof(self.words)
        _request(PTRACE_SETREGSET, tid, NT_PRSTATUS, self._iov_addr)

    def __getitem__(self, name: str) -> int:
        return self.words[self.index[name]]

    def __setitem__(self, name: str, value: int) -> None:
        self.words[self.index[name]] = value

    def snapshot(self) -> dict[str, int]:
        return {name: self.words[i] for name, i in self.index.items()}

    def update(self, values: Mapping[str, int]) -> bool:
        """Set registers; True when one changed (a store is then needed)."""
        changed = False
        for name, value in values.items():
            if self[name] != value:
                self[name] = value
                changed = True
        return changed

    def at(self, ip_reg: str, ip: int, before: Mapping[str, int] | None = None) -> RegsView:
        """These registers with ip read as ``ip`` (as at a probed site, whatever the trap
        left), and those in ``before`` with the values they had before uemu set them."""
        return RegsView(self, ip_reg, ip, before)


class RegsView(Mapping[str, int]):
    """Registers as consumers and backends see them: a Regset whose ip reads as
    given (x86 reports ip after the int3; a consumer must see the site)."""

    __slots__ = ("before", "ip", "ip_reg", "regs")

    def __init__(self, regs: Regset, ip_reg: str, ip: int, before: Mapping[str, int] | None = None):
        self.regs = regs
        self.ip_reg = ip_reg
        self.ip = ip
        self.before = before or {}

    def __getitem__(self, name: str) -> int:
        if name == self.ip_reg:
            return self.ip
        before = self.before.get(name)
        return self.regs[name] if before is None else before

    __call__ = __getitem__  # argspec readers call registers by name

    def __iter__(self) -> Iterator[str]:
        return iter(self.regs.index)

    def __len__(self) -> int:
        return len(self.regs.index)


_USER_END = 1 << 63
"""No user address reaches this far (the file offset of /proc/PID/mem is a signed
64-bit off_t); the tracee controls pointers and must not make us fail on one."""


def _check_range(pid: int, address: int, size: int) -> None:
    if address < 0 or address + size > _USER_END:
        raise OSError(errno.EFAULT, f"no user memory at {address:#x} in process {pid}")


class Memory:
    """A process's memory through /proc/PID/mem: exact-size reads and writes.

    Writes to read-only text go through (FOLL_FORCE) and land in the process's
    private copy of the page, as the kernel's own uprobe writes do.  Any address
    the tracee makes up is accepted: one that no process can map is EFAULT.
    """

    def __init__(self, pid: int):
        self.pid = pid
        try:
            self.fd = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            raise TraceeGone(pid) from None

    def read(self, address: int, size: int) -> bytes:
        _check_range(self.pid, address, size)
        data = os.pread(self.fd, size, address)
        if len(data) != size:
            raise OSError(errno.EFAULT, f"short read at {address:#x} in process {self.pid}")
        return data

    def write(self, address: int, data: bytes) -> None:
        _check_range(self.pid, address, len(data))
        if os.pwrite(self.fd, data, address) != len(data):
            raise OSError(errno.EFAULT, f"short write at {address:#x} in process {self.pid}")

    def read_string(self, address: int, limit: int) -> bytes | None:
        """A NUL-terminated string of at most ``limit`` bytes, read page by page so a
        string ending just before an unmapped page is still read; None when not even
        its first byte is readable."""
        out = bytearray()
        while len(out) < limit:
            chunk = min(limit - len(out), 4096 - (address + len(out)) % 4096)
            try:
                _check_range(self.pid, address + len(out), chunk)
                data = os.pread(self.fd, chunk, address + len(out))
            except OSError:
                data = b""
            if not data:
                return bytes(out) if out else None
            end = data.find(b"\0")
            if end >= 0:
                out += data[:end]
                return bytes(out)
            out += data
        return bytes(out)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_peeked: dict[int, int] = {}
"""Tasks whose stop (or exit) ``wait`` reported and left with them, and what to take it
with (WSTOPPED or WEXITED), until a restart or the next wait takes it."""


def wait(block: bool = True) -> tuple[int, int]:
    """(tid, raw ``waitpid`` status) of the next stop or exit of any task, (0, 0) when
    ``block`` is False and none is there.

    The stop is reported and left with the task (``WNOWAIT``): the kernel keeps its signal
    until a restart replaces it, and a tracer that dies before that leaves it to be
    delivered.  Kernel: ``wait_task_stopped()`` clears ``exit_code`` once a wait takes a
    stop, and a tracee whose tracer dies in a signal-delivery stop after that resumes with
    no signal (``ptrace_signal()``): a thread that trapped on a breakpoint over a 1-byte
    instruction other than a nop would skip it, one given a signal of the program's would
    lose it.  Left, the SIGTRAP goes to the net's handler (the runtime's R1) and any
    other signal to the program.  A stop is taken before uemu changes the thread's
    registers (``Regset.store``), and stops of tasks not restarted since they were
    reported (parked ones) are taken first here, or this wait would report them again.

    An exec stop is taken at once: it has no signal to keep, and after a thread other
    than the leader called exec the kernel refuses every request to the pid it took
    over (ESRCH) until a wait has taken that stop (``looks_like_a_spurious_pid()``)."""
    _take_peeked()
    result = os.waitid(os.P_ALL, 0, WALL | os.WEXITED | os.WSTOPPED | os.WNOWAIT | (0 if block else os.WNOHANG))
    if result is None:
        return 0, 0
    status = _status(result)
    _peeked[result.si_pid] = os.WSTOPPED if result.si_code in (os.CLD_TRAPPED, os.CLD_STOPPED) else os.WEXITED
    if status >> 16 == EVENT_EXEC:
        take(result.si_pid)
    return result.si_pid, status


def wait_for(tid: int) -> int:
    """The raw status of the next stop of one task, taken."""
    _take_peeked()
    return os.waitpid(tid, WALL)[1]


def take(tid: int) -> None:
    """Take the stop (or exit) ``wait`` left with ``tid``, if it still holds one
    (WNOHANG: a task killed meanwhile has no stop left; its exit comes to a wait of its own)."""
    what = _peeked.pop(tid, None)
    if what is not None:
        with suppress(ChildProcessError):
            os.waitid(os.P_PID, tid, WALL | what | os.WNOHANG)


def _take_peeked() -> None:
    """Take every stop ``wait`` left with a task not restarted since."""
    while _peeked:
        take(next(iter(_peeked)))


def _status(result: os.waitid_result) -> int:
    """A ``waitid`` result as the ``waitpid`` status it stands for (kernel:
    ``wait_task_stopped()`` and ``wait_task_zombie()`` fill both from one value)."""
    if result.si_code in (os.CLD_TRAPPED, os.CLD_STOPPED):
        return (result.si_status << 8) | 0x7F
    if result.si_code == os.CLD_EXITED:
        return result.si_status << 8
    return result.si_status | (0x80 if result.si_code == os.CLD_DUMPED else 0)


PTRACE_GET_SYSCALL_INFO = 0x420E
SYSCALL_INFO_NONE = 0
SYSCALL_INFO_ENTRY = 1
SYSCALL_INFO_EXIT = 2
SYSCALL_INFO_SECCOMP = 3


class _SyscallInfo(ctypes.Structure):
    """struct ptrace_syscall_info with its union flattened: entry and seccomp
    share nr/args; exit reuses the first two words as rval/is_error."""

    _fields_ = (
        ("op", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("arch", c_uint32),
        ("instruction_pointer", c_uint64),
        ("stack_pointer", c_uint64),
        ("nr", c_uint64),
        ("args", c_uint64 * 6),
        ("ret_data", c_uint32),
    )


@dataclass(frozen=True)
class SyscallInfo:
    op: int
    nr: int
    args: tuple[int, ...]
    rval: int
    """Return value at exit, sign-extended (-errno on failure)."""


def syscall_info(tid: int) -> SyscallInfo:
    """PTRACE_GET_SYSCALL_INFO (Linux 5.3): which stop this is and the syscall's
    number and arguments, whatever the tracee's ABI."""
    info = _SyscallInfo()
    _request(PTRACE_GET_SYSCALL_INFO, tid, sizeof(info), addressof(info))
    rval = info.nr - (1 << 64) if info.nr >= 1 << 63 else info.nr
    return SyscallInfo(info.op, info.nr, tuple(info.args), rval)


SIGINFO_SIZE = 128


def signal_info_bytes(tid: int) -> bytes:
    """The raw siginfo of a signal-delivery stop, to give the same signal back later."""
    buffer = ctypes.create_string_buffer(SIGINFO_SIZE)
    _request(PTRACE_GETSIGINFO, tid, 0, addressof(buffer))
    return buffer.raw


def set_signal_info(tid: int, data: bytes) -> None:
    buffer = ctypes.create_string_buffer(data, SIGINFO_SIZE)
    _request(PTRACE_SETSIGINFO, tid, 0, addressof(buffer))


def signal_code(info: bytes) -> int:
    """si_code of a raw siginfo: > 0 when the kernel raised it for a fault or trap."""
    return int.from_bytes(info[8:12], sys.byteorder, signed=True)


_SI_PID = 16 if ctypes.sizeof(ctypes.c_void_p) == 8 else 12
"""si_pid's offset: the union after si_code is pointer-aligned (in uemu's own ABI, which
PTRACE_GETSIGINFO answers in)."""


def signal_sender(info: bytes) -> int:
    """si_pid of a raw siginfo of a signal sent by a process (SI_USER, SI_TKILL)."""
    return int.from_bytes(info[_SI_PID:_SI_PID + 4], sys.byteorder, signed=True)


PTRACE_GETSIGMASK = 0x420A


def regset_bytes(tid: int, note: int, size: int) -> bytes:
    """One regset other than the general registers (an NT_* ``note``), as the kernel
    gives it: at most ``size`` bytes, as many as it filled."""
    buffer = ctypes.create_string_buffer(size)
    iov = _Iovec(addressof(buffer), size)
    _request(PTRACE_GETREGSET, tid, note, addressof(iov))
    return buffer.raw[:iov.len]


PTRACE_GET_THREAD_AREA = 25


class _UserDesc(ctypes.Structure):
    """Kernel: ``struct user_desc`` (asm/ldt.h), its flag bits folded into one word."""

    _fields_ = [("entry_number", ctypes.c_uint), ("base_addr", ctypes.c_uint), ("limit", ctypes.c_uint),
                ("flags", ctypes.c_uint)]


def tls_entry_base(tid: int, entry: int) -> int:
    """The base address of the thread's GDT TLS descriptor ``entry`` (x86:
    PTRACE_GET_THREAD_AREA, the entry a segment selector's index names)."""
    desc = _UserDesc()
    _request(PTRACE_GET_THREAD_AREA, tid, entry, addressof(desc))
    return int(desc.base_addr)


def blocked_signals(tid: int) -> int:
    """The thread's blocked-signal mask (PTRACE_GETSIGMASK, Linux 3.11)."""
    mask = c_uint64()
    _request(PTRACE_GETSIGMASK, tid, sizeof(mask), addressof(mask))
    return mask.value
