"""Run an ABI's runtime blob in unicorn, as the kernel would run a SIGTRAP handler.

A ``Machine`` maps a fake area (the committed blob, then a table kept by a real
``uemu.net.Net``), a program page with code, a data page with semaphores and a stack,
and builds a siginfo and a ucontext for each delivery.  The blob's system calls go to
``FakeKernel``, which keeps the signal actions, /proc/self/mem and the memory
protections the way Linux does as far as the runtime can tell.  System call numbers come
from the kernel's uapi headers, an oracle outside uemu.
"""

from __future__ import annotations

import errno
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from unicorn import (
    UC_ARCH_ARM64,
    UC_ARCH_RISCV,
    UC_ARCH_X86,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_MODE_32,
    UC_MODE_64,
    UC_MODE_ARM,
    UC_MODE_RISCV64,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
    Uc,
    UcError,
)
from unicorn import arm64_const as a64
from unicorn import riscv_const as rv
from unicorn import x86_const as x86

import uemu.arch
from uemu.net import Net
from uemu.runtime import layout

PAGE = 4096
BASE = 0x7F0000000000
"""The area (64-bit); i386 uses ``BASE32``."""
BASE32 = 0x50000000
TEXT = 0x400000
"""The program's code: a page of its breakpoints and its own SIGTRAP handler."""
DATA = 0x600000
"""The program's data: semaphores."""
STACK = 0x700000
STACK_SIZE = 16 * PAGE
SENTINEL = 0x800000
"""The handler returns here; the run stops."""
PROGRAM_HANDLER = TEXT + 0xF00
"""The program's own SIGTRAP handler: a ``ret``, its calls recorded by a hook."""
UNMAPPED = 0x900000

SIGTRAP = 5
SI_USER, SI_TKILL, SI_KERNEL = 0, -6, 0x80
TRAP_BRKPT, TRAP_TRACE = 1, 2
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4

_HEADERS = Path("/usr/include")
_UAPI = {
    "x86_64": _HEADERS / "x86_64-linux-gnu/asm/unistd_64.h",
    "i386": _HEADERS / "x86_64-linux-gnu/asm/unistd_32.h",
    "aarch64": _HEADERS / "asm-generic/unistd.h",
    "riscv64": _HEADERS / "asm-generic/unistd.h",
}
_RISCV_FLUSH_ICACHE = 244 + 15
"""arch/riscv/include/uapi/asm/unistd.h: __NR_arch_specific_syscall + 15 (not installed here)."""


def uapi_available(arch: str) -> bool:
    return _UAPI[arch].is_file()


def syscall_names(arch: str) -> dict[int, str]:
    """Number -> name from the uapi header of ``arch``."""
    names = {}
    for match in re.finditer(r"^#define __NR_(\w+)\s+(\d+)\s*$", _UAPI[arch].read_text(), re.M):
        names[int(match.group(2))] = match.group(1)
    if arch == "riscv64":
        names[_RISCV_FLUSH_ICACHE] = "riscv_flush_icache"
    return names


RET = {"x86_64": b"\xc3", "i386": b"\xc3", "aarch64": bytes.fromhex("c0035fd6"),
       "riscv64": (0x00008067).to_bytes(4, "little")}
NOP = {"x86_64": b"\x90", "i386": b"\x90", "aarch64": bytes.fromhex("1f2003d5"),
       "riscv64": (0x00000013).to_bytes(4, "little")}


@dataclass
class Unicorn:
    uc: Uc
    ip: int
    sp: int
    ret: int | None
    """The link register, where the ABI has one."""
    args: tuple[int, ...]
    """Argument registers (empty for i386: on the stack)."""


