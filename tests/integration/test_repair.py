"""``uemu repair`` and the journal (issue 9 §1, "from the outside").

``kill -9`` of ``uemu attach``, then ``uemu repair PID`` before the program meets any
orphaned breakpoint (or while it is stopped by SIGSTOP, when it cannot): the program
must be as before uemu came, judged from outside: every executable mapping equal to
its file (/proc/PID/map_files), its semaphores 0 (its own ``sema`` lines), its SIGTRAP
disposition as before (/proc/PID/status, and samples/orphan's own report of its
action), no uemu area or anonymous code left, untraced, and going on.  Then the
listing, stale journals, a reused pid, and the journal's own safety: private modes,
nothing but addresses and bytes, no write through a symlink.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from residue import (
    UEMU_AREA,
    anonymous_code,
    counters_off,
    semaphores,
    text_differences,
    turns,
)
from test_jumps_session import skip_without_jumps
from test_net import Orphan, facts, untraced
from tracee import (
    SLOWDOWN,
    UEMU,
    Tracee,
    attach_cli,
    cpu_ticks,
    process_state,
    stop_cli,
    thread_states,
    tracer_pid,
    wait_until,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "soak"))
from sites import stepped

from uemu import journal, ptrace, sdt
from uemu.maps import read_maps
from uemu.net import read_table
from uemu.runtime.layout import TableState

NEVER_MS = "600000"
"""samples/survival's slow probe period in a test that must see no hit of it."""
RECORD = re.compile(r"(area|action|site|site-gone|counter|slot|xol|xol-gone|mapping|mapping-gone)"
                    r"( (0x[0-9a-f]+|[0-9a-f]+|-|\d+|x86_64|i386|aarch64|riscv64|step|trap|jump))*")


@pytest.fixture
def journals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A journal directory of this test alone (``uemu repair`` lists all of one)."""
    path = tmp_path / "journals"
    monkeypatch.setenv("UEMU_JOURNAL_DIR", str(path))
    return path


def survival(samples: Path, *args: str) -> Tracee:
    tracee = Tracee([samples / "survival", "2", *args])
    tracee.wait_sync("started")
    tracee.release()
    return tracee


def uemu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*UEMU, *args], capture_output=True, text=True, timeout=60 * SLOWDOWN,
                          check=False)


def slow_breakpoints(pid: int, program: Path) -> int:
    """uemu's breakpoints for survival:slow, placed as the kernel's uprobe_mmap places
    them: in every private, unwritable mapping of the program that covers the site's
    file offset (riscv64's text and RELRO mappings share a file page: two there,
    the semaphore raised once for each), and ld.so's rendezvous breakpoint."""
    [probe] = [p for p in sdt.open_elf(str(program)).probes if p.full_name == "survival:slow"]
    assert probe.file_offset is not None
    path = os.path.realpath(program)
    mapped = [v for v in read_maps(pid) if os.path.realpath(v.path) == path and v.private and not v.writable
              and v.covers_offset(probe.file_offset)]
    assert mapped, f"survival:slow's site is not mapped in {pid}"
    return len(mapped) + 1


def killed_uemu(pid: int, *probes: str, turning: Tracee | None = None) -> None:
    """``uemu attach PID PROBE...``, armed, then killed with SIGKILL (once ``turning``'s
    hot threads have made 50 turns more, if given)."""
    cli = attach_cli(str(pid), *probes)
    if turning is not None:
        start = turns(pid, turning.lines())
        wait_until(lambda: turns(pid, turning.lines()) > start + 50, what="traced turns")
    assert cli.poll() is None, cli.communicate()
    assert tracer_pid(pid) == cli.pid
    cli.kill()
    cli.communicate(timeout=30 * SLOWDOWN)
    wait_until(lambda: tracer_pid(pid) == 0, what="the tracer to be gone")


def journal_file(directory: Path, pid: int) -> Path:
    return directory / journal.Identity.of(pid).name


