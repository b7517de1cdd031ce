"""The committed runtime blobs' SIGTRAP handler, run in unicorn for x86_64, i386, aarch64
and riscv64, its system calls carried out by a fake kernel (runtime_harness.py): every
rule that decides whether a trap is uemu's (R1-R6), restoring, chaining to the program's
action, and the ways memory can refuse."""

from __future__ import annotations

import pytest
from runtime_harness import (
    DATA,
    PROGRAM_HANDLER,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    SI_KERNEL,
    SI_TKILL,
    SI_USER,
    SIGTRAP,
    STACK,
    STACK_SIZE,
    TEXT,
    TRAP_TRACE,
    UNMAPPED,
    Machine,
    uapi_available,
)

from uemu.net import SA_RESETHAND, SA_SIGINFO, read_table
from uemu.runtime import has_blob
from uemu.runtime.layout import SlotFlags, TableState, ThreadFlags

ARCHES = ("x86_64", "i386", "aarch64", "riscv64")
SIG_IGN = 1
TRACER = 777


@pytest.fixture(params=ARCHES)
def machine(request: pytest.FixtureRequest) -> Machine:
    if not has_blob(request.param):
        pytest.skip(f"no blob for {request.param}")
    if not uapi_available(request.param):
        pytest.skip("no kernel uapi headers (linux-libc-dev) for the syscall numbers")
    return Machine(request.param)


def armed(m: Machine, handler: int = PROGRAM_HANDLER, flags: int = SA_SIGINFO) -> Machine:
    """Armed by a uemu now gone: the thread has no tracer (a trap of uemu's reaches the
    handler only then)."""
    m.install(m.action(handler, flags), tracer_pid=TRACER)
    m.kernel.tracer_pid = 0
    return m


def trap_at(m: Machine, address: int, **kwargs: object):
    return m.deliver(m.trap_ip(address), m.arch.trap_si_code, **kwargs)


def ip(m: Machine, delivery) -> int:
    return delivery.regs[m.arch.ip_reg]


def state(m: Machine) -> TableState:
    return TableState(read_table(m.base, m.memory).header.state)


def raise_semaphore(m: Machine) -> None:
    """The semaphore at DATA, raised by uemu from 0 (table first, as uemu does)."""
    m.net.raise_counter(DATA)
    m.set_u16(DATA, 1)


def assert_restored(m: Machine, site: int, orig: bytes) -> None:
    """A trap at ``site`` returned there, with its bytes and the semaphore back."""
    delivery = trap_at(m, site)
    assert ip(m, delivery) == site
    assert m.memory.read(site, len(orig)) == orig
    assert m.u16(DATA) == 0


# ----- R1: a breakpoint of uemu's ----------------------------------------------------

def test_breakpoint_restores_everything_and_returns_to_the_site(machine: Machine) -> None:
    m = armed(machine)
    sites = [TEXT + 0x100, TEXT + 0x200]
    originals = [m.arm(site) for site in sites]
    raise_semaphore(m)
    delivery = trap_at(m, sites[1])
    assert ip(m, delivery) == sites[1]
    assert [m.memory.read(site, len(orig)) for site, orig in zip(sites, originals, strict=True)] == originals
    assert m.u16(DATA) == 0
    assert m.handler_of(m.current_action) == PROGRAM_HANDLER, "the program's action is back"
    assert m.kernel.slept_ms == [5], "after the restore delay"
    assert state(m) == TableState.DETACHED
    assert m.net.action_back()
    assert delivery.program_calls == [], "our trap never reaches the program"
    assert m.kernel.open_fds == set(), "/proc/self/mem closed again"


def test_a_later_thread_finds_it_done(machine: Machine) -> None:
    """Idempotence: a thread that trapped before the restore and arrives after it."""
    m = armed(machine)
    first, second = TEXT + 0x100, TEXT + 0x140
    m.arm(first)
    m.arm(second)
    trap_at(m, first)
    m.kernel.actions[SIGTRAP] = m.net.our_action(m.action(PROGRAM_HANDLER, SA_SIGINFO))  # still ours for it
    m.kernel.calls.clear()
    writes = len(m.writes)
    delivery = trap_at(m, second, tid=4343)
    assert ip(m, delivery) == second
    assert len(m.writes) == writes, "nothing written twice"
    assert {name for name, _ in m.kernel.calls} <= {"gettid", "getpid", "openat", "read", "close"}, \
        "no restore, no sleep, no action change: a look at its TracerPid alone"


