"""Options as users type them: usage errors (exit 2, one line) found before
anything is written into a process, a failure after arming that still leaves
the program as it was, short forms and options anywhere before ``--``, and
several processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from test_attach import _paused_sema, _semaphores, _values
from tracee import (
    SLOWDOWN,
    attach_cli,
    differences,
    file_memory,
    one_error_line,
    stop_cli,
    tracer_pid,
    uemu_cli,
    wait_until,
)

CLOSED_STDOUT = ("sh", "-c", 'exec "$@" >&-', "sh")


@pytest.mark.parametrize("argv, words", [
    ([], ["required: COMMAND"]),
    (["lsit"], ["invalid choice: 'lsit'"]),
    (["run", "--duration", "-1", "--", "true"], ["--duration", "'-1'", "more than 0"]),
    (["run", "--duration", "nan", "--", "true"], ["'nan'"]),
    (["run", "--duration", "inf", "--", "true"], ["'inf'"]),
    (["run", "--duration", "1e300", "--", "true"], ["'1e300'", "at most 1e+09"]),
    (["run", "--max-events", "0", "--", "true"], ["--max-events", "at least 1"]),
    (["run", "--format", "%", "--", "true"], ["--format", "unsupported conversion"]),
    (["run", "--format", "%999999999999d", "--", "true"], ["width 999999999999"]),
    (["run", "--format", "%.99999999999f", "--", "true"], ["precision 99999999999"]),
    (["run", "-s", "-1", "--", "true"], ["string size"]),
    (["run", "--ring-size", "3M", "--", "true"], ["--ring-size", "'3M'", "power of two from 64K to 1G"]),
    (["run", "--ring-size", "32K", "--", "true"], ["'32K'", "power of two"]),
    (["run", "--ring-size", "2G", "--", "true"], ["'2G'", "power of two"]),
    (["run", "--ring-size", "16MiB", "--", "true"], ["not a size: '16MiB'"]),
    (["run", "--json", "--count", "--", "true"], ["not allowed with"]),
    (["run", "--json", "--format", "%d", "--", "true"], ["--format", "--json"]),
    (["run", "--slice", "a:b=c:d", "--", "true"], ["--slice", "chrome"]),
    (["run", "--output-format", "chrome", "--slice", "a:b", "--", "true"], ["BEGIN=END"]),
    (["run", "--output-format", "chrome", "--", "true"], ["-o FILE"]),
    (["run", "--ready-file", "/nonexistent/x", "--", "true"], ["--ready-file", "no directory /nonexistent"]),
    (["run", "--ready-file", "/tmp", "--", "true"], ["is a directory"]),
    (["run", "-o", "/nonexistent/out", "--", "true"], ["-o /nonexistent/out", "No such file"]),
    (["run"], ["run needs a command"]),
    (["run", "basic:loop", "--"], ["run needs a command"]),
    (["attach"], ["attach needs a PID"]),
    (["attach", "sema:*", "1"], ["PIDs come before the PROBEs"]),
    (["attach", "-p", "x1"], ["not a PID"]),
    (["attach", "--mappings", "seccomp", "1"], ["--mappings seccomp needs 'uemu run'"]),
])
def test_usage_errors_exit_2_with_one_line(uemu, argv, words):
    one_error_line(uemu(*argv), 2, *words)


def test_version(uemu):
    from uemu import __version__

    result = uemu("--version")
    assert result.returncode == 0 and result.stdout == f"uemu {__version__}\n"


@pytest.mark.parametrize("options, prefix, words", [
    (["--format", "%q", "sema:guarded"], (), ["unsupported conversion at '%q'"]),
    (["--ready-file", "/nonexistent/x"], (), ["no directory"]),
    (["--ready-file", "/tmp"], (), ["is a directory"]),
    (["--duration", "nan"], (), ["--duration"]),
    (["--format", "%.99999999999f"], (), ["precision"]),
    (["--mappings", "seccomp"], (), ["needs 'uemu run'"]),
    ([], CLOSED_STDOUT, ["stdout is closed"]),
], ids=["format", "ready-missing-dir", "ready-dir", "duration", "precision", "mappings", "stdout-closed"])
def test_a_bad_option_is_refused_before_anything_is_armed(samples, uemu, options, prefix, words):
    """Issue 9: these exited after arming, leaving breakpoints, the rendezvous
    breakpoint and raised semaphores in a program that then died of SIGTRAP."""
    with _paused_sema(samples) as tracee:
        addresses = _semaphores(tracee)
        before = file_memory(tracee.pid)
        one_error_line(uemu("attach", str(tracee.pid), *options, prefix=prefix), 2, *words)
        assert differences(before, file_memory(tracee.pid)) == []
        assert _values(tracee.pid, addresses) == dict.fromkeys(addresses, 0)
        assert tracer_pid(tracee.pid) == 0
        tracee.run_out()


def test_run_checks_its_options_before_starting_the_command(uemu, tmp_path):
    marker = tmp_path / "started"
    one_error_line(uemu("run", "--format", "%q", "--", "sh", "-c", f"touch {marker}"), 2, "%q")
    assert not marker.exists()


def test_a_failure_after_arming_leaves_the_program_as_it_was(samples, uemu, tmp_path):
    """The ready file is made after arming; a name too long for the file system
    fails only then, and the session's way out restores everything."""
    with _paused_sema(samples) as tracee:
        addresses = _semaphores(tracee)
        before = file_memory(tracee.pid)
        ready = tmp_path / ("r" * 300)
        result = uemu("attach", "--ready-file", str(ready), str(tracee.pid))
        one_error_line(result, 1, "cannot create --ready-file", "File name too long")
        assert differences(before, file_memory(tracee.pid)) == []
        assert _values(tracee.pid, addresses) == dict.fromkeys(addresses, 0)
        assert tracer_pid(tracee.pid) == 0
        tracee.run_out()


