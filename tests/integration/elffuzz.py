"""A seeded mutator over the samples' ELF files, and the judge of what uemu did
with each input (issue 9 §3: fuzzing).

Shared by integration/test_hostile_fuzz.py (CI's short mode) and
soak/fuzz_elf.py (many more inputs, counts printed).  Mutations aim where
parsers break: bytes and header fields of the notes, truncations, absurd
sizes and offsets in section and program headers, the ELF header's own
fields; and special files that are no ELF at all.  One seed gives one input,
so a failure is repeated with its seed alone.

The judge: uemu must end (no hang), print no traceback and no "internal
error", and exit with a status the README documents; ``run`` must exit with
the command's own status whenever uemu says nothing is wrong (the command is
run once more without uemu, under the same limits, for that).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from elftools.elf.elffile import ELFFile
from tracee import SLOWDOWN

LIST_CODES = frozenset({0, 3, 4, 5})
"""What ``uemu list FILE`` may exit with (README "Exit status")."""
UEMU_CODES = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 126, 127})
"""uemu's own codes: with one of these, stderr says ``uemu: ...``."""
# The test guests emulate their CPU (tests/vm): a hang is told by a longer wait there.
IN_PROCESS_TIMEOUT = 10.0 * SLOWDOWN
SUBPROCESS_TIMEOUT = 30.0 * SLOWDOWN


# ---------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Layout:
    """Where a sample's fields are, read once from the unmodified file."""

    path: Path
    data: bytes
    elf_class: int
    endian: str
    phoff: int
    phnum: int
    phentsize: int
    shoff: int
    shnum: int
    shentsize: int
    sections: dict[str, tuple[int, int, int]]
    """name -> (section header offset, sh_offset, sh_size)."""
    notes: list[int]
    """File offsets of the .note.stapsdt note headers."""

    @property
    def word(self) -> str:
        return "Q" if self.elf_class == 64 else "I"

    @classmethod
    def read(cls, path: Path) -> Layout:
        data = path.read_bytes()
        with path.open("rb") as stream:
            elf = ELFFile(stream)
            sections = {s.name: (elf["e_shoff"] + i * elf["e_shentsize"], s["sh_offset"], s["sh_size"])
                        for i, s in enumerate(elf.iter_sections())}
            layout = cls(path, data, elf.elfclass, "<" if elf.little_endian else ">", elf["e_phoff"], elf["e_phnum"],
                         elf["e_phentsize"], elf["e_shoff"], elf["e_shnum"], elf["e_shentsize"], sections, [])
        if ".note.stapsdt" in sections:
            _, start, size = sections[".note.stapsdt"]
            pos = start
            while pos + 12 <= start + size:
                layout.notes.append(pos)
                namesz, descsz = struct.unpack_from(layout.endian + "II", data, pos)
                pos += 12 + _align4(namesz) + _align4(descsz)
        return layout


def _align4(n: int) -> int:
    return (n + 3) & ~3


def corpus(directories: Sequence[Path], max_notes: int | None = None) -> list[Layout]:
    """Every ELF file with SDT notes in the given build directories (with at
    most ``max_notes``: manysites's thousands of sites cost time, not coverage)."""
    layouts = []
    for directory in directories:
        for path in sorted(directory.iterdir()):
            if path.is_file() and path.read_bytes()[:4] == b"\x7fELF":
                layout = Layout.read(path)
                if layout.notes and (max_notes is None or len(layout.notes) <= max_notes):
                    layouts.append(layout)
    return layouts


# ---------------------------------------------------------------- mutations