def test_waits_for_a_thread_restoring_then_finds_it_done(machine: Machine) -> None:
    m = armed(machine)
    site = TEXT + 0x100
    m.arm(site)
    lock_offset = m.net.table + 16
    m.kernel.live_tids.add(5555)
    m.memory.write(lock_offset, (5555).to_bytes(4, "little"))  # another thread restores now
    yields = []

    def other_thread_finishes() -> None:
        yields.append(1)
        if len(yields) == 3:
            m.net.set_state(TableState.RESTORED)
            m.memory.write(lock_offset, bytes(4))

    m.kernel.on_yield.append(other_thread_finishes)
    delivery = trap_at(m, site)
    assert len(yields) == 3
    assert ip(m, delivery) == site
    assert m.memory.read(site, 1) == m.trap[:1], "the other thread's work, not ours"
    assert m.kernel.slept_ms == []


def test_a_lock_held_by_a_thread_that_is_gone_is_taken_over(machine: Machine) -> None:
    """A fork copied the table while its lock was held: the holder is no thread of the child."""
    m = armed(machine)
    site = TEXT + 0x100
    orig = m.arm(site)
    m.memory.write(m.net.table + 16, (9999).to_bytes(4, "little"))
    m.net.set_state(TableState.RESTORING)
    trap_at(m, site)
    assert m.memory.read(site, len(orig)) == orig
    assert state(m) == TableState.DETACHED


def test_counters_come_down_as_often_as_raised_and_never_below_zero(machine: Machine) -> None:
    m = armed(machine)
    site = TEXT + 0x100
    m.arm(site)
    cases = {DATA: (5, 2, 3), DATA + 2: (1, 3, 0), DATA + 4: (-5, 1, -5), DATA + 6: (0, 1, 0)}
    for address, (value, raised, _) in cases.items():
        m.set_u16(address, value)
        for _ in range(raised):
            m.net.raise_counter(address)
    m.set_u16(DATA + 8, 7)  # a neighbour uemu never raised
    trap_at(m, site)
    assert {address: m.u16(address) for address in cases} == {a: want for a, (_, _, want) in cases.items()}
    assert m.u16(DATA + 8) == 7


def test_a_site_rewritten_since_is_left_alone(machine: Machine) -> None:
    m = armed(machine)
    mine, rewritten = TEXT + 0x100, TEXT + 0x200
    orig = m.arm(mine)
    m.arm(rewritten)
    other = bytes(range(0x41, 0x41 + len(m.trap)))
    m.memory.write(rewritten, other)  # the program's own code (a JIT) or another tool
    trap_at(m, mine)
    assert m.memory.read(mine, len(orig)) == orig
    assert m.memory.read(rewritten, len(other)) == other


def test_a_page_that_is_gone_is_skipped(machine: Machine) -> None:
    m = armed(machine)
    site = TEXT + 0x100
    orig = m.arm(site)
    m.uc.mem_map(UNMAPPED, 0x1000)
    m.memory.write(UNMAPPED, m.trap)
    m.net.add_site(UNMAPPED, bytes(len(m.trap)), m.trap, PROT_READ | PROT_EXEC)
    m.net.raise_counter(UNMAPPED + 0x10)
    m.uc.mem_unmap(UNMAPPED, 0x1000)
    raise_semaphore(m)
    assert_restored(m, site, orig)


