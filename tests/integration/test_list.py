"""``uemu list`` as users run it: a fresh interpreter, real files, real processes.

What a file's probes are is checked against readelf in test_readelf_oracle.py;
here the command line must show exactly those (uemu.sdt's probes), in its two
formats, filtered by patterns, and for a running process at the addresses the
process itself uses.  Every failure is one line on stderr and a documented exit
status (cli.EXIT_CODES).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from uemu import sdt

if TYPE_CHECKING:
    from conftest import Build

Uemu = Callable[..., subprocess.CompletedProcess[str]]
"""The conftest fixture that runs the command line."""
FILE_KEYS = ["object", "provider", "name", "address", "file_offset", "semaphore", "semaphore_offset", "args",
             "build_id"]
PROCESS_KEYS = [*FILE_KEYS, "runtime_address", "runtime_semaphore"]


def json_rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def file_row(probe: sdt.Probe) -> dict:
    """The JSON record of a probe listed from its file."""
    return {key: getattr(probe, key) for key in FILE_KEYS}


def file_part(rows: list[dict]) -> list[dict]:
    """Process rows without their runtime fields."""
    return [{key: row[key] for key in FILE_KEYS} for row in rows]


def one_error_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    """Assert a failure as the CLI promises it: the status, one stderr line, no stdout."""
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("uemu: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


# ---------------------------------------------------------------- a file


@pytest.mark.parametrize("sample", ["sema", "multisite", "basic", "libsdtlib.so", "argforms"])
def test_json_is_every_site_with_the_issue_keys(samples: Path, uemu: Uemu, sample: str) -> None:
    path = str(samples / sample)
    result = uemu("list", path, "--json")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    rows = json_rows(result.stdout)
    assert all(list(row) == FILE_KEYS for row in rows)
    assert rows == [file_row(p) for p in sdt.open_elf(path).probes] and rows


TABLE_LINE = re.compile(
    r"(?P<object>\S+) (?P<probe>\S+:\S+) \[(?P<count>\d+) sites?\] (?P<addresses>0x[0-9a-f]+(?:,0x[0-9a-f]+)*) "
    r"semaphore=(?P<semaphore>-|(?P<sema_address>0x[0-9a-f]+)\(off (?P<sema_offset>0x[0-9a-f]+)\)"
    r"(?:,0x[0-9a-f]+\(off 0x[0-9a-f]+\))*) "
    r"args: (?P<args>.*)"
)


@dataclass(frozen=True)
class Row:
    """A table line as the issue describes it."""

    object: str
    probe: str
    addresses: list[int]
    semaphore: tuple[int, int] | None
    layouts: list[str]


def table(stdout: str) -> list[Row]:
    rows = []
    for line in stdout.splitlines():
        m = TABLE_LINE.fullmatch(line)
        assert m, f"not a table line: {line!r}"
        addresses = [int(a, 16) for a in m["addresses"].split(",")]
        assert int(m["count"]) == len(addresses), line
        semaphore = None if m["semaphore"] == "-" else (int(m["sema_address"], 16), int(m["sema_offset"], 16))
        rows.append(Row(m["object"], m["probe"], addresses, semaphore, m["args"].split(" | ")))
    return rows


def expected_table(probes: list[sdt.Probe]) -> list[Row]:
    """One row per (object, provider:name), sites in note order, distinct layouts."""
    rows = []
    for (obj, provider, name), sites in sdt.group_sites(probes).items():
        semaphores = {(p.semaphore, p.semaphore_offset) for p in sites if p.semaphore is not None}
        assert len(semaphores) <= 1, "see test_table_shows_every_semaphore_of_a_name"
        rows.append(Row(obj, f"{provider}:{name}", [p.address for p in sites], next(iter(semaphores), None),
                        list(dict.fromkeys(p.args for p in sites))))
    return rows


@pytest.mark.parametrize("sample", ["multisite", "basic", "libsdtlib.so", "argforms"])
def test_table_columns(samples: Path, uemu: Uemu, sample: str) -> None:
    """object, provider:name, [N sites], addresses, semaphore=ADDR(off OFF) or -, args: layouts."""
    path = str(samples / sample)
    result = uemu("list", path)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert table(result.stdout) == expected_table(sdt.open_elf(path).probes)


def test_table_shows_every_semaphore_of_a_name(samples: Path, uemu: Uemu) -> None:
    """sema:persite has one semaphore per site (the Rust probe crate's way)."""
    path = str(samples / "sema")
    persite = [p for p in sdt.open_elf(path).probes if p.name == "persite"]
    assert len({p.semaphore for p in persite}) == 2
    line = next(line for line in uemu("list", path).stdout.splitlines() if " sema:persite " in line)
    for p in persite:
        assert f"{p.semaphore:#x}(off {p.semaphore_offset:#x})" in line


@pytest.mark.parametrize(
    ("pattern", "probes"),
    [
        ("sema:guarded", {"sema:guarded"}),
        ("sema:*", {"sema:guarded", "sema:persite", "sema:always"}),
        ("*:pers?te", {"sema:persite"}),
        ("sema:[ag]*", {"sema:guarded", "sema:always"}),
        ("sema:sema:always", {"sema:always"}),  # OBJECT by basename
        ("s*a:sema:always", {"sema:always"}),  # OBJECT as a glob
        ("{path}:sema:always", {"sema:always"}),  # OBJECT as the path
    ],
)
def test_patterns_select(samples: Path, uemu: Uemu, pattern: str, probes: set[str]) -> None:
    path = str(samples / "sema")
    result = uemu("list", path, pattern.format(path=path), "--json")
    assert result.returncode == 0, result.stderr
    rows = json_rows(result.stdout)
    assert {f"{r['provider']}:{r['name']}" for r in rows} == probes
    want = [file_row(p) for p in sdt.open_elf(path).probes if p.full_name in probes]
    assert rows == want


def test_several_patterns_are_a_union(samples: Path, uemu: Uemu) -> None:
    result = uemu("list", str(samples / "sema"), "sema:always", "*:guarded", "--json")
    assert sorted(r["name"] for r in json_rows(result.stdout)) == ["always", "guarded", "guarded", "guarded"]


@pytest.mark.parametrize(
    ("pattern", "near"),
    [("sema:gaurded", "sema:guarded"), ("sema:allways", "sema:always"), ("sema:persit", "sema:persite")],
)
def test_no_match_names_near_matches(samples: Path, uemu: Uemu, pattern: str, near: str) -> None:
    error = one_error_line(uemu("list", str(samples / "sema"), pattern), 6)
    assert pattern in error and near in error


@pytest.mark.parametrize("pattern", ["other:sema:always", "sema:nothing_like_this_at_all"])
def test_no_match_exits_6(samples: Path, uemu: Uemu, pattern: str) -> None:
    assert pattern in one_error_line(uemu("list", str(samples / "sema"), pattern), 6)


def test_a_kernel_style_place_is_not_a_list_pattern(samples: Path, uemu: Uemu) -> None:
    path = str(samples / "sema")
    assert "globs" in one_error_line(uemu("list", path, f"{path}:0x1000"), 5)


@pytest.fixture(scope="session")
def no_probes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    out = tmp_path_factory.mktemp("noprobes")
    (out / "plain.c").write_text("int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-o", str(out / "plain"), str(out / "plain.c")], check=True)
    return out / "plain"


