"""A traced program outlives uemu's failures (issue 9, "Found by fault injection").

Each test puts uemu in a way it can fail the program: an error after arming,
a thread already traced by someone else, a program exec'ing itself in a loop,
``kill -9``.  The program must then make its next hits with no tracer, be
alive and untraced, hold every executable mapping as its file (through
/proc/PID/map_files) and every semaphore back at 0 (its own ``sema`` lines).
Marked xfail (strict) where main fails today; the mark comes off with the fix.
The soak scripts (tests/soak/) count the same things over hundreds of tries.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence

import pytest
from residue import counters_off, semaphores, text_differences, turns
from tracee import SLOWDOWN, UEMU, Tracee, attach_cli, stop_cli, thread_states, tracer_pid, wait_until

SLOW_MS = "100"
"""samples/survival's slow probe every 100 ms: a test waits for two of its hits."""


@pytest.fixture
def survival(samples) -> Iterator[Tracee]:
    """samples/survival with 2 hot threads, running (past its start sync)."""
    with Tracee([samples / "survival", "2", SLOW_MS, "0"]) as tracee:
        tracee.wait_sync("started")
        tracee.release()
        yield tracee


def _ticks(tracee: Tracee) -> int:
    return sum(line.kind == "tick" for line in tracee.lines())


def _turns(tracee: Tracee) -> int | None:
    """None once the program is gone."""
    try:
        return turns(tracee.pid, tracee.lines())
    except OSError:
        return None


def _status(tracee: Tracee) -> str:
    code = tracee.process.returncode
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"


def assert_unharmed(tracee: Tracee) -> None:
    """With uemu gone: two more slow periods and 100 hot turns pass (the first
    orphaned hits), the program is alive and untraced, its text is its files'
    and its semaphores read 0."""
    _wait_next_hits(tracee)
    assert tracee.process.poll() is None, f"the program ended with {_status(tracee)} at its next hit"
    assert tracer_pid(tracee.pid) == 0
    assert text_differences(tracee.pid) == []
    assert counters_off(tracee.pid, semaphores(tracee.lines())) == []


def _wait_next_hits(tracee: Tracee) -> None:
    """Until two more slow periods and 100 hot turns have passed, or the program is gone."""
    ticks, start = _ticks(tracee), _turns(tracee)

    def passed() -> bool:
        now = _turns(tracee)
        return now is None or (start is not None and _ticks(tracee) >= ticks + 2 and now >= start + 100)

    wait_until(passed, what="the program's next hits")
    if _turns(tracee) is None:  # gone: its status
        tracee.process.wait(5 * SLOWDOWN)


def _one_line_error(code: int, stderr: str, exit_codes: Sequence[int]) -> None:
    assert code in exit_codes, stderr
    assert stderr.startswith("uemu: ") and stderr.count("\n") == 1, stderr
    assert "internal error" not in stderr and "Traceback" not in stderr, stderr


# ---------------------------------------------------------------- the checks themselves


def test_leaving_on_sigint_leaves_the_target_unharmed(survival):
    """The control: uemu leaving the ordinary way passes every check above, with
    the text, the counters and ld.so's rendezvous breakpoint armed before.  The
    events go to /dev/null: in a pipe nobody reads until the end, a few thousand
    hot hits fill it, uemu blocks writing, and the program with it."""
    cli = attach_cli("-o", os.devnull, str(survival.pid), "survival:*")
    assert text_differences(survival.pid) != [] and counters_off(survival.pid, semaphores(survival.lines())) != []
    _wait_next_hits(survival)
    code, _, err = stop_cli(cli, signal.SIGINT)
    assert code == 0 and err == "", err
    assert_unharmed(survival)


# ---------------------------------------------------------------- 1. errors after arming


@pytest.mark.parametrize("how", ["format", "ready-file-missing", "ready-file-directory", "stdout-closed"])
def test_an_error_of_attach_leaves_the_target_unharmed(survival, how, tmp_path):
    """``--format '%q'``, a ready file that cannot be written, stdout closed:
    one line and a documented exit code, and the program never left armed."""
    options = {"format": ["--format", "%q"], "ready-file-missing": ["--ready-file", "/nonexistent/x"],
               "ready-file-directory": ["--ready-file", str(tmp_path)], "stdout-closed": []}[how]
    command = [*UEMU, "attach", *options, str(survival.pid), "survival:slow"]
    if how == "stdout-closed":
        command = ["sh", "-c", 'exec "$@" >&-', "sh", *command]
    result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL if how != "stdout-closed"
                            else None, stderr=subprocess.PIPE, text=True, timeout=30 * SLOWDOWN, check=False)
    assert_unharmed(survival)
    _one_line_error(result.returncode, result.stderr, (2,) if how == "format" else (1, 2, 4, 5))


