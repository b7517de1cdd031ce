"""uemu/net.py over a bytes-backed memory: what each call writes, in how many writes, and
that the table reads back as written."""

from __future__ import annotations

import errno
import signal

import pytest

from uemu import errors
from uemu.arch import by_name
from uemu.net import (
    MAP_FIXED_NOREPLACE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    SA_RESETHAND,
    SA_RESTORER,
    SA_SIGINFO,
    Net,
    map_area,
    read_table,
)
from uemu.runtime import layout, load_blob
from uemu.runtime.layout import Capacities, SiteState, SlotFlags, TableState, ThreadFlags

BASE = 0x7F0000000000
SA_ONSTACK = 0x08000000
BASE32 = 0x50000000
SMALL = Capacities(sites=4, counters=2, slots=2, threads=2)
ARCHES = ("x86_64", "i386", "aarch64", "riscv64")


class FakeMemory:
    """A sparse byte space that records each write."""

    def __init__(self) -> None:
        self.bytes: dict[int, int] = {}
        self.writes: list[tuple[int, bytes]] = []

    def read(self, address: int, size: int) -> bytes:
        return bytes(self.bytes.get(address + i, 0) for i in range(size))

    def write(self, address: int, data: bytes) -> None:
        self.writes.append((address, bytes(data)))
        for i, byte in enumerate(data):
            self.bytes[address + i] = byte


class FakeCalls:
    """Injected system calls: recorded, with rt_sigaction carried out on ``memory``."""

    def __init__(self, memory: FakeMemory, arch: str, program_action: bytes = b""):
        self.memory = memory
        self.size = by_name(arch).sigaction.size
        self.action = program_action.ljust(self.size, b"\0")
        self.calls: list[tuple[str, tuple[int, ...]]] = []
        self.results: dict[str, list[int]] = {}

    def __call__(self, name: str, *args: int) -> int:
        self.calls.append((name, args))
        if self.results.get(name):
            return self.results[name].pop(0)
        if name == "rt_sigaction":
            _, new, old, _ = args
            if old:
                self.memory.write(old, self.action)
            if new:
                self.action = self.memory.read(new, self.size)
        return args[0] if name == "mmap" and args[0] else 0x5000_0000 if name == "mmap" else 0


def net_for(arch: str = "x86_64", capacities: Capacities = SMALL) -> Net:
    return Net(by_name(arch), base_for(arch), FakeMemory(), capacities)


def base_for(arch: str) -> int:
    return BASE32 if by_name(arch).word_size == 4 else BASE


def installed(arch: str = "x86_64") -> Net:
    """A net after ``install``, its memory's write log cleared."""
    net = net_for(arch)
    net.install(FakeCalls(net.memory, arch), tracer_pid=1)
    net.memory.writes.clear()
    return net


def word(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset:offset + size], "little")


@pytest.mark.parametrize("arch", ARCHES)
def test_our_action_keeps_the_programs_flags_and_mask(arch: str) -> None:
    net = net_for(arch)
    sa = net.arch.sigaction
    program = bytearray(sa.size)
    program[sa.handler:sa.handler + sa.word] = (0x1234).to_bytes(sa.word, "little")
    flags = 0x10000000 | 0x08000000 | SA_RESETHAND  # SA_RESTART | SA_ONSTACK | SA_RESETHAND
    program[sa.flags:sa.flags + sa.word] = flags.to_bytes(sa.word, "little")
    program[sa.mask:sa.mask + 8] = (0xF0F0).to_bytes(8, "little")
    ours = net.our_action(bytes(program))
    assert len(ours) == sa.size
    assert word(ours, sa.handler, sa.word) == base_for(arch) + load_blob(arch).trap_handler
    got_flags = word(ours, sa.flags, sa.word)
    assert got_flags & ~SA_RESTORER == (flags | SA_SIGINFO) & ~SA_RESETHAND
    assert word(ours, sa.mask, 8) == 0xF0F0
    if sa.restorer is None:
        assert not got_flags & SA_RESTORER
    else:
        assert got_flags & SA_RESTORER
        assert word(ours, sa.restorer, sa.word) == base_for(arch) + load_blob(arch).restorer