def _unicorn(arch: str) -> Unicorn:
    if arch == "x86_64":
        return Unicorn(Uc(UC_ARCH_X86, UC_MODE_64), x86.UC_X86_REG_RIP, x86.UC_X86_REG_RSP, None,
                       (x86.UC_X86_REG_RDI, x86.UC_X86_REG_RSI, x86.UC_X86_REG_RDX))
    if arch == "i386":
        return Unicorn(Uc(UC_ARCH_X86, UC_MODE_32), x86.UC_X86_REG_EIP, x86.UC_X86_REG_ESP, None, ())
    if arch == "aarch64":
        return Unicorn(Uc(UC_ARCH_ARM64, UC_MODE_ARM), a64.UC_ARM64_REG_PC, a64.UC_ARM64_REG_SP,
                       a64.UC_ARM64_REG_X30, (a64.UC_ARM64_REG_X0, a64.UC_ARM64_REG_X1, a64.UC_ARM64_REG_X2))
    return Unicorn(Uc(UC_ARCH_RISCV, UC_MODE_RISCV64), rv.UC_RISCV_REG_PC, rv.UC_RISCV_REG_SP,
                   rv.UC_RISCV_REG_RA, (rv.UC_RISCV_REG_A0, rv.UC_RISCV_REG_A1, rv.UC_RISCV_REG_A2))


_SYSCALL_REGS = {
    "x86_64": (x86.UC_X86_REG_RAX, (x86.UC_X86_REG_RDI, x86.UC_X86_REG_RSI, x86.UC_X86_REG_RDX,
                                    x86.UC_X86_REG_R10, x86.UC_X86_REG_R8, x86.UC_X86_REG_R9)),
    "i386": (x86.UC_X86_REG_EAX, (x86.UC_X86_REG_EBX, x86.UC_X86_REG_ECX, x86.UC_X86_REG_EDX,
                                  x86.UC_X86_REG_ESI, x86.UC_X86_REG_EDI, x86.UC_X86_REG_EBP)),
    "aarch64": (a64.UC_ARM64_REG_X8, tuple(getattr(a64, f"UC_ARM64_REG_X{i}") for i in range(6))),
    "riscv64": (rv.UC_RISCV_REG_A7, tuple(getattr(rv, f"UC_RISCV_REG_A{i}") for i in range(6))),
}
_RETURN_REG = {"x86_64": x86.UC_X86_REG_RAX, "i386": x86.UC_X86_REG_EAX, "aarch64": a64.UC_ARM64_REG_X0,
               "riscv64": rv.UC_RISCV_REG_A0}


class UnicornMemory:
    """``uemu.net.Memory`` over unicorn: what uemu writes through /proc/PID/mem (FOLL_FORCE:
    protections do not matter)."""

    def __init__(self, uc: Uc):
        self.uc = uc

    def read(self, address: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(address, size))

    def write(self, address: int, data: bytes) -> None:
        self.uc.mem_write(address, data)