@pytest.mark.parametrize("proc_mem", ["absent", "never"])
def test_without_proc_self_mem_it_makes_the_page_writable_for_the_copy(machine: Machine, proc_mem: str) -> None:
    """No /proc, or proc_mem.force_override=never: mprotect, process_vm_writev, mprotect back."""
    m = armed(machine)
    m.kernel.proc_mem = proc_mem
    site = TEXT + 0x100
    orig = m.arm(site)
    raise_semaphore(m)
    assert_restored(m, site, orig)
    protections = [args[2] for name, args in m.kernel.calls if name == "mprotect"]
    assert protections == [PROT_READ | PROT_EXEC | PROT_WRITE, PROT_READ | PROT_EXEC]
    assert next(perms for start, _, perms in m.uc.mem_regions() if start == TEXT) == 1 | 4  # r-x again
    if m.arch.name == "riscv64":
        assert "riscv_flush_icache" in [name for name, _ in m.kernel.calls]


def test_under_memory_deny_write_execute_without_proc_the_site_stays(machine: Machine) -> None:
    m = armed(machine)
    m.kernel.proc_mem = "absent"
    m.kernel.mdwe = True
    site = TEXT + 0x100
    m.arm(site)
    raise_semaphore(m)
    trap_at(m, site)
    assert m.memory.read(site, len(m.trap)) == m.trap, "no way to write it: left, never a crash"
    assert m.u16(DATA) == 0, "data pages need no mprotect"


def test_x86_multi_byte_sites_go_back_int3_first() -> None:
    """A 5-byte jump over a nop5: int3 at byte 0, then bytes 1-4, then byte 0, so a thread
    running there meanwhile meets the old jump, an int3, or the original, never a mix."""
    m = armed(Machine("x86_64"))
    site = TEXT + 0x100
    nop5 = bytes.fromhex("0f1f440000")
    m.memory.write(site, nop5)
    jump = bytes.fromhex("e9fbff0f00")
    m.net.add_site(site, nop5, jump, PROT_READ | PROT_EXEC)
    m.memory.write(site, jump)
    other = TEXT + 0x200
    m.arm(other)
    trap_at(m, other)
    at_site = [(address, data) for address, data in m.writes if site <= address < site + 5]
    assert at_site == [(site, b"\xcc"), (site + 1, nop5[1:]), (site, nop5[:1])]
    assert m.memory.read(site, 5) == nop5


@pytest.mark.parametrize("name", ["x86_64", "i386"])
def test_x86_a_pun_goes_back_before_the_jump_over_its_evicted_successor(name: str) -> None:
    """An evicted successor: uemu lists (and writes) the jump over it first, then the pun
    whose displacement is that jump's first four bytes.  The pun must come off first: a
    thread meeting it between the two would leap to wherever the program's own bytes
    lead."""
    m = armed(Machine(name))
    site = TEXT + 0x100
    program = bytes.fromhex("90b8ffffff00")  # nop; mov $0xffffff,%eax
    m.memory.write(site, program)
    successor = bytes.fromhex("e9c00a0000")
    m.net.add_site(site + 1, program[1:], successor, PROT_READ | PROT_EXEC)
    m.memory.write(site + 1, successor)
    m.net.add_site(site, program[:1], b"\xe9", PROT_READ | PROT_EXEC)
    m.memory.write(site, b"\xe9")
    other = TEXT + 0x200
    m.arm(other)
    trap_at(m, other)
    at_site = [(address, data) for address, data in m.writes if site <= address < site + 6]
    assert at_site == [(site, b"\x90"), (site + 1, b"\xcc"), (site + 2, program[2:]), (site + 1, program[1:2])]
    assert m.memory.read(site, 6) == program


@pytest.mark.parametrize("name", ["x86_64", "i386"])
def test_x86_a_thread_resumed_inside_a_long_instruction_goes_back_to_the_site(name: str) -> None:
    """The kernel drops the SIGTRAP of a thread whose tracer dies while it is stopped at
    uemu's int3, and resumes it one byte in; over an instruction of two bytes or more
    uemu writes a second int3 there, which brings the thread back to the site."""
    m = armed(Machine(name))
    site = TEXT + 0x100
    nop5 = bytes.fromhex("0f1f440000")
    m.memory.write(site, nop5)
    trap = m.arch.backend.trap_bytes(nop5)
    assert trap == b"\xcc\xcc"
    m.net.add_site(site, nop5, trap, PROT_READ | PROT_EXEC)
    m.memory.write(site, trap)
    delivery = trap_at(m, site + 1)
    assert ip(m, delivery) == site
    assert m.memory.read(site, 5) == nop5
    assert delivery.program_calls == []