def sigtrap_caught(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as stream:
        mask = next(int(line.split()[1], 16) for line in stream if line.startswith("SigCgt:"))
    return bool(mask & (1 << (signal.SIGTRAP - 1)))


def table_state(pid: int) -> TableState:
    base = next(int(line.split("-")[0], 16) for line in ptrace_maps(pid)
                if line.endswith(UEMU_AREA) and " r-xp " in line)
    memory = ptrace.Memory(pid)
    try:
        return TableState(read_table(base, memory).header.state)
    finally:
        memory.close()


def uemu_areas(pid: int) -> list[str]:
    with open(f"/proc/{pid}/maps") as stream:
        return [line.strip() for line in stream if UEMU_AREA in line]


def assert_as_before(pid: int, lines: list, caught_before: bool) -> None:
    """Nothing of uemu left, judged from outside."""
    assert text_differences(pid) == []
    assert counters_off(pid, semaphores(lines)) == []
    assert uemu_areas(pid) == [] and anonymous_code(pid) == []
    assert sigtrap_caught(pid) == caught_before
    assert tracer_pid(pid) == 0


def stop_under_uemu(pid: int) -> None:
    """SIGSTOP the program and wait until uemu has seen every thread into the group stop:
    a thread still in its signal-delivery stop when uemu dies would run on (the kernel
    drops a stop's signal the tracer has waited for) and meet a breakpoint."""
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: set(thread_states(pid).values()) == {"t"}, what="the program to stop")
    time.sleep(0.5)  # uemu takes each stop in well under a millisecond: every thread listens
    assert set(thread_states(pid).values()) == {"t"}


def assert_goes_on(tracee: Tracee) -> None:
    start = turns(tracee.pid, tracee.lines())
    wait_until(lambda: turns(tracee.pid, tracee.lines()) > start + 100, what="the program's next turns")
    assert tracee.process.poll() is None


# ---------------------------------------------------------------- repairing


def test_repair_before_any_hit(samples: Path, journal_dir: Path) -> None:
    """The probe is not met after the kill: nothing undid uemu's writes; repair does."""
    with survival(samples, NEVER_MS, "0") as tracee:
        caught = sigtrap_caught(tracee.pid)
        killed_uemu(tracee.pid, "survival:slow")
        assert table_state(tracee.pid) == TableState.ARMED
        assert text_differences(tracee.pid) != [] and sigtrap_caught(tracee.pid)
        assert journal_file(journal_dir, tracee.pid).exists()
        result = uemu("repair", str(tracee.pid))
        assert result.returncode == 0 and result.stderr == "", result.stderr
        out = result.stdout
        breakpoints = slow_breakpoints(tracee.pid, samples / "survival")
        assert f"{breakpoints} breakpoints restored" in out and "1 semaphore lowered" in out, out
        assert "SIGTRAP action put back" in out and "uemu's area" in out, out
        assert_as_before(tracee.pid, tracee.lines(), caught)
        assert not journal_file(journal_dir, tracee.pid).exists()
        assert_goes_on(tracee)
        assert uemu("repair", str(tracee.pid)).stdout.startswith("nothing to repair in process")


def test_repair_of_a_program_stopped_when_uemu_died(samples: Path, journal_dir: Path) -> None:
    """SIGSTOP, then uemu killed: the program cannot meet a breakpoint; repair works on it
    stopped, and it stays stopped until SIGCONT, then goes on."""
    with survival(samples, NEVER_MS, "0") as tracee:
        caught = sigtrap_caught(tracee.pid)
        cli = attach_cli(str(tracee.pid), "survival:hot", "survival:slow")
        start = turns(tracee.pid, tracee.lines())
        wait_until(lambda: turns(tracee.pid, tracee.lines()) > start + 100, what="traced turns")
        stop_under_uemu(tracee.pid)
        assert cli.poll() is None, cli.communicate()
        cli.kill()
        cli.communicate(timeout=30 * SLOWDOWN)
        wait_until(lambda: tracer_pid(tracee.pid) == 0, what="the tracer to be gone")
        # woken by the tracer's death, every thread goes back into the group stop (kernel:
        # __ptrace_unlink) without a return to user space
        wait_until(lambda: set(thread_states(tracee.pid).values()) == {"T"}, what="the group stop")
        result = uemu("repair", str(tracee.pid))
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert re.search(r"\b\d+ breakpoints restored; 2 semaphores lowered", result.stdout), result.stdout
        # detached, each thread is woken and goes back into the group stop, R for a moment
        wait_until(lambda: process_state(tracee.pid) == "T", what="the group stop after repair")
        assert_as_before(tracee.pid, tracee.lines(), caught)
        os.kill(tracee.pid, signal.SIGCONT)
        assert_goes_on(tracee)
        assert not journal_file(journal_dir, tracee.pid).exists()


