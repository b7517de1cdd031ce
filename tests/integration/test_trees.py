"""Process trees and several processes (issue 11 §2): ``attach -f`` takes the
descendants that exist already, and a session can attach to several processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from pgcluster import POSTGRES, PostgresCluster
from tracee import attach_cli, stop_cli, wait_until

from uemu.events import Event
from uemu.session import Session


def _longruns(samples: Path, out: Path, count: int) -> subprocess.Popen[bytes]:
    """A shell with ``count`` longrun children, which start before any tracer."""
    children = " ".join(f"{samples / 'longrun'} 1 5 &" for _ in range(count))
    return subprocess.Popen(["sh", "-c", f"{children} wait"], env=dict(os.environ, SAMPLE_OUT=str(out)))


def _children(pid: int) -> list[int]:
    from uemu import process

    return process.descendants(pid)


def _end(tree: subprocess.Popen[bytes]) -> None:
    """The children first (once sh is gone they are init's and out of reach), then sh."""
    for child in _children(tree.pid):
        os.kill(child, signal.SIGKILL)
    tree.kill()
    tree.wait()


def _traced_for(session: Session, seconds: float) -> list[Event]:
    events: list[Event] = []
    session.run(events.append, duration=seconds)
    return events


def test_attach_follow_takes_the_existing_descendants(samples, tmp_path):
    tree = _longruns(samples, tmp_path / "lines", 2)
    try:
        wait_until(lambda: len(_children(tree.pid)) == 2, what="the children")
        session = Session(["longrun:tick"], follow_forks=True)
        session.attach(tree.pid)
        events = _traced_for(session, 1.0)
        assert {e.pid for e in events} == set(_children(tree.pid)), "hits from both children, none from sh"
    finally:
        _end(tree)


def test_without_follow_only_the_process_itself(samples, tmp_path):
    tree = _longruns(samples, tmp_path / "lines", 2)
    try:
        wait_until(lambda: len(_children(tree.pid)) == 2, what="the children")
        session = Session(["longrun:tick"])
        session.attach(tree.pid)
        assert _traced_for(session, 0.5) == [], "sh itself has no longrun probes"
    finally:
        _end(tree)


def test_several_processes_in_one_session(samples, tmp_path):
    first = subprocess.Popen([samples / "longrun", "1", "5"], env=dict(os.environ, SAMPLE_OUT=os.devnull))
    second = subprocess.Popen([samples / "longrun", "1", "5"], env=dict(os.environ, SAMPLE_OUT=os.devnull))
    try:
        time.sleep(0.2)
        session = Session(["longrun:tick"])
        session.attach(first.pid)
        session.attach(second.pid)
        events = _traced_for(session, 1.0)
        assert {e.pid for e in events} == {first.pid, second.pid}
    finally:
        for program in (first, second):
            program.kill()
            program.wait()


@pytest.mark.oracle
@pytest.mark.skipif(not (POSTGRES / "pgbench").exists(), reason="PostgreSQL 15 is not installed")
def test_postgres_backends_running_before_attach_count_pgbench_transactions(tmp_path):
    """pgbench's clients connect, then each waits in its first script run (client
    side, no transaction) until uemu is attached to the postmaster with -f: every
    backend existed before uemu came, and transaction__start over them equals the
    transactions pgbench says it processed."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("PostgreSQL refuses to run as root and setpriv is missing")
    with PostgresCluster(Path(tempfile.mkdtemp(prefix="uemu-pg-"))) as (run_as, home):
        go = home / "go"
        script = home / "bench.sql"
        script.write_text(  # pgbench 15 has no :{?var}: -D started=0 defines it for every client
            "\\if :started = 0\n"
            f"\\shell sh -c 'while [ ! -e {go} ]; do sleep 0.02; done'\n"
            "\\set started 1\n\\endif\n"
            "SELECT 1;\n")
        script.chmod(0o644)
        clients, per_client = 4, 200
        bench = subprocess.Popen([*run_as, str(POSTGRES / "pgbench"), "-h", str(home), "-p", "5433", "-U", "postgres",
                                  "-n", "-c", str(clients), "-t", str(per_client), "-D", "started=0", "-f", str(script),
                                  "postgres"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        postmaster = int((home / "data" / "postmaster.pid").read_text().split()[0])
        wait_until(lambda: len(_backends(postmaster)) >= clients, timeout=30, what="pgbench's backends")
        backends = set(_backends(postmaster))
        events = tmp_path / "events.json"
        cli = attach_cli("-f", "--json", "-o", str(events), str(postmaster), "postgresql:transaction__start")
        go.touch()
        out, err = bench.communicate(timeout=120)
        code, _, uemu_err = stop_cli(cli, signal.SIGINT)
        assert code == 0, uemu_err
        processed = int(next(line for line in out.splitlines() if "actually processed" in line)
                        .split(":")[1].split("/")[0])
        assert processed == clients * per_client, out + err
        starts = Counter(json.loads(line)["pid"] for line in events.read_text().splitlines())
        assert sum(n for pid, n in starts.items() if pid in backends) == processed, (starts, backends)


def _backends(postmaster: int) -> list[int]:
    return [pid for pid in _children(postmaster) if "postgres: " in _cmdline(pid) and " postgres [local]" in
            _cmdline(pid)]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            return stream.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