def test_x86_a_trap_one_byte_past_a_one_byte_site_is_not_ours() -> None:
    """After a 1-byte instruction the next byte is the next instruction: no second int3,
    and a trap there belongs to whoever put it there."""
    m = armed(Machine("x86_64"))
    site = TEXT + 0x100
    m.memory.write(site, b"\x55\xcc")  # push rbp; then the program's own int3
    m.net.add_site(site, b"\x55", b"\xcc", PROT_READ | PROT_EXEC)
    m.memory.write(site, b"\xcc")
    delivery = trap_at(m, site + 1)
    assert delivery.program_calls, "chained to the program's action"


# ----- R2, R4: a thread left in an XOL slot ------------------------------------------

def test_a_thread_reaching_the_slots_trap_goes_back_past_the_site(machine: Machine) -> None:
    m = armed(machine)
    site, slot, length = TEXT + 0x100, m.net.slots_area[0] + 0x40, 4
    m.arm(site)
    m.net.set_slot(slot, trap_addr=slot + length, site=site, insn_len=length, flags=SlotFlags.FIX_IP)
    delivery = trap_at(m, slot + length)
    assert ip(m, delivery) == site + length


def test_a_single_step_that_ended_on_the_slots_trap(machine: Machine) -> None:
    m = armed(machine)
    site, slot, length = TEXT + 0x100, m.net.slots_area[0] + 0x40, 4
    m.net.set_slot(slot, trap_addr=slot + length, site=site, insn_len=length, flags=SlotFlags.FIX_IP)
    delivery = m.deliver(slot + length, TRAP_TRACE)
    assert ip(m, delivery) == site + length


def test_call_fixup_and_borrowed_register(machine: Machine) -> None:
    """Kernel default_post_xol_op(): a call's return address past the slot becomes past the
    site; riprel_post_xol(): the borrowed scratch register gets its value back."""
    m = armed(machine)
    word = m.arch.word_size
    site, slot, length = TEXT + 0x100, m.net.slots_area[0] + 0x80, 5
    sp = STACK + STACK_SIZE - 4096
    m.memory.write(sp, (slot + length).to_bytes(word, "little"))
    scratch = next(name for name in m.arch.syscall_regs[1:] if name in m.arch.ucontext_regs)
    m.net.set_slot(slot, trap_addr=slot + length, site=site, insn_len=length,
                   flags=SlotFlags.FIX_IP | SlotFlags.FIX_CALL, scratch=(scratch, 0x1234))
    delivery = trap_at(m, slot + length, sp=sp, regs={scratch: 0xDEAD})
    assert m.read_word(sp) == site + length
    assert delivery.regs[scratch] == 0x1234
    assert ip(m, delivery) == site + length


def test_a_stepped_call_gets_its_return_address_fixed_wherever_it_went(machine: Machine) -> None:
    """R4 after an indirect call stepped in a slot: ip is the call's target, outside the
    slot; the return address it pushed (past the slot) becomes past the site."""
    m = armed(machine)
    word = m.arch.word_size
    site, slot, length = TEXT + 0x100, m.net.slots_area[0] + 0x100, 2
    sp = STACK + STACK_SIZE - 4096
    m.memory.write(sp, (slot + length).to_bytes(word, "little"))
    m.net.set_slot(slot, trap_addr=slot + length, site=site, insn_len=length, flags=SlotFlags.FIX_CALL)
    m.net.set_thread(4242, ThreadFlags.STEP, step_slot=slot)
    target = TEXT + 0x900
    delivery = m.deliver(target, TRAP_TRACE, sp=sp)
    assert ip(m, delivery) == target
    assert m.read_word(sp) == site + length