@pytest.mark.parametrize("ends", ["jump", "step", "jump-path"])
def test_repair_with_threads_in_xol_slots(samples: Path, ends: str) -> None:
    """A raw probe on work(), stepped out of line in a slot that jumps back or is
    single-stepped, hit by two threads all the time.  uemu frozen (SIGSTOP) wherever it
    was, the program stopped, uemu killed: threads are left mid-hit, mid-step, in slots.
    Repair moves each out as its step would have ended, the XOL area goes, and every
    work() result stays right once the program goes on.  ``jump-path``: the slot that
    jumps back's instruction through the jump path instead (threads left in its
    trampoline and hit go on by themselves; its mappings go)."""
    jump_path = ends == "jump-path"
    kind = "jump" if jump_path else ends
    word = stepped(samples / "survival", "work").get(kind) or pytest.skip(f"no {kind} slot in survival's work() here")
    with survival(samples, NEVER_MS, "0") as tracee:
        cli = attach_cli(str(tracee.pid), word, *(() if jump_path else ("--no-jumps",)))
        start = turns(tracee.pid, tracee.lines())
        wait_until(lambda: turns(tracee.pid, tracee.lines()) > start + 200, what="traced turns")
        cli.send_signal(signal.SIGSTOP)
        wait_until(lambda: process_state(cli.pid) == "T", what="uemu to stop")
        lost = ends == "step" and lost_traps(tracee.pid, site_of(tracee.pid, word))  # ret: one byte
        os.kill(tracee.pid, signal.SIGSTOP)
        cli.kill()
        cli.communicate(timeout=30 * SLOWDOWN)
        wait_until(lambda: tracer_pid(tracee.pid) == 0 and set(thread_states(tracee.pid).values()) == {"T"},
                   what="the program to stop, untraced")
        result = uemu("repair", str(tracee.pid))
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert ("jump path mapping" if jump_path else "XOL area") in result.stdout, result.stdout
        # detached, each thread is woken and goes back into the group stop, R for a moment
        wait_until(lambda: set(thread_states(tracee.pid).values()) == {"T"}, what="the group stop after repair")
        assert text_differences(tracee.pid) == [] and anonymous_code(tracee.pid) == []
        assert uemu_areas(tracee.pid) == []
        os.kill(tracee.pid, signal.SIGCONT)
        assert_goes_on(tracee)
        tracee.process.send_signal(signal.SIGTERM)
        assert tracee.process.wait(20 * SLOWDOWN) == 0
        wrong = [line.values for line in tracee.lines() if line.kind == "result"]
        assert wrong
        if not lost:  # else the documented window of a one-byte site: the thread skipped it
            assert all(values == ("0",) for values in wrong), wrong


def site_of(pid: int, word: str) -> int:
    """The runtime address of a ``PATH:work+OFF`` word in the program's own mapping."""
    path, _, offset = word.rpartition("+")
    program = os.path.realpath(path.rsplit(":", 1)[0])
    symbol = subprocess.run(["nm", program], capture_output=True, text=True, check=True).stdout
    value = next(int(line.split()[0], 16) for line in symbol.splitlines() if line.endswith(" t work"))
    low = min(int(line.split("-")[0], 16) for line in ptrace_maps(pid) if line.endswith(program))
    return low + value + int(offset, 16)


