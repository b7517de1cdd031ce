"""The jump path's hit in unicorn, for x86_64, i386, aarch64 and riscv64: a jumped site
runs its trampoline and the committed blob's hit_entry and comes back with every
register and flag as it was (and the x86-64 red zone untouched), leaving one record in
the ring that uemu.ring and uemu.fetch read back as the trap path would have: the
registers and memory the specs name, strings, the pid and thread, the clock.  Then what
must never block or harm the program: a full ring (wait, or drop and count), a hit
re-entered from a signal handler, a site removed under a waiting hit, recording off,
uemu gone."""

from __future__ import annotations

import random
import struct

import pytest
from jump_harness import PID, RING, SITE, TID, Jumped, JumpMachine, text_nop
from runtime_harness import DATA, STACK, STACK_SIZE, uapi_available
from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE

from uemu.net import read_table
from uemu.runtime import has_blob, layout
from uemu.runtime.layout import JumpsState, TableState

ARCHES = ("x86_64", "i386", "aarch64", "riscv64")
SP = STACK + STACK_SIZE - 4096
FUTEX_OWNER_DIED = 0x4000_0000  # include/uapi/linux/futex.h


def machine_for(arch: str, **kwargs: object) -> JumpMachine:
    if not has_blob(arch):
        pytest.skip(f"no blob for {arch}")
    if not uapi_available(arch):
        pytest.skip("no kernel uapi headers (linux-libc-dev) for the syscall numbers")
    return JumpMachine(arch, **kwargs)


@pytest.fixture(params=ARCHES)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


def nop_site(m: JumpMachine, args: str = "", at: int = SITE, target: int = 0x00B0_0000, **kwargs: object):
    """A site the way sys/sdt.h makes them: x86's 1-byte nop (punned: the next four bytes
    point the jump at a free page, ``target``), the 4-byte nop of the others."""
    code = text_nop(m.arch.name)
    if m.arch.name in ("x86_64", "i386"):
        code += (target - (at + 5)).to_bytes(4, "little", signed=True)
    return m.jump(at, code, args, **kwargs)


def test_a_hit_comes_back_with_every_register_and_flag(arch: str) -> None:
    m = machine_for(arch)
    jumped = nop_site(m)
    rng = random.Random(12)
    for _ in range(3):
        regs = m.random_registers(rng)
        kept = 128 if arch == "x86_64" else 0  # the red zone: the 128 bytes below rsp
        stack = bytes(rng.getrandbits(8) for _ in range(256))
        m.m.memory.write(SP - kept, stack)
        after = m.hit(jumped, regs, sp=SP)
        assert {name: after[name] for name in regs} == regs
        assert after["sp"] == SP
        assert m.m.memory.read(SP - kept, 256) == stack
    assert len(m.take()) == 3


def test_a_record_holds_pid_thread_clock_and_the_registers_named(arch: str) -> None:
    m = machine_for(arch)
    names = [name for name in m.registers if name not in ("eflags", "pstate")]
    sigil = "%" if arch in ("x86_64", "i386") else ""
    word = m.arch.word_size
    args = " ".join(f"{word}@{sigil}{name}" for name in names[:12]) + f" -{word}@{sigil}{m.arch.sp_reg}"
    jumped = nop_site(m, args)
    regs = m.random_registers(random.Random(5))
    m.hit(jumped, regs, sp=SP)
    [(record, values, strings)] = m.take()
    assert (record.id, record.pid, record.tid, record.ts_ns) == (1, PID, TID, m.kernel.clock_ns)
    mask = (1 << 8 * word) - 1
    sign = 1 << (8 * word - 1)
    assert values == [regs[name] for name in names[:12]] + [((SP & mask) ^ sign) - sign]
    assert strings == {}
    assert ("gettid", ()) in [(name, args_[:0]) for name, args_ in m.kernel.calls], "no thread pointer: gettid"


