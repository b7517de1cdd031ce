"""The jump path through the real session and CLI (the default): hits as the program
says and as kernel uprobes count them, equal to the trap path's (``--no-jumps``), in
threads, forked children and exec'd images; the program's text back as its file after
detach and after uemu's SIGKILL; the red zone intact.  Each test also checks that the
jump path was taken (a ring was read, or the site holds a jump while traced): a silent
fall back to breakpoints would pass the rest."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from oracle import KernelUprobes, sdt_sites, tracefs_reason
from residue import text_differences
from samplelog import counts, expected_hits, json_hits, parse, per_probe, reported_hits, run_traced, run_untraced
from test_net import Orphan, facts
from tracee import UEMU, Tracee, attach_cli, differences, file_memory, read_memory, stop_cli, tracer_pid, wait_until

from uemu import sdt
from uemu.errors import UemuError
from uemu.runtime import has_blob
from uemu.session import Session

JMP_REL32 = 0xE9
RVC_SITES = ("riscv64 SDT sites built with the C extension (Debian's rv64gc) are a 2-byte c.nop: "
             "no 4-byte jal fits and riscv64 has no punning, so every site keeps the trap path "
             "(uemu list --plan says so; the trap path's tests cover riscv64)")


C_NOP = b"\x01\x00"


def skip_without_jumps(jump_build) -> None:
    """Skip a build whose SDT sites cannot take the jump path: by its file, not its name."""
    path = jump_build.directory / "basic"
    elf = sdt.open_elf(str(path))
    if not has_blob(elf.arch_name):
        pytest.skip(f"no in-target runtime for {elf.arch_name}")
    if elf.arch_name == "riscv64":
        with path.open("rb") as stream:
            sites = set()
            for probe in elf.probes:
                stream.seek(probe.file_offset)
                sites.add(stream.read(len(C_NOP)))
        if C_NOP in sites:
            pytest.skip(RVC_SITES)


@pytest.fixture
def build(jump_build):
    skip_without_jumps(jump_build)
    return jump_build


def plans(uemu, target: str) -> dict[str, str]:
    """``uemu list --plan --json``: probe -> jump, pun or trap (the last site's)."""
    listed = uemu("list", "--plan", "--json", target)
    assert listed.returncode == 0, listed.stderr
    return {f"{p['provider']}:{p['name']}": p["plan"] for p in map(json.loads, listed.stdout.splitlines())}


def test_session_hits_equal_the_program_and_the_trap_path(build) -> None:
    program = build.directory / "basic"
    jumped = run_traced([program, "5"])
    trapped = run_traced([program, "5"], jumps=False)
    assert jumped.exit_status == trapped.exit_status == 0
    assert jumped.session.jumps is not None and jumped.session.jumps.read > 0, "the jump path was taken"
    assert trapped.session.jumps is None
    for run in (jumped, trapped):
        assert per_probe(reported_hits(run.events)) == per_probe(expected_hits(run.lines))
    assert counts(reported_hits(jumped.events)) == counts(reported_hits(trapped.events))
    times = [event.ts_ns for event in jumped.events]
    assert times == sorted(times), "one time order"


def test_cli_output_is_the_same_on_both_paths(build, tmp_path) -> None:
    """text, JSON, --format (with %s copied at the hit), --count: only pids, times and
    pointers differ between a run on the jump path and one with --no-jumps."""
    program = str(build.directory / "basic")
    for shape in (["--json"], ["--format", "%s|%d"], ["-c"], []):
        outputs = []
        for extra in ([], ["--no-jumps"]):
            out = tmp_path / "out"
            result = subprocess.run([*_uemu(), "run", *shape, *extra, "-o", str(out), "--", program, "3"],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            outputs.append(_stable(out.read_text(), shape))
        assert outputs[0] == outputs[1], shape


def _uemu() -> tuple[str, ...]:
    return UEMU


def _stable(text: str, shape: list[str]) -> list[str]:
    """The lines without what differs from run to run (pids, times, pointers)."""
    if shape == ["--json"]:
        return _json_stable(text)
    if shape == ["--format", "%s|%d"]:
        return text.splitlines()
    if shape == ["-c"]:
        return sorted(text.splitlines())
    return [" ".join(line.split()[2:3 if line.split()[2] in _POINTERS else None]) for line in text.splitlines()]


_POINTERS = ("basic:types", "basic:string")
"""Probes with a pointer among their arguments (it differs from run to run)."""


def _json_stable(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        record = json.loads(line)
        for key in ("ts_ns", "pid", "tid", "address"):
            record.pop(key, None)
        if f"{record['provider']}:{record['name']}" in _POINTERS:
            record.pop("args", None)  # a pointer among them
        out.append(json.dumps(record, sort_keys=True))
    return out


def test_kernel_uprobes_count_what_the_session_reports(build) -> None:
    reason = tracefs_reason()
    if reason:
        pytest.skip(reason)
    program = build.directory / "threads"
    with KernelUprobes(sdt_sites(str(program)), with_args=False) as kernel:
        _, status = run_untraced([program, "4", "50"])
        theirs = kernel.hits()
    run = run_traced([program, "4", "50"])
    assert status == 0 and run.exit_status == 0
    assert run.session.jumps is not None and run.session.jumps.read > 0
    assert counts(reported_hits(run.events)) == +theirs


def test_threads_each_named(build) -> None:
    run = run_traced([build.directory / "threads", "4", "50"])
    assert run.exit_status == 0
    assert per_probe(reported_hits(run.events)) == per_probe(expected_hits(run.lines))
    assert len({event.tid for event in run.events}) >= 5
    assert {event.tid for event in run.events} <= {line.tid for line in run.lines}


@pytest.mark.parametrize("name, args", [("threads", ("4", "50")), ("fork", ())], ids=["threads", "fork"])
def test_counting_alone_counts_in_the_target(build, name, args) -> None:
    """``count_only`` (``--count``): a jumped site adds to its counter in the ring, no
    record; the counts are the program's, a followed child's hits included."""
    with tempfile.NamedTemporaryFile("r", prefix="sample-") as out:
        session = Session((), decode_args=False, count_only=True, follow_forks=True)
        session.spawn([str(build.directory / name), *args], env=dict(os.environ, SAMPLE_OUT=out.name))
        with pytest.raises(UemuError):
            session.add_handler(lambda event: None)
        session.run()
        lines = parse(out.read())
    assert session.exit_status == 0
    assert session.jumps is not None and session.jumps.read == 0, "no record was written"
    assert sum(session.jumps.counted().values()) > 0, "the jump path counted"
    assert {name: hits for name, hits in session.counts().items() if hits} == counts(expected_hits(lines))


@pytest.mark.parametrize("jumps", [True, False], ids=["jumps", "traps"])
def test_a_handler_that_raises_ends_the_session_with_its_error(build, jumps: bool) -> None:
    """The first error a handler raises ends the session: it leaves as for a leaving
    signal (every site restored, every thread detached, the command run on to its end)
    and then raises it; no handler is called after it, leaving's own hand-outs of the
    jump path's last hits included (they made the leaving raise before, and the session
    then waited for ever for a command it had not let go)."""
    calls = []

    def handler(event) -> None:
        calls.append(event)
        raise KeyError("boom")

    with tempfile.NamedTemporaryFile("r", prefix="sample-") as out:
        session = Session(("basic:*",), jumps=jumps)
        session.spawn([str(build.directory / "basic"), "1"], env=dict(os.environ, SAMPLE_OUT=out.name))
        with pytest.raises(KeyError, match="boom"):
            session.run(handler)
        lines = parse(out.read())
    assert len(calls) == 1
    assert session.exit_status == 0
    assert counts(expected_hits(lines)), "the program passed its probes"


@pytest.mark.parametrize("name, args", [("fork", ()), ("exec", ("2",)), ("exec", ("2", "thread"))],
                         ids=["fork", "exec", "exec-thread"])
def test_followed_children_and_new_images(build, name, args) -> None:
    program = build.directory / name
    jumped = run_traced([program, *args], follow_forks=True)
    trapped = run_traced([program, *args], follow_forks=True, jumps=False)
    assert jumped.exit_status == trapped.exit_status == 0
    assert jumped.session.jumps is not None and jumped.session.jumps.read > 0
    assert counts(reported_hits(jumped.events)) == counts(expected_hits(jumped.lines))
    assert counts(reported_hits(jumped.events)) == counts(reported_hits(trapped.events))
    for event in jumped.events:
        assert (event.pid, event.tid) in {(line.pid, line.tid) for line in jumped.lines}, event


def test_children_not_followed_run_clean(build) -> None:
    run = run_traced([build.directory / "fork"])
    assert run.exit_status == 0
    children = [line for line in run.lines if line.kind == "child"]
    assert children and all(line.values[-1] == "0" for line in children), children
    parent = run.lines[0].pid
    assert {event.pid for event in run.events} == {parent}
    hits = expected_hits(run.lines)
    assert counts(reported_hits(run.events)) == counts([h for h in hits if h[2] == parent])


def _site_bytes(pid: int, program: Path) -> dict[str, int]:
    """Probe -> the first byte at each of its sites now (in the running program)."""
    from uemu.maps import read_maps
    from uemu.objects import mapped_objects

    objects, _ = mapped_objects(pid, read_maps(pid))
    mapped = next(o for o in objects if os.path.realpath(o.elf.path) == os.path.realpath(program))
    out = {}
    for probe in mapped.elf.probes:
        where = mapped.runtime_address(probe.file_offset)
        if where is not None:
            out[probe.full_name] = read_memory(pid, where, 1)[0]
    return out


def test_detach_puts_the_files_bytes_back(build, uemu) -> None:
    """Attached while the program waits: the sites hold jumps, the semaphores are
    raised; after SIGINT every byte of its text is its file's and the semaphores read 0."""
    program = build.directory / "sema"
    with Tracee([program, "3"]) as tracee:
        tracee.wait_sync("phase")
        tracee.release()
        tracee.wait_sync("phase")  # the semaphores' addresses are printed
        before = file_memory(tracee.pid, writable=False)
        semaphores = {int(line.values[0]): line.word for line in tracee.lines() if line.kind == "sema"}
        predicted = plans(uemu, str(tracee.pid))
        cli = attach_cli(str(tracee.pid), "--json")
        try:
            now = _site_bytes(tracee.pid, program)
            jumped = [name for name, plan in predicted.items() if plan != "trap"]
            assert jumped, predicted
            for name in jumped:
                assert now[name] != 0xCC, f"{name} took a breakpoint though --plan said {predicted[name]}"
            assert {name for name, byte in now.items() if byte == JMP_REL32} >= {
                name for name in jumped if predicted[name] == "pun"}
            assert any(read_memory(tracee.pid, a, 2) != b"\0\0" for a in semaphores)
        finally:
            tracee.release()
            tracee.wait_sync("phase")
            code, out, err = stop_cli(cli, signal.SIGINT)
        assert code == 0 and err == "", err
        assert out.strip(), "hits were reported"
        assert differences(before, file_memory(tracee.pid, writable=False)) == []
        assert all(read_memory(tracee.pid, a, 2) == b"\0\0" for a in semaphores)
        assert tracer_pid(tracee.pid) == 0
        tracee.run_out()


FORGETS_NOTHING = ("import runpy, uemu.jumps; uemu.jumps.JumpPath.forget = lambda self, mm: None; "
                   "runpy.run_module('uemu', run_name='__main__')")
"""uemu with the bug ``test_a_command_left_under_the_seccomp_filter_goes_on_starting_threads``
found put back: an error of uemu's own while leaving, for ``Tracer.abandon`` to survive."""


@pytest.mark.parametrize("broken", [False, True], ids=["leaving", "error-while-leaving"])
def test_a_command_left_under_the_seccomp_filter_goes_on_starting_threads(build, tmp_path, broken) -> None:
    """``uemu run`` told to leave stays the tracer of a command under its seccomp filter
    (without one, the command's mmap would fail) until it ends, doing nothing.  Threads
    the command starts then must go on.  The jump path's thread table went with its
    area, and a new thread's pointer written there failed the leaving while uemu held
    the thread stopped: the command hung (soak: ``signal/run``, "no progress").  With
    that bug put back, uemu must still let every thread go on, then say its error."""
    program = build.directory / "threads"
    ready = tmp_path / "ready"
    uemu = (sys.executable, "-c", FORGETS_NOTHING) if broken else UEMU
    under = (*uemu, "run", "--mappings=seccomp", "--ready-file", str(ready), "-o", "/dev/null", "threads:work", "--")
    with Tracee([program, "4", "50"], under=under) as tracee:
        tracee.wait_sync("start")
        wait_until(ready.exists, what="uemu to arm")
        if _site_bytes(tracee.pid, program)["threads:work"] == 0xCC:
            pytest.skip("threads:work keeps the trap in this process (a randomised heap may grow over its pun target)")
        assert text_differences(tracee.pid) != [], "threads:work holds a jump"
        tracee.process.send_signal(signal.SIGINT)
        wait_until(lambda: text_differences(tracee.pid) == [], what="uemu to put the file's bytes back")
        assert tracer_pid(tracee.pid) != 0, "the command keeps its tracer under the filter"
        tracee.release()
        tracee.wait_sync("end")
        tracee.release()
        code = tracee.finish()
        said = tracee.stderr().splitlines()
    if broken:
        assert code == 1 and len(said) == 1 and said[0].startswith("uemu: internal error: OSError"), said
    else:
        assert (code, said) == (0, [])


def test_uemu_killed_with_jumps_armed_leaves_the_program_running_and_whole(build) -> None:
    """SIGKILL of ``uemu attach`` with every site jumped: the program goes on; a hit of
    a jump after uemu is gone restores the sites and the semaphore (the net), so the
    text is byte for byte its file's and the semaphore back to 0."""
    program = build.directory / "orphan"
    orphan = Orphan(program, "handler", "2", "400000")
    try:
        cli = attach_cli(str(orphan.pid), "orphan:*")
        assert cli.poll() is None
        assert _site_bytes(orphan.pid, program).get("orphan:tick") == JMP_REL32 or pytest.skip(
            "orphan:tick keeps the trap in this process")
        cli.kill()
        cli.wait()
        orphan.go()
        wait_until(lambda: orphan.sync("done") or orphan.process.poll() is not None, what="orphan to end")
        assert orphan.process.poll() is None, orphan.process.stderr.read()
        assert text_differences(orphan.pid) == [], "every executable mapping as its file"
        got = facts(orphan.lines())
        assert got["sema"] == [("1",), ("0",)], "raised by uemu, lowered by the net from a hit"
        assert got["action"][0][0] == "own"
        assert orphan.finish() == 0
    finally:
        orphan.close()


def test_the_red_zone_survives(build) -> None:
    run = run_traced([build.directory / "redzone", "3000"])
    assert run.exit_status == 0
    [result] = [line for line in run.lines if line.kind == "result"]
    assert int(result.values[0]) == 78 * 3000 * 2999 // 2
    assert [event.args for event in run.events] == [[i] for i in range(3000)]
    assert run.session.jumps is not None
    if run.session.jumps.read == 0:
        pytest.skip("redzone:leaf keeps the trap in this build (its pun target is taken)")
    assert run.session.jumps.read == 3000


def test_max_events_is_exact_on_the_jump_path(build, tmp_path) -> None:
    out = tmp_path / "out"
    result = subprocess.run([*_uemu(), "run", "--json", "--max-events", "7", "-o", str(out), "--",
                             str(build.directory / "bench"), "100000"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(json_hits(out)) == 7


def test_events_iterator_yields_the_jump_paths_hits(build, tmp_path) -> None:
    """``Session.events()``: ring hits reach the loop's thread (the reader wakes it)."""
    from samplelog import parse

    from uemu.session import Session

    out = tmp_path / "lines"
    session = Session()
    session.spawn([str(build.directory / "basic"), "4"], env=dict(os.environ, SAMPLE_OUT=str(out)))
    events = list(session.events())
    assert session.jumps is not None and session.jumps.read > 0
    assert per_probe(reported_hits(events)) == per_probe(expected_hits(parse(out.read_text())))


def test_a_small_ring_waits_for_the_reader_or_drops_and_counts(build, tmp_path) -> None:
    """``--ring-size 64K`` under a burst of 20 000 records, seven times the ring: by
    default each hit that finds it full waits for room and none is lost; under --drop
    those hits are dropped, and the events written plus the losses said are every hit."""
    program = str(build.directory / "bench")
    got = {}
    for extra in ((), ("--drop",)):
        out = tmp_path / "out"
        result = subprocess.run([*UEMU, "run", "--json", "--ring-size", "64K", *extra, "-o", str(out), "bench:nop",
                                 "--", program, "20000"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        lost = re.search(r"uemu: warning: (\d+) hits? of the jump path lost", result.stderr)
        got[extra] = (len(out.read_text().splitlines()), int(lost[1]) if lost else 0)
    assert got[()] == (20000, 0)
    events, lost = got[("--drop",)]
    assert events + lost == 20000
    if not lost:
        pytest.skip("bench:nop kept the trap in this process (its pun target was taken)")
    assert events >= 65536 // 64, "the ring was filled before hits were dropped"


def test_the_ring_is_in_memory_before_the_first_hit(build) -> None:
    """A recording session's ring is made and mapped in the target when tracing starts
    (MAP_POPULATE): no hit pays the page fault of a page it is first to write."""
    seen: list[tuple[int, int]] = []

    def at_hit(event) -> None:
        if not seen:  # the process is stopped or in its loop: it is there
            seen.append(_ring_size_and_rss(event.pid))

    session = Session(("basic:*",), ring_size=64 << 10)
    with tempfile.NamedTemporaryFile("r", prefix="sample-") as out:
        session.spawn([str(build.directory / "basic"), "1"], env=dict(os.environ, SAMPLE_OUT=out.name))
        session.run(at_hit)
    assert session.jumps is not None and session.jumps.read > 0, "the jump path was taken"
    [(size, rss)] = seen
    assert size == 4096 + (64 << 10) * 5 // 4 and rss == size


def _ring_size_and_rss(pid: int) -> tuple[int, int]:
    """Size and Rss (bytes) of the ring's mapping in ``pid``, from /proc/PID/smaps."""
    fields: dict[str, int] = {}
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        words = line.split()
        if not words[0].endswith(":"):
            inside = "/memfd:uemu-ring" in line
        elif inside and words[0] in ("Size:", "Rss:"):
            fields[words[0]] = int(words[1]) * 1024
    return fields["Size:"], fields["Rss:"]