def lost_traps(pid: int, site: int) -> list[int]:
    """Threads of a program whose tracer is frozen, stopped at the trap of the one-byte
    site ``site`` (ip one past it) with a stop the tracer has already waited for (the
    stop's signal, field 52 of /proc/TID/stat, is 0): if the tracer dies now, the kernel
    resumes them past the site's instruction with the SIGTRAP dropped (README, "If uemu
    dies")."""
    lost = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/syscall") as stream:
            words = stream.read().split()
        with open(f"/proc/{pid}/task/{tid}/stat") as stream:
            exit_code = int(stream.read().rsplit(")", 1)[1].split()[49])
        if words[0] == "-1" and int(words[2], 16) == site + 1 and exit_code == 0:
            lost.append(int(tid))
    return lost


def test_repair_after_the_handler_ran(samples: Path, journal_dir: Path) -> None:
    """The hot probe is met after the kill: the runtime's handler has undone everything;
    repair says so and takes the area away."""
    with survival(samples, NEVER_MS, "0") as tracee:
        caught = sigtrap_caught(tracee.pid)
        killed_uemu(tracee.pid, "survival:hot")
        wait_until(lambda: table_state(tracee.pid) == TableState.DETACHED, what="the handler to restore")
        result = uemu("repair", str(tracee.pid))
        assert result.returncode == 0, result.stderr
        assert "its handler had put the bytes and counts back" in result.stdout, result.stdout
        assert "breakpoint" not in result.stdout, result.stdout
        assert_as_before(tracee.pid, tracee.lines(), caught)
        assert not journal_file(journal_dir, tracee.pid).exists()


def test_repair_at_once_after_the_kill_while_threads_hit(samples: Path) -> None:
    """uemu killed while two threads pass survival:hot through the jump path, repaired at
    once, four times over: a thread may be anywhere in a hit then (its trampoline, the
    runtime putting the bytes back as it finds uemu gone, the vDSO's clock called from
    the runtime), and repair runs it out before the area goes.  After every round nothing
    of uemu is left and the program goes on; at the end every work() result is right."""
    with survival(samples, NEVER_MS, "0") as tracee:
        caught = sigtrap_caught(tracee.pid)
        for _ in range(4):
            killed_uemu(tracee.pid, "survival:hot", turning=tracee)
            result = uemu("repair", str(tracee.pid))
            assert result.returncode == 0 and result.stderr == "", result.stderr
            assert "uemu's area at" in result.stdout and "unmapped" in result.stdout, result.stdout
            assert_as_before(tracee.pid, tracee.lines(), caught)
            assert_goes_on(tracee)
        tracee.process.send_signal(signal.SIGTERM)
        assert tracee.process.wait(20 * SLOWDOWN) == 0
        wrong = [line.values for line in tracee.lines() if line.kind == "result"]
        assert len(wrong) == 2 and all(values == ("0",) for values in wrong), wrong


HOT_TICKS = 5
"""Clock ticks of CPU a worker of samples/leaving has used once it passes its probe: it
sleeps until the probe's semaphore is raised (a worker seen running may still wait)."""
HANDLER_NAP_US = int(1_000_000 * (3 * SLOWDOWN - 2))
"""How long each SIGRTMIN handler of samples/leaving sleeps: uemu is killed, and repair
starts, while the handlers run (a second here; 28 s in the guests, where starting
``uemu repair`` alone takes 15 s: a nap stretched only as the waits are, 10 s, ended
before repair looked, and repair rightly had no thread to run out)."""