def _interesting(size: int, width: int) -> list[int]:
    values = [0, 1, 2, 3, 4, 7, 8, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
              size - 1, size, size + 1, size // 2]
    if width == 8:
        values += [(1 << 63) - 1, 1 << 63, (1 << 64) - 1, 8 << 30, 1 << 40]
    return [v for v in values if 0 <= v < 1 << 8 * width]


Mutation = Callable[[bytearray, Layout, random.Random], str]


def _put(data: bytearray, layout: Layout, rng: random.Random, offset: int, fmt: str, what: str) -> str:
    width = struct.calcsize(fmt)
    if offset + width > len(data):
        return f"{what}: beyond the end"
    value = rng.choice(_interesting(len(data), width)) if rng.random() < 0.8 else rng.getrandbits(8 * width)
    struct.pack_into(layout.endian + fmt, data, offset, value)
    return f"{what}={value:#x}"


def flip_note_bytes(data: bytearray, layout: Layout, rng: random.Random) -> str:
    _, start, size = layout.sections[".note.stapsdt"]
    flipped = []
    for _ in range(rng.randint(1, 8)):
        at = start + rng.randrange(size)
        if at >= len(data):
            continue
        data[at] = rng.choice((0, 0xFF, 0x80, 0x1B, rng.getrandbits(8), data[at] ^ (1 << rng.randrange(8))))
        flipped.append(at - start)
    return f"note bytes {flipped}"


def note_header_field(data: bytearray, layout: Layout, rng: random.Random) -> str:
    note = rng.choice(layout.notes)
    field_index = rng.randrange(3)
    field_name = ("namesz", "descsz", "type")[field_index]
    return _put(data, layout, rng, note + 4 * field_index, "I", f"note@{note:#x} {field_name}")


def truncate(data: bytearray, layout: Layout, rng: random.Random) -> str:
    cuts = [rng.randrange(len(data)), rng.randrange(min(len(data), 128)), layout.shoff + rng.randrange(64),
            layout.sections[".note.stapsdt"][1] + rng.randrange(layout.sections[".note.stapsdt"][2])]
    cut = min(rng.choice(cuts), len(data) - 1)
    del data[cut:]
    return f"truncated at {cut:#x}"


# (field, offset in Elf32_Shdr, offset in Elf64_Shdr, size in 32, size in 64)
_SHDR_FIELDS = [("sh_name", 0, 0, "I", "I"), ("sh_type", 4, 4, "I", "I"), ("sh_flags", 8, 8, "I", "Q"),
                ("sh_addr", 12, 16, "I", "Q"), ("sh_offset", 16, 24, "I", "Q"), ("sh_size", 20, 32, "I", "Q"),
                ("sh_link", 24, 40, "I", "I"), ("sh_entsize", 36, 56, "I", "Q")]
_PHDR_FIELDS = [("p_type", 0, 0, "I", "I"), ("p_offset", 4, 8, "I", "Q"), ("p_vaddr", 8, 16, "I", "Q"),
                ("p_filesz", 16, 32, "I", "Q"), ("p_memsz", 20, 40, "I", "Q"), ("p_flags", 24, 4, "I", "I")]
_EHDR_FIELDS = [("e_type", 16, 16, "H", "H"), ("e_machine", 18, 18, "H", "H"), ("e_phoff", 28, 32, "I", "Q"),
                ("e_shoff", 32, 40, "I", "Q"), ("e_phentsize", 42, 54, "H", "H"), ("e_phnum", 44, 56, "H", "H"),
                ("e_shentsize", 46, 58, "H", "H"), ("e_shnum", 48, 60, "H", "H"), ("e_shstrndx", 50, 62, "H", "H")]
_TARGET_SECTIONS = (".note.stapsdt", ".stapsdt.base", ".shstrtab", ".symtab", ".dynsym", ".strtab",
                    ".note.gnu.build-id", ".rela.note.stapsdt", ".rel.note.stapsdt")


def _field(fields: list, layout: Layout, rng: random.Random) -> tuple[str, int, str]:
    name, off32, off64, fmt32, fmt64 = rng.choice(fields)
    return (name, off64, fmt64) if layout.elf_class == 64 else (name, off32, fmt32)


def section_header_field(data: bytearray, layout: Layout, rng: random.Random) -> str:
    present = [name for name in _TARGET_SECTIONS if name in layout.sections]
    name = rng.choice(present) if present and rng.random() < 0.8 else rng.choice(list(layout.sections))
    header = layout.sections[name][0]
    field_name, offset, fmt = _field(_SHDR_FIELDS, layout, rng)
    return _put(data, layout, rng, header + offset, fmt, f"{name}.{field_name}")


def program_header_field(data: bytearray, layout: Layout, rng: random.Random) -> str:
    index = rng.randrange(max(layout.phnum, 1))
    field_name, offset, fmt = _field(_PHDR_FIELDS, layout, rng)
    return _put(data, layout, rng, layout.phoff + index * layout.phentsize + offset, fmt, f"phdr[{index}].{field_name}")


def elf_header_field(data: bytearray, layout: Layout, rng: random.Random) -> str:
    if rng.random() < 0.2 and len(data) > 7:
        at = rng.choice((4, 5, 6, 7))  # EI_CLASS, EI_DATA, EI_VERSION, EI_OSABI
        data[at] = rng.choice((0, 1, 2, 3, 0xFF))
        return f"e_ident[{at}]={data[at]}"
    field_name, offset, fmt = _field(_EHDR_FIELDS, layout, rng)
    return _put(data, layout, rng, offset, fmt, field_name)


def flip_anywhere(data: bytearray, layout: Layout, rng: random.Random) -> str:
    at = rng.randrange(len(data))
    data[at] ^= 1 << rng.randrange(8)
    return f"bit flip at {at:#x}"  # data is never empty: truncate keeps a byte


MUTATIONS: list[tuple[Mutation, int]] = [
    (flip_note_bytes, 5), (note_header_field, 4), (truncate, 2), (section_header_field, 5),
    (program_header_field, 2), (elf_header_field, 2), (flip_anywhere, 1),
]
RUNNABLE_MUTATIONS: list[tuple[Mutation, int]] = [
    (flip_note_bytes, 5), (note_header_field, 4), (section_header_field, 5), (truncate, 1),
    (elf_header_field, 1),
]
"""For ``run``: mostly what the kernel ignores, so the command mostly runs."""


@dataclass(frozen=True)
class Input:
    seed: int
    base: Path
    path: Path
    what: str


def mutate(layout: Layout, seed: int, directory: Path, mutations: list[tuple[Mutation, int]] = MUTATIONS) -> Input:
    """Input ``seed``: one to three mutations of ``layout``'s file."""
    rng = random.Random(seed)
    data = bytearray(layout.data)
    functions, weights = zip(*mutations, strict=True)
    done = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if not data:
            break
        done.append(rng.choices(functions, weights)[0](data, layout, rng))
    path = directory / f"{seed}-{layout.path.name}"
    path.write_bytes(data)
    path.chmod(0o755)
    return Input(seed, layout.path, path, f"{layout.path.parent.name}/{layout.path.name}: " + "; ".join(done))


@contextlib.contextmanager
def special_files(directory: Path) -> Iterator[list[Path]]:
    """Things a path can name that are no ELF file (each must be refused in one line)."""
    directory.mkdir(parents=True, exist_ok=True)
    os.mkfifo(directory / "fifo")
    (directory / "dir").mkdir()
    (directory / "loop").symlink_to("loop")
    (directory / "dangling").symlink_to("nowhere")
    (directory / "empty").touch()
    (directory / "text").write_text("#!/bin/sh\nexit 0\n")
    (directory / "short").write_bytes(b"\x7fELF\x02\x01")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(directory / "socket"))
    try:
        yield [directory / name for name in ("fifo", "dir", "loop", "dangling", "empty", "text", "short", "socket")] + [
            Path(p) for p in ("/dev/zero", "/dev/null", "/proc/self/mem", "/proc/self/maps", "/proc/self/status",
                              "/proc/self/exe", "/dev/stdin")]
    finally:
        server.close()