def test_no_sdt_notes_is_a_note_not_an_error(no_probes: Path, uemu: Uemu) -> None:
    for args in ([], ["--json"]):
        result = uemu("list", str(no_probes), *args)
        assert (result.returncode, result.stdout) == (0, "")
        assert result.stderr == f"uemu: no SDT probes in {no_probes}\n"


def test_errors_of_files(tmp_path: Path, uemu: Uemu) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an ELF file\n")
    short = tmp_path / "short"
    short.write_bytes(b"\x7fELF\x02\x01\x01")
    assert "no such file" in one_error_line(uemu("list", str(tmp_path / "missing")), 3)
    assert "not an ELF file" in one_error_line(uemu("list", str(text)), 5)
    assert str(short) in one_error_line(uemu("list", str(short)), 5)
    assert "directory" in one_error_line(uemu("list", str(tmp_path)), 5)


def test_no_such_pid(uemu: Uemu) -> None:
    beyond = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    assert str(beyond) in one_error_line(uemu("list", str(beyond)), 3)


# ---------------------------------------------------------------- permissions

UNPRIVILEGED = {
    # The brief's way; it fails where the interpreter lives in a home only root may enter.
    "nobody": ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"),
    # uid 0 with empty capability sets: no CAP_DAC_OVERRIDE for a mode-000 file,
    # no CAP_SYS_PTRACE for a process holding capabilities we lack.
    "root-without-capabilities": ("setpriv", "--bounding-set=-all", "--inh-caps=-all"),
}