def test_repair_lets_a_handler_entered_inside_a_hit_return_into_it(jump_build) -> None:
    """samples/leaving's workers pass leaving:pass through the jump path (on x86 its site
    is the loop's own cmp: a worker is nearly always inside a hit), each is sent SIGRTMIN,
    whose handler sleeps 1 s, and uemu is killed with SIGKILL while the handlers sleep.
    Repair at once: a handler's signal frame returns into a trampoline, so repair lets
    each such worker run until it has come back out of the hit before the area goes
    (unmapped under a handler, the program would die as it returns).  The program then
    ends as it would: every handler ran, every worker stopped passing."""
    skip_without_jumps(jump_build)
    workers = 3
    with Tracee([jump_build.directory / "leaving", str(workers), str(HANDLER_NAP_US)]) as tracee:
        tracee.wait_sync("started")
        caught = sigtrap_caught(tracee.pid)
        tracee.release()
        cli = attach_cli("-c", str(tracee.pid), "leaving:pass")  # counted in the target: no reader to wait for
        tids = sorted(tid for tid in map(int, os.listdir(f"/proc/{tracee.pid}/task")) if tid != tracee.pid)
        wait_until(lambda: all(cpu_ticks(tracee.pid, tid) > HOT_TICKS for tid in tids), what="hot workers")
        tgkill = ctypes.CDLL(None, use_errno=True).tgkill
        for tid in tids:
            assert tgkill(tracee.pid, tid, signal.SIGRTMIN) == 0
        wait_until(lambda: all(thread_states(tracee.pid)[tid] == "S" for tid in tids), what="handlers asleep")
        assert cli.poll() is None, cli.communicate()
        cli.kill()
        cli.communicate(timeout=30 * SLOWDOWN)
        wait_until(lambda: tracer_pid(tracee.pid) == 0, what="the tracer to be gone")
        result = uemu("repair", str(tracee.pid))
        if result.returncode == 1:
            # a handler outlasted repair's wait for it (the guests: the nap is stretched,
            # repair's limit is not): the area and the ring are left under it, and a
            # second repair, once the handlers have returned, takes them away
            assert re.fullmatch(r"uemu: process \d+: uemu's area at 0x[0-9a-f]+ is left: thread \d+ is in it "
                                r"\(on its way out of it\); .*\n", result.stderr), result.stderr
            tracee.wait_sync("done")
            result = uemu("repair", str(tracee.pid))
            assert result.returncode == 0 and result.stderr == "", (result.stdout, result.stderr)
            assert "uemu's area at" in result.stdout, result.stdout
        else:
            assert result.returncode == 0 and result.stderr == "", (result.stdout, result.stderr)
            assert "run out of uemu's code" in result.stdout and "uemu's area at" in result.stdout, result.stdout
            tracee.wait_sync("done")
        assert uemu_areas(tracee.pid) == [] and anonymous_code(tracee.pid) == []
        assert text_differences(tracee.pid) == [] and sigtrap_caught(tracee.pid) == caught
        tracee.run_out()
        handled = [line.values for line in tracee.lines() if line.kind == "signal"]
        passed = [line for line in tracee.lines() if line.kind == "hits"]
    assert len(passed) == workers
    assert [values[0] for values in handled] == [str(workers)], handled


def test_repair_gives_the_program_its_own_action(runnable_build) -> None:
    """samples/orphan's own truth: repaired before it ever passes its probe, it never sees
    the semaphore raised, its SIGTRAP action is its own with its flags, and its own
    raise(SIGTRAP) reaches its own handler, as in an untraced run."""
    program = runnable_build.directory / "orphan"
    orphan = Orphan(program, "handler", "2")
    try:
        killed_uemu(orphan.pid, "orphan:tick")
        result = uemu("repair", str(orphan.pid))
        assert result.returncode == 0, result.stderr
        orphan.go()
        wait_until(lambda: orphan.sync("done") or orphan.process.poll() is not None, what="orphan to end")
        assert orphan.finish() == 0
        got = facts(orphan.lines())
    finally:
        orphan.close()
    _, oracle = untraced(program, "handler", "2")
    assert got == facts(oracle)
    assert got["sema"] == [("0",), ("0",)]


# ---------------------------------------------------------------- what repair refuses and says


def test_repair_refuses_while_uemu_traces(samples: Path, journal_dir: Path) -> None:
    with survival(samples, NEVER_MS, "0") as tracee:
        cli = attach_cli(str(tracee.pid), "survival:slow")
        journal_text = journal_file(journal_dir, tracee.pid).read_text()
        result = uemu("repair", str(tracee.pid))
        assert result.returncode == 7 and result.stderr.count("\n") == 1, result.stderr
        assert f"already traced by {cli.pid}" in result.stderr
        assert journal_file(journal_dir, tracee.pid).read_text() == journal_text
        listing = uemu("repair")
        assert listing.returncode == 0 and f"traced by {cli.pid}" in listing.stdout, listing.stdout
        code, _, err = stop_cli(cli, signal.SIGINT)
        assert code == 0 and err == ""
        assert not journal_file(journal_dir, tracee.pid).exists(), "a clean leave removes the journal"