def test_a_step_in_flight_when_the_tracer_died(machine: Machine) -> None:
    """R4: STEP and a single-step trap: FIX_IP only when ip stayed within the slot; a taken
    branch leaves ip where it went."""
    m = armed(machine)
    site, slot, length = TEXT + 0x100, m.net.slots_area[0] + 0xC0, 2
    m.net.set_slot(slot, trap_addr=slot + length, site=site, insn_len=length, flags=SlotFlags.FIX_IP)
    m.net.set_thread(4242, ThreadFlags.STEP, step_slot=slot)
    assert ip(m, m.deliver(slot + 1, TRAP_TRACE)) == site + 1
    m.net.set_thread(4242, ThreadFlags.STEP, step_slot=slot)
    assert ip(m, m.deliver(TEXT + 0x800, TRAP_TRACE)) == TEXT + 0x800
    assert read_table(m.base, m.memory).threads == [], "the record is used up"


def test_nothing_is_ours_while_uemu_traces_the_thread(machine: Machine) -> None:
    """A record outlives its step: the program's own TRAP_TRACE (a trap flag it set
    itself), which uemu delivers to it, must reach the program's handler, and nothing be
    undone under a living uemu.  Differs: the kernel's handler is the authority itself."""
    m = armed(machine)
    site, slot, length = TEXT + 0x100, m.net.slots_area[0] + 0xC0, 2
    m.arm(site)
    m.net.set_slot(slot, trap_addr=slot + length, site=site, insn_len=length, flags=SlotFlags.FIX_IP)
    m.net.set_thread(4242, ThreadFlags.STEP, step_slot=slot)
    m.kernel.tracer_pid = TRACER
    delivery = m.deliver(TEXT + 0x800, TRAP_TRACE)
    assert ip(m, delivery) == TEXT + 0x800
    assert len(delivery.program_calls) == 1
    assert state(m) == TableState.ARMED and len(read_table(m.base, m.memory).threads) == 1


# ----- R3: a SIGTRAP the kernel delivers for a ptrace stop ---------------------------

def test_swallow_keeps_the_registers_uemu_set_and_wins_over_a_site(machine: Machine) -> None:
    """uemu emulated a 1-byte push at a site (ip just past it, sp lower) and died before
    resuming: the stop's SIGTRAP must not run the instruction again."""
    m = armed(machine)
    site = TEXT + 0x100
    m.arm(site)
    sp = STACK + STACK_SIZE - 2056
    new_ip = m.trap_ip(site)
    m.net.set_thread(4242, ThreadFlags.SWALLOW, swallow_ip=new_ip, swallow_sp=sp)
    delivery = trap_at(m, site, sp=sp)
    assert ip(m, delivery) == new_ip
    assert delivery.program_calls == []
    assert read_table(m.base, m.memory).threads == []


def test_swallow_needs_the_same_thread_ip_and_sp(machine: Machine) -> None:
    m = armed(machine)
    where = TEXT + 0x300
    m.net.set_thread(4242, ThreadFlags.SWALLOW, swallow_ip=where, swallow_sp=0x1000)
    m.net.set_thread(4343, ThreadFlags.SWALLOW, swallow_ip=where, swallow_sp=STACK + STACK_SIZE - 2048)
    delivery = m.deliver(where, m.arch.trap_si_code)
    assert len(delivery.program_calls) == 1, "not ours: the program's handler"


# ----- R5: an injected system call -------------------------------------------------

def test_an_injected_syscall_gives_back_the_threads_registers(machine: Machine) -> None:
    m = armed(machine)
    names = [name for name in m.arch.ucontext_regs if name not in (m.arch.ip_reg, m.arch.sp_reg)][:6]
    saved = {name: 0x1000 + i for i, name in enumerate(names)}
    saved[m.arch.ip_reg] = TEXT + 0x123
    m.net.begin_inject(4242, saved)
    delivery = m.deliver(m.trap_ip(m.net.inject_trap), m.arch.trap_si_code, regs={name: 0 for name in names})
    assert {name: delivery.regs[name] for name in saved} == saved
    assert read_table(m.base, m.memory).inject.state == 0