def test_output_that_cannot_be_written_is_an_error_after_restoring(samples):
    with _paused_sema(samples) as tracee:
        before = file_memory(tracee.pid)
        cli = attach_cli("--duration", "2", "-o", "/dev/full", str(tracee.pid))
        tracee.release()
        tracee.wait_sync("phase")
        code, _, err = stop_cli(cli, None)
        # The few hits fit in the buffer: the failure shows at the last flush.
        assert code == 1 and err == "uemu: cannot write hits to /dev/full: No space left on device\n", err
        assert differences(before, file_memory(tracee.pid)) == []
        tracee.run_out()


def test_a_reader_that_leaves_ends_tracing_quietly(samples):
    """``uemu attach PID | head``: the write that fails stops tracing, the session
    restores the program, and uemu exits 0 without a word."""
    target = subprocess.Popen([str(samples / "longrun"), "2", "1", "60000"],
                              env=dict(os.environ, SAMPLE_OUT=os.devnull))
    try:
        wait_until(lambda: len(os.listdir(f"/proc/{target.pid}/task")) >= 3, what="the threads")
        text_before = file_memory(target.pid, writable=False)
        cli = uemu_cli("attach", str(target.pid), "longrun:beat")
        assert cli.stdout.readline()
        cli.stdout.close()
        started = time.monotonic()
        assert cli.wait(30) == 0
        assert cli.stderr.read() == ""
        assert time.monotonic() - started < 20
        assert target.poll() is None and tracer_pid(target.pid) == 0
        assert differences(text_before, file_memory(target.pid, writable=False)) == []
    finally:
        target.send_signal(signal.SIGTERM)
        assert target.wait(20) == 0


def test_short_forms_and_options_anywhere_before_the_command(samples, uemu):
    env = ("env", "SAMPLE_OUT=/dev/null")
    counted = uemu("run", "basic:loop", "-c", "basic:start", "--", str(samples / "basic"), "3", prefix=env)
    assert counted.returncode == 0 and counted.stderr.splitlines() == ["basic:loop 3", "basic:start 1"]
    short = uemu("run", "-s", "5", "basic:string", "--format", "%s", "--", str(samples / "basic"), "1", prefix=env)
    assert short.stderr.splitlines() == ["hello"]


def test_attach_takes_options_after_the_pid_and_p(samples, uemu, tmp_path):
    with _paused_sema(samples) as tracee:
        for pid_words in ([str(tracee.pid)], ["-p", str(tracee.pid)]):
            result = uemu("attach", *pid_words, "--duration", "0.3", "sema:guarded", "-c", "sema:always")
            assert result.returncode == 0, result.stderr
            assert result.stdout.splitlines() == ["sema:always 0", "sema:guarded 0"]
        tracee.run_out()


def test_attach_several_running_processes(samples, tmp_path):
    targets = [subprocess.Popen([str(samples / "longrun"), "1", "2", "60000"],
                                env=dict(os.environ, SAMPLE_OUT=os.devnull)) for _ in range(2)]
    events = tmp_path / "events"
    try:
        cli = uemu_cli("attach", "--duration", "1", "--json", *(str(t.pid) for t in targets), "longrun:beat",
                       "-o", str(events))
        try:
            _, err = cli.communicate(timeout=15 * SLOWDOWN)  # uemu's start-up: 15 s under TCG
        except subprocess.TimeoutExpired:
            cli.kill()
            cli.communicate()
            raise
        assert cli.returncode == 0 and err == "", err
        pids = {json.loads(line)["pid"] for line in events.read_text().splitlines()}
        assert pids == {t.pid for t in targets}
        assert all(t.poll() is None and tracer_pid(t.pid) == 0 for t in targets)
    finally:
        for target in targets:
            target.kill()
            target.wait()