# ---------------------------------------------------------------- running and judging


@dataclass
class Verdict:
    """One run of uemu on one input; the lists say what was wrong (empty: fine)."""

    command: str
    what: str
    code: int | None
    tracebacks: list[str] = field(default_factory=list)
    internal: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    undocumented: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)
    """Known failures (KNOWN_*), not counted as new ones."""

    @property
    def failed(self) -> bool:
        return bool(self.tracebacks or self.internal or self.hangs or self.undocumented)

    def problems(self) -> list[str]:
        return [f"{kind}: {self.command} [{self.what}]: {line}"
                for kind in ("tracebacks", "internal", "hangs", "undocumented") for line in getattr(self, kind)]


def _judge(verdict: Verdict, stderr: str, allowed: Callable[[int], bool]) -> Verdict:
    if "Traceback" in stderr:
        verdict.tracebacks.append(stderr.strip().splitlines()[-1])
    verdict.internal += [line for line in stderr.splitlines() if "internal error" in line]
    if verdict.code is not None and not allowed(verdict.code):
        verdict.undocumented.append(f"exit {verdict.code}: {stderr.strip()[:300]}")
    return verdict


class _Hang(BaseException):
    """Raised by the alarm: not an Exception, so uemu's own handler cannot swallow it."""


def list_in_process(path: Path, what: str, json: bool) -> Verdict:
    """``uemu.cli.main(["list", ...])`` in this process, stdout and stderr
    captured, with an alarm against hangs."""
    from uemu import cli

    argv = ["list", *(["--json"] if json else []), str(path)]
    out, err = io.StringIO(), io.StringIO()

    def alarm(signum: int, frame: object) -> None:
        raise _Hang

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, IN_PROCESS_TIMEOUT)
    verdict = Verdict(" ".join(argv[:-1]), what, None)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            verdict.code = cli.main(argv)
    except _Hang:
        verdict.hangs.append(f"no end after {IN_PROCESS_TIMEOUT} s")
    except SystemExit as exit_:  # argparse; cannot happen with these words
        verdict.code = exit_.code if isinstance(exit_.code, int) else 2
    except Exception as err_:  # noqa: BLE001 - what escapes main is a traceback for a user
        verdict.tracebacks.append(f"{type(err_).__name__}: {err_}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return _judge(verdict, err.getvalue(), LIST_CODES.__contains__)


def ldso_in_process(path: Path, what: str) -> Verdict:
    """``ldso.startup_objects`` (what ``run`` asks before it starts a command):
    it must end and return, whatever the file holds."""
    from uemu import ldso

    def alarm(signum: int, frame: object) -> None:
        raise _Hang

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, IN_PROCESS_TIMEOUT)
    verdict = Verdict("ldso.startup_objects", what, 0)
    try:
        objects = ldso.startup_objects(str(path), {"PATH": os.defpath})
        if objects[:1] != [str(path)]:
            verdict.undocumented.append(f"the program is not first: {objects[:2]}")
    except _Hang:
        verdict.hangs.append(f"no end after {IN_PROCESS_TIMEOUT} s")
    except Exception as err:  # noqa: BLE001 - any exception is a failure to report
        verdict.tracebacks.append(f"{type(err).__name__}: {err}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return verdict


def _limits() -> None:
    """The child's limits: CPU seconds (a mutated program that loops gets
    SIGXCPU, as it would untraced; uemu's own start-up takes seconds of an
    emulated CPU) and address space."""
    resource.setrlimit(resource.RLIMIT_CPU, (round(5 * SLOWDOWN), round(6 * SLOWDOWN)))
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


EXEC_FAILED = "exec failed"
"""The stderr of a command that could not be executed at all (status 126 or 127, as a shell's)."""


def _subprocess(argv: Sequence[str], cwd: Path) -> tuple[int | None, str, str]:
    """(status or None on a hang, stdout, stderr) of a child under ``_limits``;
    a command that cannot be executed gets a shell's 126 or 127 and EXEC_FAILED."""
    try:
        process = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, preexec_fn=_limits,  # noqa: PLW1509 - no threads here
                                   process_group=0, env=_clean_env())
    except OSError as err:
        return (127 if isinstance(err, FileNotFoundError) else 126), "", f"{EXEC_FAILED}: {err}"
    try:
        out, err = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        return None, out.decode(errors="backslashreplace"), err.decode(errors="backslashreplace")
    status = process.returncode if process.returncode >= 0 else 128 - process.returncode
    return status, out.decode(errors="backslashreplace"), err.decode(errors="backslashreplace")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("UEMU_DEBUG", "SAMPLE_OUT", "SAMPLE_SYNC")}