def test_install_writes_blob_and_table_then_swaps_the_action_through_the_table() -> None:
    net = net_for()
    program = net.arch.sigaction
    action = (0x4444).to_bytes(8, "little") + (SA_SIGINFO | SA_RESTORER | SA_ONSTACK).to_bytes(8, "little")
    calls = FakeCalls(net.memory, "x86_64", action)
    net.install(calls, tracer_pid=321, restore_delay_ms=7)
    assert calls.calls == [
        ("rt_sigaction", (signal.SIGTRAP, net.our_action_address, net.saved_action_address, 8)),
        ("rt_sigaction", (signal.SIGTRAP, net.our_action_address, 0, 8)),
    ], "ours in and the program's out in one call, then ours again with the program's flags"
    assert net.memory.read(BASE, len(net.blob.code)) == net.blob.code
    view = read_table(BASE, net.memory)
    assert view.header.state == TableState.ARMED and view.header.tracer_pid == 321
    assert view.header.restore_delay_ms == 7 and view.header.mem_path.rstrip(b"\0") == b"/proc/self/mem"
    assert word(view.header.saved_action, program.handler, 8) == 0x4444
    assert word(calls.action, program.handler, 8) == net.trap_handler, "ours installed"
    assert word(calls.action, program.flags, 8) == SA_SIGINFO | SA_RESTORER | SA_ONSTACK


@pytest.mark.parametrize("arch", ARCHES)
def test_install_makes_one_call_for_a_program_with_the_default_action(arch: str) -> None:
    net = net_for(arch)
    calls = FakeCalls(net.memory, arch)
    net.install(calls, tracer_pid=1, area_fd=5)
    assert calls.calls == [
        ("rt_sigaction", (signal.SIGTRAP, net.our_action_address, net.saved_action_address, 8)),
        ("close", (5,)),
    ], "the memfd closed after the handler is in"
    assert calls.action == net.our_action(bytes(net.arch.sigaction.size))


def test_install_says_why_rt_sigaction_failed() -> None:
    net = net_for()
    calls = FakeCalls(net.memory, "x86_64")
    calls.results["rt_sigaction"] = [-errno.EFAULT]
    with pytest.raises(errors.UemuError, match=r"rt_sigaction.*Bad address"):
        net.install(calls, tracer_pid=1)


def test_map_area_maps_code_then_makes_only_the_table_writable() -> None:
    calls = FakeCalls(FakeMemory(), "x86_64")
    start = map_area(by_name("x86_64"), calls, hint=0x7000_0000).start
    assert start == 0x7000_0000
    assert calls.calls == [
        ("mmap", (0x7000_0000, layout.AREA_SIZE, PROT_READ | PROT_EXEC, 0x22 | MAP_FIXED_NOREPLACE, -1, 0)),
        ("mprotect", (start + layout.CODE_SIZE, layout.DATA_SIZE, PROT_READ | PROT_WRITE)),
    ]


def test_map_area_takes_any_address_when_the_hint_is_not_honoured() -> None:
    calls = FakeCalls(FakeMemory(), "x86_64")
    calls.results["mmap"] = [0x6000_0000, 0x5000_0000]  # a kernel that took NOREPLACE as a hint
    assert map_area(by_name("x86_64"), calls, hint=0x7000_0000).start == 0x5000_0000
    assert [name for name, _ in calls.calls] == ["mmap", "munmap", "mmap", "mprotect"]


@pytest.mark.parametrize("failing, message", [("mmap", "mmap.*Cannot allocate"), ("mprotect", "mprotect.*Permission")])
def test_map_area_failures_are_one_line_errors(failing: str, message: str) -> None:
    calls = FakeCalls(FakeMemory(), "x86_64")
    calls.results[failing] = [-errno.ENOMEM if failing == "mmap" else -errno.EACCES]
    with pytest.raises(errors.UemuError, match=message):
        map_area(by_name("x86_64"), calls)
    if failing == "mprotect":
        assert calls.calls[-1][0] == "munmap", "nothing left behind"


def test_sites_one_write_each_and_indices_reused() -> None:
    net = installed()
    memory = net.memory
    net.add_site(0x1000, b"\x90\x90", b"\xcc", PROT_READ | PROT_EXEC)
    net.add_site(0x2000, b"\x90", b"\xcc", PROT_READ | PROT_EXEC)
    assert len(memory.writes) == 2
    (first, site), (second, _) = read_table(BASE, memory).sites
    assert (first, second) == (0, 1)
    assert (site.addr, site.len, site.state, site.prot) == (0x1000, 1, SiteState.ARMED, PROT_READ | PROT_EXEC)
    assert site.orig[:1] == b"\x90" and site.trap[:1] == b"\xcc"
    net.remove_site(0x1000)
    assert memory.writes[-1][1] == b"\0", "one byte: the state"
    net.add_site(0x3000, b"\x90", b"\xcc", PROT_READ | PROT_EXEC)
    assert [(i, s.addr) for i, s in read_table(BASE, memory).sites] == [(0, 0x3000), (1, 0x2000)]
    net.remove_site(0x9999)  # never added: nothing to do
    assert len(memory.writes) == 4


def test_a_full_table_is_a_one_line_error() -> None:
    net = net_for()
    for i in range(SMALL.sites):
        net.add_site(0x1000 + i, b"\x90", b"\xcc", 5)
    with pytest.raises(errors.UemuError, match="table is full: 4 sites"):
        net.add_site(0x9000, b"\x90", b"\xcc", 5)


