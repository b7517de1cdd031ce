"""The tracing commands as users run them: output formats, exit statuses, and
one-line errors with documented exit codes."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from samplelog import expected_hits, parse
from tracee import attach_cli, compile_program, one_error_line, stop_cli, tracer_pid, wait_until


def uemu(*args: str, stdin: str | None = None, prefix: tuple[str, ...] = (), env=None):
    return subprocess.run([*prefix, sys.executable, "-m", "uemu", *args], capture_output=True, text=True,
                          input=stdin, timeout=60, env=env)


# ---- run: the command's own status and streams ---------------------------------------


@pytest.mark.parametrize("script, status", [("exit 0", 0), ("exit 3", 3), ("kill -TERM $$", 128 + 15),
                                            ("kill -KILL $$", 128 + 9)])
def test_run_exits_with_the_commands_status(script, status):
    assert uemu("run", "--", "sh", "-c", script).returncode == status


def test_run_passes_stdin_and_stdout_through():
    result = uemu("run", "--", "sh", "-c", "cat; echo to-stderr >&2", stdin="through the pipe\n")
    assert result.returncode == 0
    assert result.stdout == "through the pipe\n"
    assert result.stderr == "to-stderr\nuemu: warning: nothing was traced: no SDT probe in sh or anything it loaded\n"


def test_run_reports_hits_on_stderr_and_leaves_stdout_to_the_command(samples):
    result = uemu("run", "basic:loop", "--", str(samples / "basic"), "2",
                  env=dict(os.environ, SAMPLE_OUT=os.devnull))
    lines = [line for line in result.stderr.splitlines() if " basic:loop " in line]
    assert result.returncode == 0 and len(lines) == 2
    assert re.fullmatch(r"\d+\.\d{6} (\d+)/\1 basic:loop 0 0 1 \d+", lines[0]), lines[0]
    assert "basic:loop" not in result.stdout


def test_json_lines_have_exactly_the_documented_keys(samples, tmp_path):
    out = tmp_path / "events"
    env = dict(os.environ, SAMPLE_OUT=str(tmp_path / "truth"))
    result = uemu("run", "--json", "-o", str(out), "--", str(samples / "basic"), "2", env=env)
    assert result.returncode == 0 and result.stderr == ""
    events = [json.loads(line) for line in out.read_text().splitlines()]
    keys = ["ts_ns", "pid", "tid", "object", "provider", "name", "address", "args", "specs"]
    assert events and all(list(e) == keys for e in events)
    truth = expected_hits(parse((tmp_path / "truth").read_text()))
    assert [(f"{e['provider']}:{e['name']}", tuple(e["args"]), e["tid"]) for e in events] == truth
    assert all(e["object"] == str(samples / "basic") for e in events)
    assert sorted(e["ts_ns"] for e in events) == [e["ts_ns"] for e in events]
    now = time.monotonic_ns()
    assert all(now - 60_000_000_000 < e["ts_ns"] < now for e in events)  # CLOCK_MONOTONIC


def test_format_applies_conversions_in_order_and_reads_strings(samples):
    result = uemu("run", "--format", r"s=%s n=%u hex=%#x pct=%% c=%c", "basic:string", "--",
                  str(samples / "basic"), "1")
    line = next(line for line in result.stderr.splitlines() if line.startswith("s="))
    assert line == "s=hello, probe n=12 hex=? pct=% c=?"  # two arguments for three conversions
    short = uemu("run", "--format", "%s", "--strsize", "5", "basic:string", "--", str(samples / "basic"), "1")
    assert "hello" in short.stderr.splitlines() and "hello," not in short.stderr


def test_count_prints_one_line_per_probe_at_the_end(samples):
    result = uemu("run", "--count", "basic:*", "--", str(samples / "basic"), "4")
    counts = dict(line.rsplit(" ", 1) for line in result.stderr.splitlines() if line.startswith("basic:"))
    assert counts == {"basic:end": "1", "basic:loop": "4", "basic:start": "1", "basic:string": "1",
                      "basic:twelve": "1", "basic:types": "1"}


@pytest.fixture(scope="module")
def escaper(tmp_path_factory):
    """A program whose probe passes a string full of terminal control bytes."""
    return compile_program(
        tmp_path_factory.mktemp("escaper"), "escaper",
        '#include <sys/sdt.h>\n'
        'int main(void) { const char *s = "red\\033[31m bell\\a tab\\t nl\\n hi\\377"; '
        'STAP_PROBE1(esc, text, s); return 0; }\n',
    )


def test_text_from_the_tracee_is_escaped(escaper):
    result = uemu("run", "--format", "%s", "--", str(escaper))
    assert result.returncode == 0
    assert "\x1b" not in result.stderr and "\a" not in result.stderr and "\xff" not in result.stderr
    assert r"red\x1b[31m bell\x07 tab\t nl\n hi\xff" in result.stderr.splitlines()


# ---- attach: errors, one line each ------------------------------------------------------


def test_no_such_pid():
    one_error_line(uemu("attach", "999999999"), 3, "no such process")


def test_kernel_thread():
    one_error_line(uemu("attach", "2"), 7, "kernel thread")


def test_zombie():
    child = subprocess.Popen(["sh", "-c", "sleep 0.1"])
    wait_until(lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
               what="a zombie")
    try:
        one_error_line(uemu("attach", str(child.pid)), 7, "zombie")
    finally:
        child.wait()


def test_already_traced_names_the_tracer(samples):
    target = subprocess.Popen(["sleep", "60"])
    first = attach_cli(str(target.pid))
    try:
        wait_until(lambda: tracer_pid(target.pid) == first.pid, what="the first tracer")
        one_error_line(uemu("attach", str(target.pid)), 7, "already traced", f"by {first.pid}", "python")
    finally:
        stop_cli(first, signal.SIGINT)
        target.kill()
        target.wait()


def test_permission_denied_explains_the_ways_out():
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run a process of another user and uemu without capabilities")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine to own the target")
    target = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "sleep", "60"])
    try:
        wait_until(lambda: Path(f"/proc/{target.pid}/status").read_text().count("65534") >= 1, what="nobody")
        result = uemu("attach", str(target.pid),
                      prefix=("setpriv", "--bounding-set=-all", "--inh-caps=-all"))
        one_error_line(result, 4, "permission denied", "CAP_SYS_PTRACE", "uemu run")
    finally:
        target.kill()
        target.wait()


def test_no_probe_matches_names_the_near_ones(samples):
    """With --strict, before the process is touched; without, the word waits for
    objects mapped later and is said at the end with the closest probes."""
    target = subprocess.Popen([str(samples / "sema"), "1"], stdin=subprocess.PIPE,
                              env=dict(os.environ, SAMPLE_SYNC="1", SAMPLE_OUT=os.devnull))
    try:
        one_error_line(uemu("attach", "--strict", str(target.pid), "sema:gaurded"), 6, "sema:gaurded",
                       "sema:guarded")
        assert tracer_pid(target.pid) == 0
        result = uemu("attach", "--duration", "0.5", str(target.pid), "sema:gaurded")
        assert result.returncode == 0
        assert [line.split(";")[-1] for line in result.stderr.splitlines()] == [
            " it stays pending for objects mapped later (dlopen, exec, children followed with -f)",
            " closest probes seen: sema:guarded, sema:always, sema:persite"], result.stderr
    finally:
        target.kill()
        target.wait()


def test_run_errors(tmp_path):
    one_error_line(uemu("run", "--", "/no/such/program"), 127, "no such file")
    one_error_line(uemu("run", "--", "/etc/passwd"), 126, "Permission denied")
    # a probe word is not looked for in a command that cannot start: no warning first
    one_error_line(uemu("run", "x:y", "--", "/no/such/program"), 127, "no such file")
    one_error_line(uemu("run", "--strict", "x:y", "--", "no-such-command-here"), 127, "no such file")
    one_error_line(uemu("run", "--", ""), 127, "'': no such file")  # as env(1); execvp raises ValueError
    script = tmp_path / "script"
    script.write_text("#!/no/such/interpreter\n")
    script.chmod(0o755)
    one_error_line(uemu("run", "x:y", "--", str(script)), 127, "no such file")
    one_error_line(uemu("run", "--strict", "nothing:here", "--", "true"), 6, "nothing:here")


@pytest.mark.parametrize("how", ["run-maps-it", "run-does-not", "attach-does-not"])
def test_a_raw_probe_its_file_cannot_hold_is_refused_at_start(samples, how) -> None:
    """PATH:SYMBOL and PATH:OFFSET are checked against PATH before anything runs,
    whether or not the program maps it (bpftrace's attach refuses a missing symbol, the
    kernel's registration an offset past the file): not a word pending for ever."""
    path = samples / "bench"
    target = subprocess.Popen([str(samples / "sema"), "1"], stdin=subprocess.PIPE,
                              env=dict(os.environ, SAMPLE_SYNC="1", SAMPLE_OUT=os.devnull))
    try:
        def traced(word: str) -> subprocess.CompletedProcess[str]:
            if how == "attach-does-not":
                return uemu("attach", "--duration", "5", "-o", os.devnull, str(target.pid), word)
            return uemu("run", "-o", os.devnull, word, "--", *([str(path), "1"] if how == "run-maps-it" else ["true"]))

        missing = traced(f"{path}:no_such_symbol")
        one_error_line(missing, 6, f"{path} has no symbol 'no_such_symbol'")
        assert "did you mean" not in missing.stderr  # it is no name of a probe
        one_error_line(traced(f"{path}:main+0x100000"), 8, "not in an executable segment")
        one_error_line(traced(f"{path}:0x10000000"), 8, "offset 0x10000000 is beyond the file's")
        assert tracer_pid(target.pid) == 0
    finally:
        target.kill()
        target.wait()
