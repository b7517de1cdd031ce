"""What /proc says about a process before and while we trace it.

Every read may find the process gone; that surfaces as ``NoSuchProcess`` here,
before any ptrace call, and as ``TraceeGone`` later.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
from dataclasses import dataclass

from uemu import arch as arches
from uemu.arch import Arch

from . import errors, sdt

PF_KTHREAD = 0x00200000


@dataclass(frozen=True)
class Status:
    """The fields of /proc/PID/status that decide whether we may attach."""

    name: str
    state: str
    tgid: int
    tracer_pid: int


def status(pid: int) -> Status:
    try:
        with open(f"/proc/{pid}/status") as stream:
            fields = dict(line.split(":\t", 1) for line in stream.read().splitlines() if ":\t" in line)
    except (FileNotFoundError, ProcessLookupError):
        raise errors.NoSuchProcess(pid) from None
    return Status(
        name=fields.get("Name", "?").strip(),
        state=fields.get("State", "?").strip()[:1],
        tgid=int(fields.get("Tgid", pid)),
        tracer_pid=int(fields.get("TracerPid", 0)),
    )


def check_attachable(pid: int) -> Status:
    """Refuse, in one line each, what cannot be traced: a thread id instead of a
    process, a zombie, a kernel thread, a process that already has a tracer."""
    st = status(pid)
    if st.tgid != pid:
        raise errors.AttachRefused(f"{pid} is a thread of process {st.tgid}; attach to {st.tgid}")
    if st.state in ("Z", "X"):
        raise errors.AttachRefused(f"process {pid} ({st.name}) is a zombie")
    if is_kernel_thread(pid):
        raise errors.AttachRefused(f"process {pid} ({st.name}) is a kernel thread")
    for tid in threads(pid):
        check_untraced(pid, tid)
    return st


def check_untraced(pid: int, tid: int) -> None:
    """AttachRefused naming the tracer when one thread of ``pid`` already has one
    (``strace -p TID`` on a single thread): ptrace allows one tracer per thread."""
    try:
        st = status(tid)
    except errors.NoSuchProcess:
        return  # the thread ended meanwhile
    if st.tracer_pid:
        who = f"process {pid}" if tid == pid else f"thread {tid} of process {pid}"
        raise errors.AttachRefused(
            f"{who} ({st.name}) is already traced by {st.tracer_pid} ({comm(st.tracer_pid)})"
        )


def is_kernel_thread(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stream:
            # comm may hold spaces and parentheses: fields start after the last ')'
            fields = stream.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        raise errors.NoSuchProcess(pid) from None
    return bool(int(fields[6]) & PF_KTHREAD)


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as stream:
            return stream.read().strip()
    except OSError:
        return "?"


def attach_denied(pid: int) -> errors.AccessDenied:
    """The explanation for EPERM from PTRACE_SEIZE when no tracer holds the process."""
    hints = []
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as stream:
            scope = int(stream.read())
    except OSError:
        scope = 0
    if scope == 1:
        hints.append("Yama ptrace_scope is 1: only a parent may trace; start it with 'uemu run'")
    elif scope == 2:
        hints.append("Yama ptrace_scope is 2: tracing needs CAP_SYS_PTRACE")
    elif scope == 3:
        hints.append("Yama ptrace_scope is 3: ptrace attach is disabled until reboot; use 'uemu run'")
    else:
        hints.append("the process belongs to another user or is not dumpable")
    hints.append("root or CAP_SYS_PTRACE lifts this, or start the program with 'uemu run'")
    return errors.AccessDenied(f"cannot trace process {pid} ({comm(pid)})", "; ".join(hints))


def threads(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except (FileNotFoundError, ProcessLookupError):
        raise errors.NoSuchProcess(pid) from None


def blocks_sigtrap(tid: int) -> bool:
    """Whether the thread blocks SIGTRAP (``SigBlk`` of /proc/TID/status)."""
    try:
        return _has_signal(tid, "SigBlk:", signal.SIGTRAP)
    except (FileNotFoundError, ProcessLookupError):
        return False  # gone meanwhile


def sigtrap_pending(tid: int) -> bool:
    """Whether SIGTRAP is queued for this thread (``SigPnd`` of /proc/TID/status)."""
    return _has_signal(tid, "SigPnd:", signal.SIGTRAP)


def group_exiting(tid: int) -> bool:
    """Whether this thread's whole process is on its way out: SIGKILL queued for it,
    which the kernel queues for every thread of a group that exits (a fatal signal,
    exit_group: ``zap_other_threads()``), never for one thread's exit alone; so also
    when its status can no longer be read."""
    try:
        return _has_signal(tid, "SigPnd:", signal.SIGKILL) or _has_signal(tid, "ShdPnd:", signal.SIGKILL)
    except OSError:
        return True


def _has_signal(tid: int, mask: str, sig: int) -> bool:
    """Read as bytes: the Name line holds the program's name as the kernel has it, which
    need not be UTF-8."""
    with open(f"/proc/{tid}/status", "rb") as stream:
        for line in stream:
            if line.startswith(mask.encode()):
                return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


def in_syscall(tid: int) -> bool:
    """Whether a stopped task is inside a system call (``/proc/TID/syscall`` names
    one), rather than stopped between two instructions of its own."""
    try:
        with open(f"/proc/{tid}/syscall") as stream:
            first = stream.read().split(maxsplit=1)[:1]
    except (FileNotFoundError, ProcessLookupError):
        raise errors.TraceeGone(tid) from None
    return first not in (["-1"], ["running"])


def start_brk(pid: int) -> int | None:
    """Where the process's heap starts (/proc/PID/stat field 47, start_brk)."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
        return int(fields[47 - 3])
    except (OSError, ValueError, IndexError):
        return None


def descendants(root: int) -> list[int]:
    """Every process whose parent chain reaches ``root``, parents before children
    (from /proc/PID/stat; a process may end or be born while this reads)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stream:
                ppid = int(stream.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry))
    found, queue = [], list(children.get(root, ()))
    while queue:
        pid = queue.pop(0)
        found.append(pid)
        queue += children.get(pid, ())
    return found


def tgid(tid: int) -> int:
    return status(tid).tgid


def executable_arch(pid: int) -> Arch:
    """The ABI of the process's executable, from its ELF header."""
    path = f"/proc/{pid}/exe"
    try:
        elf = sdt.open_elf(os.readlink(path), path)
    except (FileNotFoundError, ProcessLookupError):
        raise errors.NoSuchProcess(pid) from None
    except PermissionError:
        raise attach_denied(pid) from None
    found = arches.for_elf(elf.e_machine, elf.elf_class, elf.little_endian)
    found.tracing_backend()
    return found


_libc = ctypes.CDLL(None, use_errno=True)
KCMP_VM = 1


def shares_memory(pid1: int, pid2: int) -> bool:
    """Whether two processes share one address space (vfork, CLONE_VM), by kcmp(2)
    (numbered as on the machine uemu runs on)."""
    host = arches.by_name(os.uname().machine)
    kcmp = host.syscall_numbers.get("kcmp")
    if kcmp is None:
        raise errors.UnsupportedArch(host.name, what="no kcmp syscall number known")
    result = _libc.syscall(kcmp, pid1, pid2, KCMP_VM, 0, 0)
    if result < 0:
        err = ctypes.get_errno()
        if err == errno.ESRCH:
            raise errors.TraceeGone(pid2)
        raise OSError(err, os.strerror(err))
    return bool(result == 0)