def test_counters_count_raises_and_free_their_entry_at_zero() -> None:
    net = installed()
    net.raise_counter(0x600000)
    net.raise_counter(0x600000)
    assert [(c.addr, c.raised) for _, c in read_table(BASE, net.memory).counters] == [(0x600000, 2)]
    assert net.memory.writes[-1][1] == (2).to_bytes(4, "little"), "the count alone"
    net.lower_counter(0x600000)
    net.lower_counter(0x600000)
    net.lower_counter(0x600000)  # never below what was raised
    assert read_table(BASE, net.memory).counters == []
    net.raise_counter(0x600002)
    assert [(i, c.addr) for i, c in read_table(BASE, net.memory).counters] == [(0, 0x600002)]


def test_slot_and_thread_records() -> None:
    net = installed()
    net.set_slot(0x10000, trap_addr=0x10004, site=0x400100, insn_len=4, flags=SlotFlags.FIX_IP,
                 scratch=("rsi", 0x77))
    net.set_slot(0x10040, trap_addr=0x10045, site=0x400200, insn_len=5, flags=SlotFlags.FIX_CALL)
    net.set_thread(99, ThreadFlags.STEP, step_slot=0x10040)
    net.set_thread(98, ThreadFlags.SWALLOW, swallow_ip=0x400101, swallow_sp=0x7FF0)
    view = read_table(BASE, net.memory)
    (_, first), (_, second) = view.slots
    assert first.flags == SlotFlags.VALID | SlotFlags.FIX_IP | SlotFlags.SCRATCH
    assert (first.scratch_off, first.scratch_value, first.word) == (net.arch.ucontext_regs["rsi"], 0x77, 8)
    assert second.flags == SlotFlags.VALID | SlotFlags.FIX_CALL
    assert [(t.tid, t.flags, t.step_slot) for _, t in view.threads] == [(99, ThreadFlags.STEP, 1),
                                                                       (98, ThreadFlags.SWALLOW, 0)]
    net.clear_slot(0x10000)
    net.clear_thread(99)
    view = read_table(BASE, net.memory)
    assert [s.slot for _, s in view.slots] == [0x10040]
    assert [t.tid for _, t in view.threads] == [98]


@pytest.mark.parametrize("arch", ARCHES)
def test_inject_record_holds_every_register_a_signal_frame_has(arch: str) -> None:
    net = installed(arch)
    regs = {name: i + 1 for i, name in enumerate(net.arch.regset) if name}
    net.begin_inject(1234, regs)
    assert len(net.memory.writes) == 1
    view = read_table(net.base, net.memory)
    assert (view.inject.state, view.inject.tid) == (1, 1234)
    offsets = {reg.offset: reg.value for reg in view.inject_regs}
    assert offsets == {net.arch.ucontext_regs[name]: value for name, value in regs.items()
                       if name in net.arch.ucontext_regs}
    assert len(offsets) >= len(net.arch.syscall_regs) + 1
    net.end_inject()
    assert read_table(net.base, net.memory).inject.state == 0


def test_state_and_action_back() -> None:
    net = installed()
    net.set_state(TableState.DETACHED)
    assert read_table(BASE, net.memory).header.state == TableState.DETACHED
    assert not net.action_back()
    net.memory.write(net.table + layout.TABLE_HEADER.offset("action_back"), b"\1")
    assert net.action_back()


def test_adopt_takes_over_a_copied_table() -> None:
    """A forked child's table: entries in use stay, the free ones are reused first."""
    net = installed()
    for addr in (0x1000, 0x2000, 0x3000):
        net.add_site(addr, b"\x90", b"\xcc", 5)
    net.remove_site(0x2000)
    net.raise_counter(0x600000)
    net.set_slot(0x10000, 0x10004, 0x400100, 4, SlotFlags.FIX_IP)
    child = Net.adopt(net.arch, BASE, net.memory)
    child.add_site(0x4000, b"\x90", b"\xcc", 5)
    assert [(i, s.addr) for i, s in read_table(BASE, net.memory).sites] == [(0, 0x1000), (1, 0x4000), (2, 0x3000)]
    child.lower_counter(0x600000)
    assert read_table(BASE, net.memory).counters == []
    child.clear_slot(0x10000)
    assert read_table(BASE, net.memory).slots == []


def test_read_table_refuses_what_is_not_a_table() -> None:
    with pytest.raises(errors.UemuError, match="no uemu table"):
        read_table(BASE, FakeMemory())


def test_capacities_must_fit_the_data_part() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        Capacities(sites=1 << 20).offsets()
    offsets = layout.DEFAULT_CAPACITIES.offsets()
    assert all(offset % layout.PAGE == 0 for offset in offsets.values()), "each array on its own pages"