def test_memory_arguments_base_index_scale_and_the_stack(arch: str) -> None:
    m = machine_for(arch)
    data = bytes(range(256))
    m.m.memory.write(DATA, data)
    m.m.memory.write(SP + 24, struct.pack("<q", -77))
    base, index = {"x86_64": ("rbx", "rcx"), "i386": ("ebx", "ecx"), "aarch64": ("x3", "x4"),
                   "riscv64": ("s1", "a1")}[arch]
    if arch in ("x86_64", "i386"):
        args = f"4@8(%{base}) -2@-4(%{base},%{index},4) 8@24(%{m.arch.sp_reg}) 4@64(%{index}) 1@(%{index})"
    elif arch == "aarch64":
        args = f"4@[{base}, 8] -2@[{base}, {index}, lsl #2] 8@[sp, 24] 4@[{index}, 64] 1@[{index}]"
    else:
        args = f"4@8({base}) 4@16({base}) 8@24(sp) 4@64({index}) 1@0({index})"
    jumped = nop_site(m, args)
    regs = m.random_registers(random.Random(1))
    regs.update({base: DATA + 16, index: 3})  # index 3: (%index) points at page 0, unreadable
    m.hit(jumped, regs, sp=SP)
    [(_, values, _)] = m.take()
    at = {"x86_64": 16 - 4 + 12, "i386": 16 - 4 + 12, "aarch64": 16 + 12}.get(arch)
    second = struct.unpack("<h", data[at:at + 2])[0] if at else int.from_bytes(data[32:36], "little")
    assert values == [int.from_bytes(data[24:28], "little"), second, -77 & (1 << 64) - 1, None, None]
    memory_reads = [name for name, _ in m.kernel.calls if name == "process_vm_readv"]
    assert len(memory_reads) == 4, "every read but the stack's is fault-safe"


def test_strings_are_copied_at_the_hit(arch: str) -> None:
    m = machine_for(arch)
    m.m.memory.write(DATA, b"hello\0")
    m.m.memory.write(DATA + 0x1000 - 3, b"abc")  # runs into the unmapped page after DATA
    r = {"x86_64": "%rdi", "i386": "%edi", "aarch64": "x0", "riscv64": "a0"}[arch]
    r2 = {"x86_64": "%rsi", "i386": "%esi", "aarch64": "x1", "riscv64": "a1"}[arch]
    word = m.arch.word_size
    jumped = nop_site(m, f"{word}@{r} {word}@{r2}", strings=(0, 1), strsize=64)
    regs = m.random_registers(random.Random(2))
    plain = {"x86_64": ("rdi", "rsi"), "i386": ("edi", "esi"), "aarch64": ("x0", "x1"), "riscv64": ("a0", "a1")}[arch]
    regs.update({plain[0]: DATA, plain[1]: DATA + 0x1000 - 3})
    m.hit(jumped, regs, sp=SP)
    [(_, values, strings)] = m.take()
    assert values == [DATA, DATA + 0x1000 - 3]
    assert strings == {DATA: b"hello", DATA + 0x1000 - 3: b"abc"}


def test_a_counted_site_adds_to_its_counter_and_writes_no_record(arch: str) -> None:
    m = machine_for(arch)
    owner = m.ring.target_address + layout.RING_HEADER.offset("owner")
    m.m.memory.write(owner, (99).to_bytes(4, "little"))  # uemu's sentinel thread holds the ring
    counted = nop_site(m, counted=True)
    recorded = nop_site(m, at=SITE + 0x100, target=0x00B2_0000)  # beside it, a site that records
    regs = m.random_registers(random.Random(7))
    for _ in range(3):
        after = m.hit(counted, dict(regs), sp=SP)
        assert {n: after[n] for n in regs} == regs, "the registers come back"
    assert m.kernel.calls == [], "no clock, no thread, no system call"
    m.hit(recorded, sp=SP)
    assert m.counts() == (3,)
    assert [record.id for record, _, _ in m.take()] == [2], "only the recording site wrote"
    m.kernel.tracer_pid = 0  # uemu gone, said by the sentinel's futex word
    m.m.memory.write(owner, (FUTEX_OWNER_DIED | 99).to_bytes(4, "little"))
    m.hit(counted, sp=SP)
    assert m.counts() == (3,), "no count once uemu is known gone"
    assert read_table(m.m.base, m.m.memory).header.state == TableState.DETACHED