@dataclass
class FakeKernel:
    """The system calls the runtime makes, with Linux's results."""

    machine: Machine
    pid: int = 4242
    tid: int = 4242
    live_tids: set[int] = field(default_factory=lambda: {4242})
    proc_mem: str = "force"
    """'force': /proc/self/mem writes through any protection (proc_mem.force_override=always);
    'never': only to writable pages; 'absent': it cannot be opened."""
    mdwe: bool = False
    """memory-deny-write-execute: mprotect refuses to make a page W+X."""
    actions: dict[int, bytes] = field(default_factory=dict)
    calls: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    tgkills: list[tuple[int, int, int]] = field(default_factory=list)
    slept_ms: list[float] = field(default_factory=list)
    open_fds: set[int] = field(default_factory=set)
    on_yield: list = field(default_factory=list)
    """Callables run at each sched_yield (to let a simulated other thread act)."""
    clock_ns: int = 1_234_000_005_678
    """What clock_gettime(CLOCK_MONOTONIC) says."""
    tracer_pid: int | None = 777
    """TracerPid in /proc/thread-self/status (None: /proc cannot be opened)."""
    dead_pids: set[int] = field(default_factory=set)
    futexes: list[tuple[int, int, int]] = field(default_factory=list)
    on_futex_wait: list = field(default_factory=list)
    """Callables run at each FUTEX_WAIT (the reader making room meanwhile)."""
    files: dict[int, bytes] = field(default_factory=dict)

    def handle(self, name: str, args: tuple[int, ...]) -> int:
        self.calls.append((name, args))
        method = getattr(self, "sys_" + name, None)
        if method is None:
            raise AssertionError(f"the runtime made an unexpected system call: {name}{args}")
        return method(*args)

    # -- memory ---------------------------------------------------------------
    def _prot(self, address: int) -> int | None:
        for start, end, perms in self.machine.uc.mem_regions():
            if start <= address <= end:
                return perms
        return None

    def _accessible(self, address: int, size: int, need: int) -> bool:
        for page in range(address & ~(PAGE - 1), address + size, PAGE):
            perms = self._prot(page)
            if perms is None or (perms & need) != need:
                return False
        return True

    def sys_openat(self, dirfd: int, path: int, flags: int, *_: int) -> int:
        name = bytes(self.machine.uc.mem_read(path, 32)).split(b"\0")[0]
        if name == b"/proc/thread-self/status":
            if self.tracer_pid is None:
                return -errno.ENOENT
            self.files[4] = (f"Name:\tprogram\nUmask:\t0022\nState:\tR (running)\nTgid:\t{self.pid}\n"
                             f"Pid:\t{self.tid}\nPPid:\t1\nTracerPid:\t{self.tracer_pid}\nUid:\t0\t0\t0\t0\n"
                             ).encode()
            self.open_fds.add(4)
            return 4
        assert name == b"/proc/self/mem", name
        assert flags & 2, "opened without O_RDWR"
        if self.proc_mem == "absent":
            return -errno.ENOENT
        self.open_fds.add(3)
        return 3

    def sys_read(self, fd: int, buf: int, count: int, *_: int) -> int:
        assert fd in self.open_fds
        data = self.files.get(fd, b"")
        chunk, self.files[fd] = data[:count], data[count:]
        self.machine.uc.mem_write(buf, chunk)
        return len(chunk)

    def sys_close(self, fd: int, *_: int) -> int:
        self.open_fds.discard(fd)
        return 0

    def sys_kill(self, pid: int, sig: int, *_: int) -> int:
        return -errno.ESRCH if pid in self.dead_pids else 0

    def sys_clock_gettime(self, clock: int, ts: int, *_: int) -> int:
        assert clock == 1, "CLOCK_MONOTONIC, as time.monotonic_ns()"
        word = self.machine.arch.word_size
        seconds, nanoseconds = divmod(self.clock_ns, 1_000_000_000)
        self.machine.uc.mem_write(ts, seconds.to_bytes(word, "little") + nanoseconds.to_bytes(word, "little"))
        return 0

    def sys_futex(self, address: int, op: int, value: int, *_: int) -> int:
        self.futexes.append((address, op, value))
        if op == 0:
            for action in self.on_futex_wait:
                action()
            return -errno.ETIMEDOUT
        return 0

    def _offset(self, *words: int) -> int:
        return words[0] | (words[1] << 32) if self.machine.arch.name == "i386" else words[0]

    def sys_pread64(self, fd: int, buf: int, size: int, *offset: int) -> int:
        assert fd in self.open_fds
        address = self._offset(*offset)
        if not self._accessible(address, size, 0):
            return -errno.EIO
        self.machine.uc.mem_write(buf, bytes(self.machine.uc.mem_read(address, size)))
        return size

    def sys_pwrite64(self, fd: int, buf: int, size: int, *offset: int) -> int:
        assert fd in self.open_fds
        address = self._offset(*offset)
        need = 0 if self.proc_mem == "force" else UC_PROT_WRITE
        if not self._accessible(address, size, need):
            return -errno.EIO
        self.machine.uc.mem_write(address, bytes(self.machine.uc.mem_read(buf, size)))
        self.machine.writes.append((address, bytes(self.machine.uc.mem_read(buf, size))))
        return size

    def _iovec(self, address: int) -> tuple[int, int]:
        word = self.machine.arch.word_size
        data = bytes(self.machine.uc.mem_read(address, 2 * word))
        return int.from_bytes(data[:word], "little"), int.from_bytes(data[word:], "little")

    def _vm(self, pid: int, local: int, lcount: int, remote: int, rcount: int, flags: int, write: bool) -> int:
        """One local iovec, one or more remote ones (each whole or not at all, as the
        kernel's partial transfers); returns the bytes moved, -EFAULT if none."""
        assert pid == self.pid and lcount == 1 and rcount >= 1 and flags == 0
        lbase, llen = self._iovec(local)
        word = self.machine.arch.word_size
        remotes = [self._iovec(remote + 2 * word * n) for n in range(rcount)]
        assert sum(length for _, length in remotes) == llen
        done = 0
        for rbase, rlen in remotes:
            if not self._accessible(rbase, rlen, UC_PROT_WRITE if write else UC_PROT_READ):
                break
            if write:
                data = bytes(self.machine.uc.mem_read(lbase + done, rlen))
                self.machine.uc.mem_write(rbase, data)
                self.machine.writes.append((rbase, data))
            else:
                self.machine.uc.mem_write(lbase + done, bytes(self.machine.uc.mem_read(rbase, rlen)))
            done += rlen
        return done or -errno.EFAULT

    def sys_process_vm_readv(self, *args: int) -> int:
        return self._vm(*args, write=False)

    def sys_process_vm_writev(self, *args: int) -> int:
        return self._vm(*args, write=True)

    def sys_mprotect(self, start: int, size: int, prot: int, *_: int) -> int:
        assert start % PAGE == 0 and size % PAGE == 0
        if self.mdwe and prot & PROT_WRITE and prot & PROT_EXEC:
            return -errno.EACCES
        if not self._accessible(start, size, 0):
            return -errno.ENOMEM
        perms = (UC_PROT_READ if prot & PROT_READ else 0) | (UC_PROT_WRITE if prot & PROT_WRITE else 0) \
            | (UC_PROT_EXEC if prot & PROT_EXEC else 0)
        self.machine.uc.mem_protect(start, size, perms)
        return 0

    def sys_riscv_flush_icache(self, *_: int) -> int:
        return 0

    # -- signals and threads --------------------------------------------------
    def sys_rt_sigaction(self, sig: int, act: int, oact: int, sigsetsize: int, *_: int) -> int:
        size = self.machine.arch.sigaction.size
        if sigsetsize != 8:
            return -errno.EINVAL
        old = self.actions.get(sig, bytes(size))
        if act:
            self.actions[sig] = bytes(self.machine.uc.mem_read(act, size))
        if oact:
            self.machine.uc.mem_write(oact, old)
        return 0

    def sys_gettid(self, *_: int) -> int:
        return self.tid

    def sys_getpid(self, *_: int) -> int:
        return self.pid

    def sys_tgkill(self, tgid: int, tid: int, sig: int, *_: int) -> int:
        if tgid != self.pid or tid not in self.live_tids:
            return -errno.ESRCH
        if sig:
            self.tgkills.append((tgid, tid, sig))
        return 0

    def sys_sched_yield(self, *_: int) -> int:
        for action in self.on_yield:
            action()
        return 0

    def sys_nanosleep(self, request: int, *_: int) -> int:
        word = self.machine.arch.word_size
        data = bytes(self.machine.uc.mem_read(request, 2 * word))
        seconds, nanoseconds = int.from_bytes(data[:word], "little"), int.from_bytes(data[word:], "little")
        self.slept_ms.append(seconds * 1000 + nanoseconds / 1e6)
        return 0