def list_subprocess(path: Path, what: str, json: bool, cwd: Path) -> Verdict:
    argv = ["list", *(["--json"] if json else []), str(path)]
    code, _, err = _subprocess([sys.executable, "-m", "uemu", *argv], cwd)
    verdict = Verdict("uemu " + " ".join(argv[:-1]) + " (process)", what, code)
    if code is None:
        verdict.hangs.append(f"no end after {SUBPROCESS_TIMEOUT} s")
    return _judge(verdict, err, LIST_CODES.__contains__)


def sites(path: Path) -> set[tuple[int, int | None]]:
    """(address, semaphore) of every probe uemu reads in ``path``."""
    from uemu import errors, sdt

    try:
        return {(p.address, p.semaphore) for p in sdt.open_elf(str(path)).probes}
    except errors.UemuError:
        return set()


def run_subprocess(probe: str | None, item: Input, args: Sequence[str], cwd: Path) -> Verdict:
    """``uemu run [PROBE] -- FILE ARGS``, judged against FILE ARGS run alone.

    uemu exits with the command's status, or with its own code and a line
    saying why; it says "cannot run" (126, 127) only when the kernel cannot.
    Where the mutation moved a probe site or semaphore, a breakpoint may land
    inside an instruction or a counter on the program's data, as kernel
    uprobes would put them: the command's fate is then its own.
    """
    words = [probe] if probe else []
    code, _, err = _subprocess([sys.executable, "-m", "uemu", "run", *words, "--", str(item.path), *args], cwd)
    verdict = Verdict(f"uemu run {probe or ''} -- FILE {' '.join(args)}", item.what, code)
    if code is None:
        verdict.hangs.append(f"no end after {SUBPROCESS_TIMEOUT} s")
        return _judge(verdict, err, lambda c: True)
    own, _, own_err = _subprocess([str(item.path), *args], cwd)
    own_exec_failed = own_err.startswith(EXEC_FAILED)
    said = [line for line in err.splitlines() if line.startswith("uemu: ") and not line.startswith("uemu: warning:")]
    exec_failed = bool(said) and code in (126, 127) and ("cannot run" in said[-1] or "no such file" in said[-1])
    moved = not sites(item.path) <= sites(item.base)  # no PROBE word arms every site

    def allowed(status: int) -> bool:
        if exec_failed or own_exec_failed:  # uemu checks its PROBE words before it executes anything
            return (exec_failed and own_exec_failed and status == own) or (not exec_failed and bool(said))
        return status == own or (bool(said) and status in UEMU_CODES) or moved

    verdict = _judge(verdict, err, allowed)
    if verdict.undocumented:
        verdict.undocumented[-1] += f" (untraced: {own})"
    return verdict