# ---------------------------------------------------------------- 2. a thread traced by another


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_attach_refuses_a_process_one_of_whose_threads_is_traced(survival):
    """``strace -p TID`` on a non-leader thread first: uemu refuses at once with
    the tracer named (exit 7), and every thread goes on running."""
    pid = survival.pid
    tid = max(thread_states(pid))
    strace = subprocess.Popen(["strace", "-qq", "-o", "/dev/null", "-p", str(tid)], stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: tracer_pid(tid) == strace.pid, what="strace to trace the thread")
        try:
            result = subprocess.run([*UEMU, "attach", "--duration", "1", str(pid)], capture_output=True, text=True,
                                    timeout=5 * SLOWDOWN, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"uemu attach hung (killed after {5 * SLOWDOWN} s)")
        _one_line_error(result.returncode, result.stderr, (7,))
        assert str(strace.pid) in result.stderr, result.stderr
        others = {thread: state for thread, state in thread_states(pid).items() if thread != tid}
        assert "t" not in others.values(), f"threads left stopped: {others}"
        assert tracer_pid(pid) == 0 and tracer_pid(tid) == strace.pid
        assert_unharmed(survival)
    finally:
        strace.kill()
        strace.wait()


# ---------------------------------------------------------------- 3. attach racing exec



def test_attach_to_a_program_execing_itself_in_a_loop(samples):
    """samples/exec with a generation count it never reaches: each attach (up to
    ten, short) sees a new image mid-exec at some point.  No internal error, and
    the program goes on exec'ing after each."""
    program = subprocess.Popen([samples / "exec", "1000000000"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, env=dict(os.environ, SAMPLE_OUT=os.devnull))
    try:
        for _ in range(10):
            result = subprocess.run([*UEMU, "attach", "--duration", "0.2", str(program.pid)], capture_output=True,
                                    text=True, timeout=30 * SLOWDOWN, check=False)
            assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr
            assert result.returncode in (0, 7), result.stderr
            time.sleep(0.1)  # a hundred generations or so, each passing its probe
            assert program.poll() is None, f"the program ended with status {program.returncode}"
    finally:
        program.kill()
        program.wait()


# ---------------------------------------------------------------- kill -9



def test_kill_9_of_attach_leaves_the_target_unharmed(survival):
    """``kill -9`` of ``uemu attach`` under a hot guarded probe: the threads' next
    hits run the original instruction, the counters come back to 0."""
    cli = attach_cli(str(survival.pid), "survival:hot")
    armed = _turns(survival) or 0
    wait_until(lambda: (_turns(survival) or 0) > armed + 50, what="traced hot turns")
    cli.kill()
    cli.communicate(timeout=30 * SLOWDOWN)
    assert_unharmed(survival)



def test_kill_9_of_attach_leaves_no_rendezvous_breakpoint(samples):
    """uemu's own breakpoint at ld.so's ``_dl_debug_state`` (c3 -> cc) is covered
    as the probes are: after ``kill -9`` the program's next dlopen, the first
    trap it meets (the probe is on a function not called then), goes through."""
    program = samples / "dlopen"
    with Tracee([program]) as tracee:
        tracee.wait_sync("before-dlopen")
        cli = attach_cli(str(tracee.pid), f"{program}:sample_count_arg")
        assert tracer_pid(tracee.pid) == cli.pid
        cli.kill()
        cli.communicate(timeout=30 * SLOWDOWN)
        tracee.release()
        wait_until(lambda: tracee.process.poll() is not None
                   or ("sync", "before-mprotect") in [(line.kind, line.word) for line in tracee.lines()],
                   what="the dlopen")
        assert tracee.process.poll() is None, f"the program ended with {_status(tracee)} at its dlopen"
        assert text_differences(tracee.pid) == []