def test_repair_of_no_process() -> None:
    result = uemu("repair", "999999999")
    assert result.returncode == 3 and result.stderr == "uemu: no such process: 999999999\n"


def test_attach_refuses_a_process_left_armed(samples: Path) -> None:
    """Arming over a dead uemu's net would save its handler as the program's action."""
    with survival(samples, NEVER_MS, "0") as tracee:
        killed_uemu(tracee.pid, "survival:slow")
        refused = uemu("attach", "--duration", "0.1", str(tracee.pid), "survival:slow")
        assert refused.returncode == 7 and f"'uemu repair {tracee.pid}' first" in refused.stderr, refused.stderr
        assert uemu("repair", str(tracee.pid)).returncode == 0
        again = uemu("attach", "--duration", "0.1", str(tracee.pid), "survival:slow")
        assert again.returncode == 0, again.stderr


def test_listing(samples: Path, journals: Path) -> None:
    assert uemu("repair").stdout == "nothing to repair\n"
    with survival(samples, NEVER_MS, "0") as tracee:
        killed_uemu(tracee.pid, "survival:slow")
        listing = uemu("repair")
        assert listing.returncode == 0
        [line] = listing.stdout.splitlines()
        assert line.startswith(f"process {tracee.pid} (survival): uemu's area at 0x"), line
        breakpoints = slow_breakpoints(tracee.pid, samples / "survival")
        assert f"{breakpoints} breakpoints, 1 raised semaphore" in line and f"'uemu repair {tracee.pid}'" in line, line
        assert uemu("repair", str(tracee.pid)).returncode == 0
    assert uemu("repair").stdout == "nothing to repair\n"


def test_a_journal_of_a_dead_process_is_removed(samples: Path, journals: Path) -> None:
    with survival(samples, NEVER_MS, "0") as tracee:
        killed_uemu(tracee.pid, "survival:slow")
        name = journal.Identity.of(tracee.pid).name
    assert (journals / name).exists()
    listing = uemu("repair")
    assert listing.returncode == 0
    assert listing.stdout == f"process {name.split('-')[0]} is gone: its journal {name} is removed\nnothing to repair\n"
    assert not (journals / name).exists()


def test_a_reused_pid_is_not_touched(samples: Path, journals: Path) -> None:
    """A journal of pid P that an earlier process had (start time differs): the process
    that has P now is not touched, though the journal claims a breakpoint on bytes it
    holds; the journal is removed."""
    with survival(samples, NEVER_MS, "0") as tracee:
        pid = tracee.pid
        identity = journal.Identity.of(pid)
        text = next(v for v in ptrace_maps(pid) if " r-xp " in v and v.endswith("/survival"))
        site = int(text.split("-")[0], 16)
        held = read(pid, site, 1)
        earlier = journal.Identity(pid, identity.start - 1, identity.boot)
        journals.mkdir(mode=0o700)
        write_journal(journals / earlier.name, earlier, [("area", (site, 0x300000, "x86_64")),
                                                          ("site", (site, b"\x90", held))])
        result = uemu("repair", str(pid))
        assert result.returncode == 0, result.stderr
        assert result.stdout == (f"removed the journal of an earlier process {pid}, gone\n"
                                 f"nothing to repair in process {pid} (survival)\n")
        assert read(pid, site, 1) == held
        assert not (journals / earlier.name).exists()
        assert_goes_on(tracee)


# ---------------------------------------------------------------- the journal itself