@dataclass
class Delivery:
    """What the handler did with one SIGTRAP."""

    regs: dict[str, int]
    """The ucontext's registers after the handler (what sigreturn would restore)."""
    program_calls: list[tuple[int, int, int]]
    """(sig, info, uc) of each call of the program's own handler."""


class Machine:
    """One ABI: the area with the committed blob, a program, a fake kernel."""

    SMALL = layout.Capacities(sites=64, counters=16, slots=16, threads=16)

    def __init__(self, arch: str, capacities: layout.Capacities = SMALL):
        self.arch = uemu.arch.by_name(arch)
        self.cpu = _unicorn(arch)
        self.uc = self.cpu.uc
        self.base = BASE32 if self.arch.word_size == 4 else BASE
        self.kernel = FakeKernel(self)
        self.writes: list[tuple[int, bytes]] = []
        self.program_calls: list[tuple[int, int, int]] = []
        uc = self.uc
        uc.mem_map(self.base, layout.CODE_SIZE, UC_PROT_READ | UC_PROT_EXEC)
        uc.mem_map(self.base + layout.CODE_SIZE, layout.DATA_SIZE, UC_PROT_READ | UC_PROT_WRITE)
        uc.mem_map(TEXT, PAGE, UC_PROT_READ | UC_PROT_EXEC)
        uc.mem_map(DATA, PAGE, UC_PROT_READ | UC_PROT_WRITE)
        uc.mem_map(STACK, STACK_SIZE, UC_PROT_READ | UC_PROT_WRITE)
        uc.mem_map(SENTINEL, PAGE, UC_PROT_READ | UC_PROT_EXEC)
        uc.mem_write(TEXT, NOP[arch] * (PAGE // len(NOP[arch])))
        uc.mem_write(PROGRAM_HANDLER, RET[arch])
        self.memory = UnicornMemory(uc)
        self.net = Net(self.arch, self.base, self.memory, capacities)
        self._names = syscall_names(arch)
        self._hook_syscalls()
        uc.hook_add(UC_HOOK_CODE, self._program_handler_called, None, PROGRAM_HANDLER, PROGRAM_HANDLER)

    # -- set-up ---------------------------------------------------------------
    def _hook_syscalls(self) -> None:
        number_reg, arg_regs = _SYSCALL_REGS[self.arch.name]
        result_reg = _RETURN_REG[self.arch.name]
        mask = (1 << (8 * self.arch.word_size)) - 1

        def syscall(uc: Uc, *_: object) -> None:
            number = uc.reg_read(number_reg)
            args = tuple(uc.reg_read(reg) for reg in arg_regs)
            name = self._names.get(number, f"#{number}")
            uc.reg_write(result_reg, self.kernel.handle(name, args) & mask)

        if self.arch.name == "x86_64":
            self.uc.hook_add(UC_HOOK_INSN, syscall, None, 1, 0, x86.UC_X86_INS_SYSCALL)
            return

        expected = {"i386": 0x80, "aarch64": 2, "riscv64": 8}[self.arch.name]

        def interrupt(uc: Uc, intno: int, _: object) -> None:
            if intno != expected:
                raise AssertionError(f"interrupt {intno} at {uc.reg_read(self.cpu.ip):#x}")
            syscall(uc)

        self.uc.hook_add(UC_HOOK_INTR, interrupt)

    def _program_handler_called(self, uc: Uc, *_: object) -> None:
        if self.cpu.args:
            args = tuple(uc.reg_read(reg) for reg in self.cpu.args)
        else:
            sp = uc.reg_read(self.cpu.sp)
            args = struct.unpack("<3I", uc.mem_read(sp + 4, 12))
        self.program_calls.append(args)  # type: ignore[arg-type]

    def install(self, saved_action: bytes | None = None, tracer_pid: int = 777, delay_ms: int = 5) -> None:
        """What uemu does before its first breakpoint: ``Net.install`` with the kernel's
        rt_sigaction carried out by the fake kernel (as an injected call would)."""
        if saved_action is not None:
            self.kernel.actions[SIGTRAP] = saved_action

        def call(name: str, *args: int) -> int:
            return self.kernel.handle(name, args)

        self.net.install(call, tracer_pid, restore_delay_ms=delay_ms)
        self.kernel.calls.clear()

    def action(self, handler: int, flags: int = 0, mask: int = 0) -> bytes:
        """A kernel sigaction of this ABI."""
        sa = self.arch.sigaction
        out = bytearray(sa.size)
        out[sa.handler:sa.handler + sa.word] = handler.to_bytes(sa.word, "little")
        out[sa.flags:sa.flags + sa.word] = flags.to_bytes(sa.word, "little")
        out[sa.mask:sa.mask + 8] = mask.to_bytes(8, "little")
        return bytes(out)

    def handler_of(self, action: bytes) -> int:
        sa = self.arch.sigaction
        return int.from_bytes(action[sa.handler:sa.handler + sa.word], "little")

    @property
    def current_action(self) -> bytes:
        return self.kernel.actions.get(SIGTRAP, bytes(self.arch.sigaction.size))

    @property
    def trap(self) -> bytes:
        return self.arch.backend.trap_bytes(NOP[self.arch.name])

    def trap_ip(self, address: int) -> int:
        """ip after the trap instruction at ``address`` traps (x86: past the int3)."""
        return address + (1 if self.arch.name in ("x86_64", "i386") else 0)

    def arm(self, address: int, trap: bytes | None = None, prot: int = PROT_READ | PROT_EXEC) -> bytes:
        """A breakpoint as uemu places one: the table entry, then the trap over the code."""
        trap = trap or self.trap
        orig = self.memory.read(address, len(trap))
        self.net.add_site(address, orig, trap, prot)
        self.memory.write(address, trap)
        return orig

    def u16(self, address: int) -> int:
        return struct.unpack("<h", self.memory.read(address, 2))[0]

    def set_u16(self, address: int, value: int) -> None:
        self.memory.write(address, struct.pack("<h", value))

    def read_word(self, address: int) -> int:
        return int.from_bytes(self.memory.read(address, self.arch.word_size), "little")

    # -- delivery -------------------------------------------------------------
    def deliver(self, ip: int, code: int, sp: int = STACK + STACK_SIZE - 2048, pid: int = 0,
                regs: dict[str, int] | None = None, tid: int | None = None) -> Delivery:
        """Deliver a SIGTRAP as the kernel does: siginfo and ucontext on the stack, the
        handler called with the ABI's convention, returning to a sentinel."""
        if tid is not None:
            self.kernel.tid = tid
            self.kernel.live_tids.add(tid)
        word = self.arch.word_size
        frame = STACK + STACK_SIZE // 2
        info, uc_address = frame, frame + 256
        siginfo = bytearray(128)
        struct.pack_into("<iii", siginfo, 0, SIGTRAP, 0, code)
        struct.pack_into("<i", siginfo, 16 if word == 8 else 12, pid)
        self.uc.mem_write(info, bytes(siginfo))
        self.uc.mem_write(uc_address, bytes(1024))
        values = {**(regs or {}), self.arch.ip_reg: ip, self.arch.sp_reg: sp}
        for name, value in values.items():
            self.uc.mem_write(uc_address + self.arch.ucontext_regs[name], value.to_bytes(word, "little"))
        self.program_calls.clear()
        self._call(self.net.trap_handler, (SIGTRAP, info, uc_address), frame - 64)
        out = {name: int.from_bytes(self.uc.mem_read(uc_address + offset, word), "little")
               for name, offset in self.arch.ucontext_regs.items()}
        return Delivery(out, list(self.program_calls))

    def _call(self, function: int, args: tuple[int, ...], sp: int) -> None:
        uc, cpu = self.uc, self.cpu
        sp &= ~15
        if self.arch.name == "x86_64":
            sp -= 8
            uc.mem_write(sp, SENTINEL.to_bytes(8, "little"))
        elif self.arch.name == "i386":
            sp -= 16
            uc.mem_write(sp, struct.pack("<4I", SENTINEL, *args))
        else:
            uc.reg_write(cpu.ret, SENTINEL)
        for reg, value in zip(cpu.args, args, strict=False):
            uc.reg_write(reg, value)
        uc.reg_write(cpu.sp, sp)
        try:
            uc.emu_start(function, SENTINEL, count=5_000_000)
        except UcError as err:
            raise AssertionError(f"the handler faulted at {uc.reg_read(cpu.ip):#x}: {err}") from None
        if uc.reg_read(cpu.ip) != SENTINEL:
            raise AssertionError(f"the handler did not return (ip {uc.reg_read(cpu.ip):#x})")