def test_a_full_ring_drops_and_counts_under_drop(arch: str) -> None:
    m = machine_for(arch, drop=True)
    word = m.arch.word_size
    jumped = nop_site(m, f"{word}@{'%' if arch in ('x86_64', 'i386') else ''}{m.arch.sp_reg}")
    fits = (m.ring.data_size) // jumped.program.record_size
    for _ in range(fits + 5):
        m.hit(jumped, sp=SP)
    records = m.take()
    assert len(records) + m.ring.lost == fits + 5 and m.ring.lost >= 5
    assert not [call for call in m.kernel.futexes if call[1] == 0], "never waits under --drop"
    m.hit(jumped, sp=SP)  # room again
    assert len(m.take()) == 1


def test_a_full_ring_waits_for_the_reader(arch: str) -> None:
    m = machine_for(arch)
    jumped = nop_site(m)
    fits = m.ring.data_size // jumped.program.record_size
    for _ in range(fits):
        m.hit(jumped, sp=SP)
    taken: list[object] = []
    m.kernel.on_futex_wait.append(lambda: taken.extend(m.take()))
    m.hit(jumped, sp=SP)
    assert len(taken) == fits, "the hit waited on the futex while the reader made room"
    assert len(m.take()) == 1 and m.ring.lost == 0


def test_a_reentered_hit_finding_the_ring_full_drops(arch: str) -> None:
    """A signal handler's hit while the interrupted hit holds its record: waiting would
    wait for itself."""
    m = machine_for(arch, thread_pointer=True)
    tp = 0x7000_1000
    if not m.set_thread_pointer(tp):
        pytest.skip("the i386 thread pointer (a %gs descriptor) is not emulated here")
    m.table.thread_started(TID + 1, tp)
    jumped = nop_site(m)
    fits = m.ring.data_size // jumped.program.record_size
    regs = {"tp": tp} if arch == "riscv64" else {}
    for _ in range(fits):
        m.hit(jumped, dict(regs), sp=SP)
    assert {record.tid for record, _, _ in m.take()} == {TID + 1}, "the thread named by its pointer"
    assert "gettid" not in [name for name, _ in m.kernel.calls]
    for _ in range(fits):
        m.hit(jumped, dict(regs), sp=SP)
    slots = m.table._array["tp_slots"]
    slot = m.table._tp_slot[tp]
    m.m.memory.write(slots + slot * layout.TP_SLOT.size + 12, (1).to_bytes(4, "little"))  # depth: inside a hit
    m.hit(jumped, dict(regs), sp=SP)
    assert not [call for call in m.kernel.futexes if call[1] == 0]
    assert len(m.take()) == fits and m.ring.lost == 1


def test_recording_off_and_uemu_gone(arch: str) -> None:
    m = machine_for(arch)
    jumped = nop_site(m)
    m.table.set_state(JumpsState.OFF)
    m.hit(jumped, sp=SP)
    assert m.take() == []
    m.table.set_state(JumpsState.ON)
    m.kernel.tracer_pid = 0  # uemu died: no tracer any more
    m.hit(jumped, sp=SP)
    assert m.take() != [], "uemu's reader looked lately: no check yet"
    stale = (m.kernel.clock_ns >> 20) - 5000
    header = layout.RING_HEADER
    m.m.memory.write(m.ring.target_address + header.offset("heartbeat"), stale.to_bytes(4, "little"))
    m.m.memory.write(m.ring.target_address + header.offset("checked"), stale.to_bytes(4, "little"))
    m.hit(jumped, sp=SP)
    assert m.take() == [], "no record once uemu is known gone"
    table = read_table(m.m.base, m.m.memory)
    assert table.header.state == TableState.DETACHED
    assert m.m.memory.read(jumped.site.at, 1) == text_nop(arch)[:1], "the net put the program's bytes back"