def test_an_injected_syscall_of_another_thread_is_not_ours(machine: Machine) -> None:
    m = armed(machine)
    m.net.begin_inject(4343, {m.arch.ip_reg: TEXT})
    delivery = m.deliver(m.trap_ip(m.net.inject_trap), m.arch.trap_si_code)
    assert len(delivery.program_calls) == 1


# ----- R6: uemu asks for the program's action back ---------------------------------

def test_uemu_leaving_asks_for_the_action_back(machine: Machine) -> None:
    m = armed(machine)
    site = TEXT + 0x100
    m.arm(site)
    m.memory.write(site, m.memory.read(TEXT, len(m.trap)))  # uemu restored it itself
    m.net.remove_site(site)
    m.net.set_state(TableState.DETACHED)
    delivery = m.deliver(TEXT + 0x500, SI_TKILL, pid=TRACER)
    assert delivery.program_calls == []
    assert m.handler_of(m.current_action) == PROGRAM_HANDLER
    assert m.net.action_back()
    assert [name for name, _ in m.kernel.calls] == ["rt_sigaction", "rt_sigaction"]


@pytest.mark.parametrize("pid, table_state", [(1234, TableState.DETACHED), (TRACER, TableState.ARMED)])
def test_a_sent_sigtrap_that_is_no_request_goes_to_the_program(machine: Machine, pid: int,
                                                               table_state: TableState) -> None:
    m = armed(machine)
    m.net.set_state(table_state)
    delivery = m.deliver(TEXT + 0x500, SI_USER, pid=pid)
    assert len(delivery.program_calls) == 1
    assert m.handler_of(m.current_action) != PROGRAM_HANDLER


# ----- not ours: chaining to the program's action ----------------------------------

def test_a_foreign_trap_reaches_the_programs_handler_with_its_arguments(machine: Machine) -> None:
    m = armed(machine)
    site = TEXT + 0x100
    m.arm(site)
    delivery = trap_at(m, TEXT + 0x600)  # the program's own int3/brk/ebreak
    (sig, info, uc), = delivery.program_calls
    assert sig == SIGTRAP and info and uc
    assert m.memory.read(site, len(m.trap)) == m.trap, "not ours: nothing restored"
    assert state(m) == TableState.ARMED


def test_resethand_is_carried_out_before_the_programs_handler(machine: Machine) -> None:
    m = armed(machine, flags=SA_SIGINFO | SA_RESETHAND)
    assert m.handler_of(m.current_action) == m.net.trap_handler
    delivery = m.deliver(TEXT + 0x600, SI_TKILL, pid=99)
    assert len(delivery.program_calls) == 1
    assert m.handler_of(m.current_action) == 0, "SIG_DFL, as the kernel would have left it"


@pytest.mark.parametrize("handler, code, dies", [
    (0, SI_KERNEL, True), (0, SI_TKILL, True),
    (SIG_IGN, SI_KERNEL, True),   # force_sig_info_to_task(): an ignored fault signal is reset
    (SIG_IGN, SI_TKILL, False),
])
def test_default_and_ignored_actions(machine: Machine, handler: int, code: int, dies: bool) -> None:
    m = armed(machine, handler=handler, flags=0)
    if code == SI_KERNEL:
        code = m.arch.trap_si_code
    delivery = m.deliver(TEXT + 0x600, code)
    assert delivery.program_calls == []
    if dies:
        assert m.handler_of(m.current_action) == 0
        assert m.kernel.tgkills == [(m.kernel.pid, m.kernel.tid, SIGTRAP)], "re-raised, to kill at sigreturn"
    else:
        assert m.kernel.tgkills == []
        assert m.handler_of(m.current_action) == m.net.trap_handler


def test_a_broken_table_behaves_as_no_handler(machine: Machine) -> None:
    m = armed(machine)
    m.memory.write(m.net.table, b"garbage!")
    m.deliver(TEXT + 0x600, m.arch.trap_si_code)
    assert m.handler_of(m.current_action) == 0
    assert m.kernel.tgkills == [(m.kernel.pid, m.kernel.tid, SIGTRAP)]