@pytest.fixture(scope="session", params=sorted(UNPRIVILEGED))
def unprivileged(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """A prefix that runs the CLI without privileges, if this machine allows it."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop privileges")
    prefix = UNPRIVILEGED[request.param]
    probe = subprocess.run([*prefix, sys.executable, "-c", "import uemu.cli"], capture_output=True, text=True,
                           check=False)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"{request.param} cannot run uemu with {sys.executable}: {last}")
    return prefix


def test_unreadable_file(samples: Path, uemu: Uemu, unprivileged: tuple[str, ...]) -> None:
    """Mode 000 in a directory everyone may enter (pytest's tmp_path is private)."""
    with tempfile.TemporaryDirectory() as directory:
        os.chmod(directory, 0o755)
        locked = Path(directory) / "sema"
        shutil.copyfile(samples / "sema", locked)
        locked.chmod(0)
        error = one_error_line(uemu("list", str(locked), prefix=unprivileged), 4)
    assert "permission denied" in error and str(locked) in error


def test_root_process(uemu: Uemu, unprivileged: tuple[str, ...]) -> None:
    with subprocess.Popen(["sleep", "60"]) as root_process:
        try:
            error = one_error_line(uemu("list", str(root_process.pid), prefix=unprivileged), 4)
        finally:
            root_process.kill()
    assert "permission denied" in error and str(root_process.pid) in error


# ---------------------------------------------------------------- a process


@dataclass
class Running:
    """A sample started with SAMPLE_SYNC=1, held at its ``sync end`` line."""

    process: subprocess.Popen[str]
    lines: list[str]

    @property
    def pid(self) -> int:
        return self.process.pid

    def semaphores(self) -> dict[int, tuple[str, int]]:
        """What its ``sema PID TID PROBE ADDRESS VALUE`` lines said: address -> (probe, value)."""
        return {int(w[4]): (w[3], int(w[5])) for w in map(str.split, self.lines) if w[0] == "sema"}


@contextmanager
def running(argv: list[str], sample_args: tuple[str, ...] = ("1",)) -> Iterator[Running]:
    """Run until the sample's last phase ends; answer its other sync lines."""
    env = dict(os.environ, SAMPLE_SYNC="1")
    env.pop("SAMPLE_OUT", None)
    with subprocess.Popen([*argv, *sample_args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          env=env) as process:
        try:
            lines = []
            for line in process.stdout:
                lines.append(line)
                if line.split()[:1] == ["sync"]:
                    if line.split()[3] == "end":
                        break
                    process.stdin.write("\n")
                    process.stdin.flush()
            assert lines and lines[-1].split()[3] == "end", lines
            yield Running(process, lines)
            process.stdin.write("\n")
            process.stdin.close()
            assert process.wait(timeout=10) == 0
        finally:
            process.kill()


def maps_of(pid: int) -> list[tuple[int, int, str, str]]:
    """(start, offset, perms, path) of each file mapping, from /proc/PID/maps."""
    rows = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].startswith("/"):
            rows.append((int(fields[0].split("-")[0], 16), int(fields[2], 16), fields[1], fields[5]))
    return rows


def load_bias(pid: int, path: str, obj: sdt.ElfObject) -> int:
    """Where the kernel put the file: its offset-0 mapping minus the first PT_LOAD page."""
    first_page = min(seg.p_vaddr for seg in obj.segments) & ~0xFFF
    names = (path, f"{path} (deleted)")
    return min(start for start, offset, _, p in maps_of(pid) if p in names and offset == 0) - first_page


def memory(pid: int, address: int, size: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(address)
        return mem.read(size)


def check_runtime(rows: list[dict], sample: Running, source: dict[str, Path] | None = None) -> None:
    """Every row at the address the process uses: load bias + link-time address
    (from /proc/PID/maps), the file's SDT nop in its memory there, and every semaphore
    the process printed (with the value it read)."""
    source = source or {}
    printed = sample.semaphores()
    for row in rows:
        assert list(row) == PROCESS_KEYS
        obj = sdt.open_elf(str(source.get(row["object"], row["object"])))
        bias = load_bias(sample.pid, row["object"], obj)
        assert row["runtime_address"] == bias + row["address"], row
        with open(source.get(row["object"], row["object"]), "rb") as file:
            file.seek(row["file_offset"])
            nop = file.read(2)  # the probe's nop as the file holds it (x86: 90; riscv c.nop: 01 00)
        assert memory(sample.pid, row["runtime_address"], 2) == nop, row
        if row["semaphore"] is None:
            assert row["runtime_semaphore"] is None
            continue
        assert row["runtime_semaphore"] == bias + row["semaphore"], row
        value = int.from_bytes(memory(sample.pid, row["runtime_semaphore"], 2), "little")
        if row["runtime_semaphore"] in printed:
            assert printed.pop(row["runtime_semaphore"]) == (f"{row['provider']}:{row['name']}", value)
    assert printed == {}, f"semaphores the process printed but uemu did not list: {printed}"


def test_pid_of_a_program_with_a_library(runnable_build: Build, uemu: Uemu) -> None:
    directory = runnable_build.directory
    with running([str(directory / "linked")]) as sample:
        result = uemu("list", str(sample.pid), "--json")
        text = uemu("list", str(sample.pid))
        assert result.returncode == 0 and result.stderr == "", result.stderr
        rows = json_rows(result.stdout)
        check_runtime(rows, sample)
        assert sample.semaphores(), "the sample printed no semaphore"
        assert table(text.stdout) and all(str(directory) in line for line in text.stdout.splitlines())
    assert file_part(rows) == [{**file_row(p), "object": str(directory / name)} for name in ("linked", "libsdtlib.so")
                               for p in sdt.open_elf(str(directory / name)).probes]


def test_pid_semaphores_per_site(runnable_build: Build, uemu: Uemu) -> None:
    """sema prints each of its four semaphores' addresses: they are uemu's runtime_semaphore."""
    with running([str(runnable_build.directory / "sema")]) as sample:
        rows = json_rows(uemu("list", str(sample.pid), "--json").stdout)
        assert len(sample.semaphores()) == 4
        check_runtime(rows, sample)


def test_pid_patterns_by_object(samples: Path, uemu: Uemu) -> None:
    with running([str(samples / "linked")]) as sample:
        pid = str(sample.pid)
        both = json_rows(uemu("list", pid, "common:both", "--json").stdout)
        in_library = json_rows(uemu("list", pid, "libsdtlib.so:common:both", "--json").stdout)
        error = one_error_line(uemu("list", pid, "libsdtlib.so:common:bot"), 6)
    assert sorted(Path(r["object"]).name for r in both) == ["libsdtlib.so", "linked"]
    assert [Path(r["object"]).name for r in in_library] == ["libsdtlib.so"]
    assert "common:both" in error


def test_pid_whose_file_was_replaced(samples: Path, tmp_path: Path, uemu: Uemu) -> None:
    """The program's file is renamed over while it runs: maps says "(deleted)",
    the path now holds another program; uemu reads the mapped file."""
    prog = tmp_path / "prog"
    shutil.copyfile(samples / "sema", prog)
    prog.chmod(0o755)
    with running([str(prog)]) as sample:
        shutil.copyfile(samples / "basic", tmp_path / "new")
        (tmp_path / "new").rename(prog)
        rows = [r for r in json_rows(uemu("list", str(sample.pid), "--json").stdout) if r["object"] == str(prog)]
        check_runtime(rows, sample, source={str(prog): samples / "sema"})
    assert file_part(rows) == [{**file_row(p), "object": str(prog)} for p in sdt.open_elf(str(samples / "sema")).probes]


def can_unshare() -> bool:
    return (
        os.geteuid() == 0
        and shutil.which("unshare") is not None
        and subprocess.run(["unshare", "--mount", "true"], capture_output=True, check=False).returncode == 0
    )


def map_files_refused(pid: int, prefix: tuple[str, ...]) -> bool:
    """Whether a lister run under ``prefix`` cannot open the process's map_files
    (it needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE), so uemu must use /proc/PID/root."""
    entry = next(Path(f"/proc/{pid}/map_files").iterdir())
    probe = subprocess.run([*prefix, "head", "-c", "1", str(entry)], capture_output=True, check=False)
    return probe.returncode != 0


@pytest.mark.skipif(not can_unshare(), reason="needs root and unshare --mount for a second mount namespace")
@pytest.mark.parametrize("route", ["map_files", "proc-root"])
def test_pid_in_another_mount_namespace(samples: Path, tmp_path: Path, uemu: Uemu, route: str) -> None:
    """The process runs shown/prog, a bind mount of hidden/ in its own mount
    namespace; here shown/prog is another program.  uemu must read the mapped
    file, checked by device and inode, not the path: through map_files as root,
    through /proc/PID/root (the process's own mount namespace) when neither the
    process nor uemu holds capabilities."""
    shown, hidden = tmp_path / "shown", tmp_path / "hidden"
    shown.mkdir()
    hidden.mkdir()
    shutil.copyfile(samples / "basic", shown / "prog")
    shutil.copyfile(samples / "sema", hidden / "prog")
    for prog in (shown / "prog", hidden / "prog"):
        prog.chmod(0o755)
    lister = () if route == "map_files" else UNPRIVILEGED["root-without-capabilities"]
    if lister and subprocess.run([*lister, "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip(f"this machine's setpriv cannot drop capabilities ({' '.join(lister)})")
    script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(hidden), str(shown),
            *lister, str(shown / "prog"), "1"]
    with running(argv, sample_args=()) as sample:
        assert map_files_refused(sample.pid, lister) == (route == "proc-root")
        result = uemu("list", str(sample.pid), "--json", prefix=lister)
        assert result.returncode == 0, result.stderr
        mine = [r for r in json_rows(result.stdout) if r["object"] == str(shown / "prog")]
        check_runtime(mine, sample, source={str(shown / "prog"): hidden / "prog"})
    assert file_part(mine) == [{**file_row(p), "object": str(shown / "prog")}
                               for p in sdt.open_elf(str(hidden / "prog")).probes]


# ---------------------------------------------------------------- what listing loads


def imported_by_list(target: str) -> set[str]:
    """The modules a fresh ``uemu list TARGET`` imports (``-X importtime``)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "uemu", "list", target],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "uemu.sdt" in imported, "-X importtime printed nothing usable"
    return imported


@pytest.mark.parametrize("target", ["file", "pid"])
def test_listing_imports_no_disassembler(samples: Path, target: str) -> None:
    with running([str(samples / "linked")]) as sample:
        imported = imported_by_list(str(samples / "linked") if target == "file" else str(sample.pid))
    assert {m for m in imported if m.split(".")[0] in ("capstone", "keystone")} == set()


def test_listing_does_not_import_the_tracer(samples: Path) -> None:
    """The 0.1 s budget of ``uemu list`` (tests/bench/bench_list.py): the tracing
    modules cost about half of it to import and listing needs none of them."""
    tracer = {"uemu.session", "uemu.uprobes", "uemu.ptrace", "uemu.xol", "ptrace"}
    assert imported_by_list(str(samples / "sema")) & tracer == set()
