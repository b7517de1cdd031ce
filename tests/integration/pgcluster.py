"""A throw-away PostgreSQL 15 cluster for tests and benchmarks (test_trees.py,
tests/bench/bench_real.py): initdb as a non-root user, a private socket directory,
no TCP."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

POSTGRES = Path("/usr/lib/postgresql/15/bin")


class PostgresCluster:
    """A cluster in ``directory`` (a directory the server's user can reach: PostgreSQL
    refuses to run as root; as root it runs as ``user`` through setpriv), listening
    only on ``directory``'s Unix socket at ``port``; ``settings`` are more ``-c``
    options.  ``with`` gives (the command prefix that runs as that user, directory)."""

    def __init__(self, directory: Path, user: str = "nobody", port: int = 5433, settings: tuple[str, ...] = ()):
        self.directory = directory
        self.port = port
        self.settings = settings
        self.user = user
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            group = "nogroup" if user == "nobody" else user
            self.run_as = ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups"]

    @property
    def postmaster(self) -> int:
        return int((self.directory / "data" / "postmaster.pid").read_text().split()[0])

    def client(self, program: str, *args: str) -> list[str]:
        """The command line of PostgreSQL's ``program`` (pgbench, psql) for this cluster."""
        return [*self.run_as, str(POSTGRES / program), "-h", str(self.directory), "-p", str(self.port),
                "-U", "postgres", *args]

    def __enter__(self) -> tuple[list[str], Path]:
        os.chmod(self.directory, 0o777)
        subprocess.run([*self.run_as, str(POSTGRES / "initdb"), "-D", str(self.directory / "data"), "-A", "trust",
                        "-U", "postgres"], check=True, capture_output=True)
        self._pg_ctl("start")
        return self.run_as, self.directory

    def restart(self) -> None:
        """A new postmaster (its backends have a new address space layout)."""
        self._pg_ctl("restart", "-m", "fast")

    def _pg_ctl(self, action: str, *args: str) -> None:
        options = " ".join([f"-k {self.directory} -p {self.port} -c listen_addresses=''",
                            *(f"-c {s}" for s in self.settings)])
        subprocess.run([*self.run_as, str(POSTGRES / "pg_ctl"), "-D", str(self.directory / "data"), "-w", "-l",
                        str(self.directory / "log"), "-o", options, action, *args], check=True, capture_output=True)

    def __exit__(self, *exc: object) -> None:
        subprocess.run([*self.run_as, str(POSTGRES / "pg_ctl"), "-D", str(self.directory / "data"), "-m",
                        "immediate", "stop"], check=False, capture_output=True)
        shutil.rmtree(self.directory, ignore_errors=True)