RUN_PROGRAMS = (("basic", "basic:*"), ("sema", "sema:*"), ("linked", "sdtlib:*"), ("argforms", "argforms:*"))
"""Samples mutated as ``run``'s command, each with a PROBE word of its own."""


def run_seed(build: Path, seed: int, work: Path) -> Verdict:
    """Input ``seed`` of ``run``: a sample of RUN_PROGRAMS mutated, with no PROBE
    word, its own or ``*:*``.  ``work`` must hold libsdtlib.so (``linked``
    finds it through RUNPATH $ORIGIN)."""
    name, probe = RUN_PROGRAMS[seed % len(RUN_PROGRAMS)]
    item = mutate(Layout.read(build / name), seed, work, RUNNABLE_MUTATIONS)
    verdict = run_subprocess((None, probe, "*:*")[seed % 3], item, ["1"], work)
    verdict.what = f"seed {seed}: {verdict.what}"
    item.path.unlink()
    return verdict


def special_file_verdicts(work: Path) -> Iterator[Verdict]:
    """Every special file through ``list`` and ``list --json`` in this process,
    one of them as a process, and through ``run`` when a command can name it."""
    with special_files(work / "special") as paths:
        for n, path in enumerate(paths):
            for json in (False, True):
                yield list_in_process(path, str(path), json)
            yield list_subprocess(path, str(path), n % 2 == 0, work)
            if path.parent == work / "special":
                yield run_subprocess(None, Input(-1, path, path, str(path)), [], work)


@dataclass
class Counts:
    """What the soak prints: inputs, exit-code histogram, problems by kind."""

    inputs: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    known: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, verdict: Verdict) -> None:
        self.inputs += 1
        self.codes["hang" if verdict.code is None else str(verdict.code)] += 1
        for kind in ("tracebacks", "internal", "hangs", "undocumented"):
            if getattr(verdict, kind):
                self.problems[kind] += 1
        self.known.update(verdict.known)
        if verdict.failed and len(self.examples) < 20:
            self.examples += verdict.problems()

    def report(self, title: str) -> str:
        by_code = sorted(self.codes.items(), key=lambda kv: (len(kv[0]), kv[0]))
        codes = " ".join(f"{code}:{n}" for code, n in by_code)
        kinds = " ".join(f"{kind} {self.problems[kind]}"
                         for kind in ("tracebacks", "hangs", "internal", "undocumented"))
        lines = [f"{title}: inputs {self.inputs}; exit codes {codes}; {kinds}"]
        lines += [f"  known ({n}): {known}" for known, n in self.known.items()]
        return "\n".join(lines + [f"  {example}" for example in self.examples[:10]])