def test_a_site_taken_away_while_its_hit_waited_is_dropped(arch: str) -> None:
    m = machine_for(arch)
    jumped = nop_site(m, f"{m.arch.word_size}@{'%' if arch in ('x86_64', 'i386') else ''}{m.arch.sp_reg}")
    fits = m.ring.data_size // jumped.program.record_size
    for _ in range(fits):
        m.hit(jumped, sp=SP)

    def remove_and_make_room() -> None:
        m.table.remove_site(jumped.index)
        m.take()

    m.kernel.on_futex_wait.append(remove_and_make_room)
    m.hit(jumped, sp=SP)
    assert m.take() == [] and m.ring.lost == 1


def test_records_wrap_around_the_end_of_the_ring(arch: str) -> None:
    m = machine_for(arch)
    sp = f"{m.arch.word_size}@{'%' if arch in ('x86_64', 'i386') else ''}{m.arch.sp_reg}"
    jumped = nop_site(m, f"{sp} {sp} {sp}")
    assert m.ring.data_size % jumped.program.record_size, "a size that leaves a pad at the end"
    for _ in range(5):
        batch = (m.ring.data_size // jumped.program.record_size) - 1
        for _ in range(batch):
            m.hit(jumped, sp=SP)
        records = m.take()
        assert len(records) == batch and all(values == [SP] * 3 for _, values, _ in records)
    assert m.ring.lost == 0


def test_a_hit_whose_head_went_stale_while_it_was_preempted_is_not_lost(arch: str) -> None:
    """Thread A reads ``head`` and is preempted before it reserves; thread B reserves
    there, finishes, and uemu takes B's record and moves ``tail``.  A's compare-and-swap
    of the stale head then fails and A reserves after B's record, where the reader looks
    (v4 of the ring lost such a hit, 1 run in 20 of a threads sample under load)."""
    m = machine_for(arch)
    jumped = nop_site(m)
    head = RING + layout.RING_HEADER.offset("head")
    reads: list[int] = []

    hook = m.uc.hook_add(UC_HOOK_MEM_READ, lambda uc, access, address, *_: reads.append(address),
                         begin=head, end=head + 3)
    m.uc.reg_write(m.cpu.sp, SP)
    m.uc.reg_write(m.cpu.ip, jumped.site.vaddr)
    while not reads:  # one instruction at a time: unicorn's pc is exact between them
        m.uc.emu_start(m.uc.reg_read(m.cpu.ip), jumped.site.resume, count=1)
    m.uc.hook_del(hook)
    assert m.ring_header().head == 0, "A read head and has not reserved yet"
    thread_a = m.uc.context_save()
    m.hit(jumped, sp=SP - STACK_SIZE // 2)  # B, on its own stack
    assert len(m.take()) == 1
    m.uc.context_restore(thread_a)
    m.uc.emu_start(m.uc.reg_read(m.cpu.ip), jumped.site.resume)
    assert m.uc.reg_read(m.cpu.ip) == jumped.site.resume
    [(record, _, _)] = m.take()
    assert record.offset == m.ring.data + jumped.program.record_size, "A's record is after B's"
    assert m.ring.lost == 0


def test_the_reader_writes_nothing_in_the_data_or_the_stamps(arch: str) -> None:
    """Producers write the records and their stamps; uemu's reader only reads them and
    moves ``tail``: no cache line a producer writes next is written by another CPU.
    Laps of a ring whose records leave a different pad at each end: stamps of an earlier
    lap never read as fresh (the data keeps what earlier laps wrote)."""
    m = machine_for(arch)
    sp = f"{m.arch.word_size}@{'%' if arch in ('x86_64', 'i386') else ''}{m.arch.sp_reg}"
    short, long = nop_site(m, sp), nop_site(m, f"{sp} {sp} {sp} {sp}", at=SITE + 0x40, target=0x00C0_0000)
    taken = 0
    for lap in range(7):
        jumped = (short, long)[lap % 2]
        batch = m.ring.data_size // jumped.program.record_size // 2
        for _ in range(batch):
            m.hit(jumped, sp=SP)
        before = bytes(m._refresh())
        records = m.take()
        assert len(records) == batch and all(values == [SP] * len(values) for _, values, _ in records)
        after = bytes(m._refresh())
        changed = [at for at in range(0, len(after), 4) if after[at:at + 4] != before[at:at + 4]]
        tail = layout.RING_HEADER.offset("tail")
        assert {at for at in changed} <= {tail, tail + 4, layout.RING_HEADER.offset("heartbeat")}
        taken += len(records)
    assert m.ring.tail > 3 * m.ring.data_size, "laps"
    assert m.ring.lost == 0


@pytest.mark.parametrize("where", ["reserved", "busy"])
def test_a_record_a_thread_never_finishes_is_skipped_and_counted_at_the_last_read(arch: str, where: str) -> None:
    """Thread A stops for good inside its hit, right after its compare-and-swap of
    ``head`` (``reserved``: not even its busy stamp written) or once it said busy; B's
    record comes after it.  Reads while uemu traces wait at A's record (in order); the
    last read skips it, counts it, and still hands out B's."""
    m = machine_for(arch)
    jumped = nop_site(m)
    head = RING + layout.RING_HEADER.offset("head")
    stamps = RING + m.ring.data + m.ring.data_size
    watched = (head, head + 3) if where == "reserved" else (stamps, stamps + m.ring.data_size // 4 - 1)
    writes: list[int] = []

    hook = m.uc.hook_add(UC_HOOK_MEM_WRITE, lambda uc, access, address, *_: writes.append(address),
                         begin=watched[0], end=watched[1])
    m.uc.reg_write(m.cpu.sp, SP)
    m.uc.reg_write(m.cpu.ip, jumped.site.vaddr)
    while not writes:
        m.uc.emu_start(m.uc.reg_read(m.cpu.ip), jumped.site.resume, count=1)
    m.uc.hook_del(hook)
    m.hit(jumped, sp=SP - STACK_SIZE // 2)  # B
    assert m.take() == [], "B's record waits behind A's"
    [(record, _, _)] = m.take(final=True)
    assert record.offset == m.ring.data + jumped.program.record_size and m.ring.unfinished == 1


@pytest.mark.parametrize("shape", ["nop5", "nop;nop10"])
def test_x86_a_whole_jump_over_a_long_nop(shape: str) -> None:
    for arch in ("x86_64", "i386"):
        m = machine_for(arch)
        code = bytes.fromhex("0f1f440000") if shape == "nop5" else b"\x90" + bytes.fromhex("662e0f1f840000000000")
        jumped = m.jump(SITE, code, "4@%eax")
        assert jumped.site.form.value == "jump" and jumped.site.length == 5
        assert jumped.site.at == (SITE if shape == "nop5" else SITE + 1)
        assert jumped.site.resume == SITE + len(code)
        assert m.m.memory.read(jumped.site.at, 1) == b"\xe9"
        regs = m.random_registers(random.Random(3))
        after = m.hit(jumped, regs, sp=SP)
        assert {name: after[name] for name in regs} == regs
        [(_, values, _)] = m.take()
        assert values == [regs["rax" if arch == "x86_64" else "eax"] & 0xFFFFFFFF]


DISPLACED = {
    # (instruction bytes, the registers it changes from the given ones)
    "x86_64": (bytes.fromhex("4881c3e8030000"), lambda r: {"rbx": (r["rbx"] + 1000) & (1 << 64) - 1}),  # add $1000,%rbx
    "i386": (bytes.fromhex("81c3e8030000"), lambda r: {"ebx": (r["ebx"] + 1000) & (1 << 32) - 1}),  # add $1000,%ebx
    "aarch64": ((0x91000421).to_bytes(4, "little"), lambda r: {"x1": (r["x1"] + 1) & (1 << 64) - 1}),  # add x1,x1,#1
    "riscv64": ((0x00158593).to_bytes(4, "little"), lambda r: {"a1": (r["a1"] + 1) & (1 << 64) - 1}),  # addi a1,a1,1
}


def test_a_displaced_instruction_runs_after_the_hit(arch: str) -> None:
    """A jump over a real instruction: the trampoline records the hit with the registers
    before it, then runs it (the backend's one-stop slot code) and jumps back."""
    m = machine_for(arch)
    code, effect = DISPLACED[arch]
    name = next(iter(effect({n: 0 for n in m.registers})))
    sigil = "%" if arch in ("x86_64", "i386") else ""
    jumped = m.jump(SITE, code, f"{m.arch.word_size}@{sigil}{name}")
    assert jumped.site.displaced is not None
    regs = m.random_registers(random.Random(8))
    if "eflags" in regs:
        regs["eflags"] = 0x202
    after = m.run(SITE, SITE + len(code), regs, sp=SP)
    want = {**regs, **effect(regs)}
    if "eflags" in want:
        del want["eflags"], after["eflags"]  # add sets them
    assert {n: after[n] for n in want} == want
    [(_, values, _)] = m.take()
    assert values == [regs[name]], "recorded before the instruction ran"


def test_a_thread_pointer_several_threads_share_asks_gettid() -> None:
    m = machine_for("aarch64", thread_pointer=True)
    tp = 0x7000_2000
    m.set_thread_pointer(tp)
    m.table.thread_started(TID + 1, tp)
    m.table.thread_started(TID + 2, tp)  # a raw clone without CLONE_SETTLS
    jumped = nop_site(m)
    m.hit(jumped, sp=SP)
    [(record, _, _)] = m.take()
    assert record.tid == TID and "gettid" in [name for name, _ in m.kernel.calls]
    m.table.thread_exited(TID + 2)
    m.table.thread_exited(TID + 1)
    m.table.thread_started(TID + 3, tp)  # the pointer reused by a new thread
    m.kernel.calls.clear()
    m.hit(jumped, sp=SP)
    [(record, _, _)] = m.take()
    assert record.tid == TID + 3 and "gettid" not in [name for name, _ in m.kernel.calls]


# ---- the clock through the CPU's counter (x86's TSC) ----------------------------------------

COUNTS_PER_NS = 3
"""The counter of these tests runs at 3 GHz."""


X86 = pytest.mark.parametrize("x86", ["x86_64", "i386"])


def counter_machine(x86: str, **kwargs: object) -> JumpMachine:
    """Reading the counter, as uemu sets it up where the kernel keeps time by the TSC, with
    uemu's sentinel holding the ring (the counter is read only then)."""
    m = machine_for(x86, counter=True, **kwargs)
    owner = m.ring.target_address + layout.RING_HEADER.offset("owner")
    m.m.memory.write(owner, (99).to_bytes(4, "little"))
    return m


def clock_pair(m: JumpMachine) -> layout.ClockPair:
    """The clock pair hits read now (the copy the latch names)."""
    seq = int.from_bytes(m.m.memory.read(m.table.address + layout.JUMPS_HEADER.offset("clock_seq"), 4), "little")
    at = m.table.address + layout.JUMPS_HEADER.offset("clock_pairs") + (seq & 1) * layout.CLOCK_PAIR.size
    return layout.CLOCK_PAIR.decode(m.m.memory.read(at, layout.CLOCK_PAIR.size))


def clock_reads(m: JumpMachine) -> int:
    return sum(1 for name, _ in m.kernel.calls if name == "clock_gettime")


def hit_after(m: JumpMachine, jumped, ns: int, rate: float = 1.0) -> int:
    """The time recorded for a hit ``ns`` of the counter's time after the last one, while
    the clock runs ``rate`` times as fast as the counter."""
    m.counter += ns * COUNTS_PER_NS
    m.kernel.clock_ns += round(ns * rate)
    m.hit(jumped, sp=SP)
    [(record, _, _)] = m.take()
    return record.ts_ns


def with_a_line(x86: str) -> tuple[JumpMachine, Jumped]:
    """A jumped site in a process whose hits have a line already: a pair, and a second
    one an interval later that measured the rate (the fake clock and counter keep one)."""
    m = counter_machine(x86)
    jumped = nop_site(m)
    m.counter = 10**12
    hit_after(m, jumped, 0)
    hit_after(m, jumped, 1_000_000)
    return m, jumped


@X86
def test_x86_a_records_time_is_read_through_the_counter_between_pairs_taken_from_the_clock(x86: str) -> None:
    """The first hit takes a pair (counter, clock: the clock read twice, the closest
    kept); hits in the first interval (1 ms) take the clock; then one measures the rate
    with a new pair, and hits read the counter alone and land on the clock's own time,
    until one finds the pair an interval old and takes a new one."""
    m = counter_machine(x86)
    jumped = nop_site(m)
    m.counter = 10**12
    assert hit_after(m, jumped, 0) == m.kernel.clock_ns and clock_reads(m) == 2
    assert hit_after(m, jumped, 500_000) == m.kernel.clock_ns and clock_reads(m) == 3, "too young for a rate"
    assert hit_after(m, jumped, 600_000) == m.kernel.clock_ns and clock_reads(m) == 6, "the rate measured"
    for _ in range(80):  # 800 us
        assert abs(hit_after(m, jumped, 10_000) - m.kernel.clock_ns) <= 1
    assert clock_reads(m) == 6, "between pairs, no clock at all"
    assert abs(hit_after(m, jumped, 300_000) - m.kernel.clock_ns) <= 1
    assert clock_reads(m) == 8, "a new pair, an interval after the last"


@X86
def test_x86_times_through_the_counter_never_step_back_and_follow_the_clocks_rate(x86: str) -> None:
    """The clock's rate changes against the counter's (NTP slewing it by 500 ppm, then
    back): every time stays ahead of the one before, and within the change of rate over
    an interval or two of the clock."""
    m = counter_machine(x86)
    jumped = nop_site(m)
    m.counter = 5 * 10**11
    hit_after(m, jumped, 0)
    hit_after(m, jumped, 1_000_000)
    last, worst = 0, 0
    for rate in (1.0005, 1.0, 0.9995):
        for _ in range(500):  # 5 ms at each rate, a hit every 10 us
            ts = hit_after(m, jumped, 10_000, rate)
            assert ts > last
            last, worst = ts, max(worst, abs(ts - m.kernel.clock_ns))
    assert worst <= 1_000, worst


@X86
def test_x86_after_a_long_pause_the_time_starts_again_from_the_clock(x86: str) -> None:
    m, jumped = with_a_line(x86)
    reads = clock_reads(m)
    assert hit_after(m, jumped, 3_000_000_000, rate=1.001) == m.kernel.clock_ns
    assert clock_reads(m) == reads + 2


@X86
def test_x86_the_counter_is_not_read_without_uemus_sentinel_nor_after_it_faulted(x86: str) -> None:
    """No sentinel (its death could not be told at once): a fault of the counter's read
    would find no tracer, so the clock alone.  A read that gives 0 (uemu zeroed it after
    a fault) takes the clock too; so does every hit once uemu set SYSCALL_CLOCK, which
    also keeps hits from calling the vDSO (here an address that would fault)."""
    m = machine_for(x86, counter=True)
    jumped = nop_site(m)
    m.counter = 10**12
    for step in (0, 200_000, 10_000):
        assert hit_after(m, jumped, step) == m.kernel.clock_ns
    assert m.counter_reads == 0 and clock_reads(m) == 3

    m = counter_machine(x86)
    jumped = nop_site(m)
    assert hit_after(m, jumped, 0) == m.kernel.clock_ns and m.counter_reads == 1, "a read of 0: the clock"
    assert clock_reads(m) == 1

    m = counter_machine(x86, syscall_clock=True, clock=0xDEAD_0000)
    jumped = nop_site(m)
    m.counter = 10**12
    assert hit_after(m, jumped, 0) == m.kernel.clock_ns and clock_reads(m) == 2, "the system call, not the vDSO"


@X86
def test_x86_a_hit_never_waits_for_one_taking_a_pair(x86: str) -> None:
    """Another hit holds the clock's lock, stopped in the middle of writing a pair (parked
    by uemu, or preempted: the latch odd, the copy it writes half done): a hit past the
    interval reads the other copy's line beyond it, without the clock, and lands on the
    clock's time all the same (the fake clock and counter keep one rate)."""
    m, jumped = with_a_line(x86)
    reads = clock_reads(m)
    header = m.table.address
    seq = int.from_bytes(m.m.memory.read(header + layout.JUMPS_HEADER.offset("clock_seq"), 4), "little")
    assert seq % 2 == 0 and seq > 0
    m.m.memory.write(header + layout.JUMPS_HEADER.offset("clock_lock"), (1).to_bytes(4, "little"))
    m.m.memory.write(header + layout.JUMPS_HEADER.offset("clock_seq"), (seq + 1).to_bytes(4, "little"))
    m.m.memory.write(header + layout.JUMPS_HEADER.offset("clock_pairs"), bytes([0x5A]) * 16)  # copy 0, half written
    for _ in range(5):
        assert abs(hit_after(m, jumped, 2_000_000) - m.kernel.clock_ns) <= 1
    assert clock_reads(m) == reads


@X86
def test_x86_a_lock_left_held_in_a_forked_childs_copy_is_cleared_at_fork(x86: str) -> None:
    """The lock held and no pair yet (a thread of the parent was taking the first pair
    when the process forked: the child's copy): hits take the clock, having read the
    counter first (a thread that turned it off must fault there, where uemu takes the
    fault back, not in the vDSO).  uemu clears the child's copy (``forget_clock``), and
    the next hit takes a pair of its own."""
    m = counter_machine(x86)
    jumped = nop_site(m)
    m.counter = 10**12
    m.m.memory.write(m.table.address + layout.JUMPS_HEADER.offset("clock_lock"), (1).to_bytes(4, "little"))
    assert hit_after(m, jumped, 0) == m.kernel.clock_ns
    assert (m.counter_reads, clock_reads(m)) == (1, 1)
    m.table.forget_clock()
    assert hit_after(m, jumped, 10_000) == m.kernel.clock_ns
    assert (m.counter_reads, clock_reads(m)) == (7, 3), \
        "the hit's own, a pair (the counter twice around each of two clocks), its age"
    assert clock_pair(m).at == m.counter


@X86
def test_x86_a_pair_taken_across_a_preemption_is_not_kept(x86: str) -> None:
    """The counter read on both sides of the clock came out far apart (the thread was
    preempted between them): no pair is kept, the hit takes the clock's time, and the
    next hit, read in time, takes the pair."""
    m = counter_machine(x86)
    jumped = nop_site(m)
    m.counter, m.counter_step = 10**12, 3_000_000  # 1 ms between any two reads
    assert hit_after(m, jumped, 0) == m.kernel.clock_ns
    assert clock_pair(m).at == 0, "no pair kept"
    m.counter_step = 0
    assert hit_after(m, jumped, 10_000) == m.kernel.clock_ns
    assert clock_pair(m).at == m.counter


def test_x86_64_a_threads_records_keep_the_order_of_its_hits() -> None:
    """The thread's last record later than the clock says now (a line read through the
    counter may be ahead by its error): the next record is a nanosecond after it, not
    before.  The thread's slot holds the time of its last record.  (x86_64: unicorn here
    emulates no i386 thread pointer.)"""
    m = counter_machine("x86_64", thread_pointer=True)
    tp = 0x7000_2000
    assert m.set_thread_pointer(tp)
    m.table.thread_started(TID, tp)
    jumped = nop_site(m)
    m.counter = 10**12
    first = hit_after(m, jumped, 0)
    assert first == m.kernel.clock_ns
    slots = m.table.address + m.table.capacities.offsets()["tp_slots"]
    size = layout.TP_SLOT.size
    [address] = [slots + i * size for i in range(m.table.capacities.tp_slots)
                 if layout.TP_SLOT.decode(m.m.memory.read(slots + i * size, size)).tp == tp]
    assert layout.TP_SLOT.decode(m.m.memory.read(address, layout.TP_SLOT.size)).last_ns == first
    ahead = first + 5_000
    m.m.memory.write(address + layout.TP_SLOT.offset("last_ns"), ahead.to_bytes(8, "little"))
    assert hit_after(m, jumped, 1_000) == ahead + 1
    assert hit_after(m, jumped, 10_000) == m.kernel.clock_ns