def test_journal_is_private_and_holds_only_addresses_and_bytes(samples: Path, journals: Path) -> None:
    with survival(samples, NEVER_MS, "0") as tracee:
        # the trap path's XOL records (the jump path would take that instruction)
        cli = attach_cli(str(tracee.pid), "--no-jumps", "survival:hot", stepped(samples / "survival", "work")["jump"])
        wait_until(lambda: {"xol", "slot"} <= {record.split(" ", 1)[0] for record in
                                             journal_file(journals, tracee.pid).read_text().splitlines()},
                   what="the XOL area and a slot in the journal")
        info = os.stat(journals)
        assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()
        path = journal_file(journals, tracee.pid)
        info = os.lstat(path)
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
        header, *records = path.read_text().splitlines()
        assert header.split()[:4] == ["uemu-journal", "1", str(tracee.pid), path.name.split("-")[1]]
        assert records and all(RECORD.fullmatch(record) for record in records), records
        assert {record.split()[0] for record in records} >= {"area", "action", "site", "counter", "xol", "slot"}
        assert "/" not in path.read_text()
        stop_cli(cli, signal.SIGINT)
        assert not path.exists()


def test_journal_goes_when_the_process_exits(samples: Path, journals: Path) -> None:
    with survival(samples, NEVER_MS, "0") as tracee:
        cli = attach_cli(str(tracee.pid), "survival:hot")
        path = journal_file(journals, tracee.pid)
        assert path.exists()
        tracee.process.send_signal(signal.SIGTERM)
        assert tracee.process.wait(20 * SLOWDOWN) == 0
        code, _, err = stop_cli(cli, None)
        assert code == 0, err
        assert not path.exists()


def test_no_write_through_a_symlink_in_the_journal_directory(samples: Path, journals: Path,
                                                            tmp_path: Path) -> None:
    """A symlink planted under the name of a process's journal: attach says so and traces
    without a journal; repair leaves it; the file it points to is never written."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    with survival(samples, NEVER_MS, "0") as tracee:
        journals.mkdir(mode=0o700)
        link = journals / journal.Identity.of(tracee.pid).name
        link.symlink_to(victim)
        cli = attach_cli(str(tracee.pid), "survival:hot")
        listing = uemu("repair")
        code, _, err = stop_cli(cli, signal.SIGINT)
        assert code == 0
        assert "is a symlink or a special file, not a journal; left alone; no journal" in err, err
        assert "is a symlink or a special file, not a journal; left alone" in listing.stderr, listing.stderr
        assert link.is_symlink() and victim.read_text() == "precious\n"
        assert text_differences(tracee.pid) == []


@pytest.mark.parametrize("how", ["symlink", "other-owner"])
def test_a_journal_directory_not_uemus_own_is_not_used(samples: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """The directory itself a symlink, or someone else's: no journal, a warning, and
    tracing goes on; nothing is written there."""
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    directory = tmp_path / "journals"
    if how == "symlink":
        directory.symlink_to(target)
    else:
        directory.mkdir(mode=0o700)
        os.chown(directory, 65534, 65534)
    monkeypatch.setenv("UEMU_JOURNAL_DIR", str(directory))
    with survival(samples, NEVER_MS, "0") as tracee:
        cli = attach_cli(str(tracee.pid), "survival:hot")
        code, _, err = stop_cli(cli, signal.SIGINT)
        assert code == 0
        assert err.count("\n") == 1 and "uemu keeps no journal there" in err, err
        assert list(target.iterdir()) == [] and (how == "symlink" or list(directory.iterdir()) == [])
        assert text_differences(tracee.pid) == []


# ---------------------------------------------------------------- helpers


def ptrace_maps(pid: int) -> Iterator[str]:
    with open(f"/proc/{pid}/maps") as stream:
        yield from (line.rstrip("\n") for line in stream)


def read(pid: int, address: int, size: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(address)
        return mem.read(size)


def write_journal(path: Path, identity: journal.Identity, records: list[tuple[str, tuple]]) -> None:
    """A journal as the documented format has it (uemu/journal.py)."""
    text = f"uemu-journal 1 {identity.pid} {identity.start} {identity.boot}\n"
    text += "".join(journal.encode(kind, values) for kind, values in records)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as stream:
        stream.write(text)
