"""Files and values a user or a tracee controls (issue 9 §3; fault-injection items 4, 5, 9).

Each test is one reported failure made into a file or a process: a FIFO, a
sparse file whose note section claims 8 GiB, big-endian EI_DATA on an x86
file, note sizes of 2^63, a symlink loop, /proc/self/mem, a program whose
section headers are cut off, paths that are not UTF-8, an operand address of
2^63.  What must hold for each: one line on stderr, an exit status the README
documents, no traceback, no hang, memory bounded; a program that runs runs.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from tracee import SLOWDOWN, attach_cli, stop_cli

NON_UTF8 = os.fsdecode(b"dir-\xff\xfe")
"""A directory name that is not UTF-8 (a lone surrogate pair once decoded)."""


def uemu(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``timeout`` as on a native machine: stretched in the test guests (tracee.SLOWDOWN)."""
    return subprocess.run([sys.executable, "-m", "uemu", *args], capture_output=True, text=True,
                          timeout=timeout * SLOWDOWN, env=env, check=False, errors="backslashreplace")


def refused(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """One ``uemu: ...`` line with ``code``; never an internal error."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("uemu: "), result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert all(word in lines[0] for word in words), lines[0]


def sane(result: subprocess.CompletedProcess[str]) -> None:
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr


def section_header(path: Path, name: str) -> tuple[int, int]:
    """(file offset of the named section's header, header size)."""
    with path.open("rb") as stream:
        elf = ELFFile(stream)
        index = next(i for i, s in enumerate(elf.iter_sections()) if s.name == name)
        return elf["e_shoff"] + index * elf["e_shentsize"], elf["e_shentsize"]


def with_note_size(source: Path, target: Path, size: int) -> Path:
    """A copy of a 64-bit sample whose .note.stapsdt's sh_size is ``size``."""
    data = bytearray(source.read_bytes())
    header, _ = section_header(source, ".note.stapsdt")
    struct.pack_into("<Q", data, header + 32, size)  # Elf64_Shdr.sh_size
    target.write_bytes(data)
    return target


# ---------------------------------------------------------------- files that are no files


def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes: uemu hung forever."""
    os.mkfifo(tmp_path / "fifo")
    for json in ((), ("--json",)):
        refused(uemu("list", str(tmp_path / "fifo"), *json, timeout=20), 5, "is a FIFO")


@pytest.mark.parametrize(("name", "code", "words"), [
    ("directory", 5, ("is a directory",)),
    ("/dev/zero", 5, ("character device",)),
    ("/proc/self/mem", 5, ("empty",)),
    ("loop", 3, ("too many levels of symbolic links",)),
    ("dangling", 3, ("no such file",)),
    ("empty", 5, ("is empty",)),
])
def test_special_files(tmp_path: Path, name: str, code: int, words: tuple[str, ...]) -> None:
    (tmp_path / "directory").mkdir()
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "dangling").symlink_to("nowhere")
    (tmp_path / "empty").touch()
    path = name if name.startswith("/") else str(tmp_path / name)
    refused(uemu("list", path, timeout=20), code, *words)


# ---------------------------------------------------------------- hostile ELF


def max_rss_kib(*args: str) -> tuple[int, subprocess.CompletedProcess[str]]:
    """The peak RSS of ``uemu ARGS``, measured from a fresh parent (RUSAGE_CHILDREN
    keeps the largest child ever waited for).  uemu runs with 2 GiB of address
    space and 60 s at most (SLOWDOWN times that in the test guests), so that a
    regression fails the test, not the machine."""
    probe = textwrap.dedent(f"""
        import resource, subprocess, sys
        def limit():
            resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        try:
            result = subprocess.run([sys.executable, "-m", "uemu", *sys.argv[1:]], capture_output=True, text=True,
                                    timeout={60 * SLOWDOWN}, preexec_fn=limit)
        except subprocess.TimeoutExpired:
            sys.exit("timed out")
        sys.stderr.write(result.stderr)
        sys.stdout.write(result.stdout)
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, result.returncode, file=sys.stderr)
    """)
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True,
                            timeout=120 * SLOWDOWN, check=False)
    assert result.returncode == 0, result.stderr
    *stderr, last = result.stderr.splitlines()
    rss, code = map(int, last.split())
    return rss, subprocess.CompletedProcess(args, code, result.stdout, "\n".join(stderr) + "\n" if stderr else "")


@pytest.fixture
def sparse_elf(samples: Path, tmp_path: Path) -> Path:
    """16 GiB (sparse) whose .note.stapsdt claims 8 GiB: reading it drove list past 3.8 GB."""
    path = with_note_size(samples / "sema", tmp_path / "sparse", 8 << 30)
    os.truncate(path, 16 << 30)
    return path


def test_a_note_section_claiming_gigabytes_is_not_read(sparse_elf: Path) -> None:
    rss, result = max_rss_kib("list", str(sparse_elf))
    sane(result)
    assert result.returncode == 0 and f"claims {8 << 30} bytes, more than uemu reads" in result.stderr
    assert rss < 200 * 1024, f"{rss} KiB"


def test_a_tracee_mapping_such_a_file_costs_nothing(sparse_elf: Path) -> None:
    """The process's view (list PID, attach) opens every mapped ELF file."""
    script = ("import mmap, sys; f = open(sys.argv[1], 'rb'); "
              "m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); print('mapped', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", script, str(sparse_elf)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "mapped\n"
        rss, result = max_rss_kib("list", str(holder.pid))
        sane(result)
        assert f"claims {8 << 30} bytes" in result.stderr and rss < 200 * 1024, (rss, result.stderr)
        rss, result = max_rss_kib("attach", "--strict", "--duration", "0.2", str(holder.pid), "nomatch:nomatch")
        refused(result, 6, "nomatch")
        assert rss < 200 * 1024, f"{rss} KiB"
    finally:
        holder.kill()
        holder.wait()


def test_big_endian_ei_data_on_an_x86_file(samples: Path, tmp_path: Path) -> None:
    data = bytearray((samples / "sema").read_bytes())
    data[5] = 2  # EI_DATA = ELFDATA2MSB: every field reads byte-swapped
    (tmp_path / "swapped").write_bytes(data)
    refused(uemu("list", str(tmp_path / "swapped")), 5, "malformed ELF")


@pytest.mark.parametrize("size", [1 << 63, (1 << 64) - 1, 1 << 40])
def test_note_sizes_beyond_reason(samples: Path, tmp_path: Path, size: int) -> None:
    """sh_size 2^63 raised OverflowError; the note is reported and listing goes on."""
    path = with_note_size(samples / "sema", tmp_path / "huge", size)
    for json in ((), ("--json",)):
        result = uemu("list", str(path), *json)
        sane(result)
        assert result.returncode == 0 and "malformed stapsdt note #0" in result.stderr


def test_a_note_descriptor_size_beyond_its_section(samples: Path, tmp_path: Path) -> None:
    data = bytearray((samples / "sema").read_bytes())
    with (samples / "sema").open("rb") as stream:
        offset = ELFFile(stream).get_section_by_name(".note.stapsdt")["sh_offset"]
    struct.pack_into("<I", data, offset + 4, 0xFFFFFFFF)  # n_descsz of the first note
    (tmp_path / "desc").write_bytes(data)
    result = uemu("list", str(tmp_path / "desc"))
    sane(result)
    assert result.returncode == 0 and "runs past the section end" in result.stderr


# ---------------------------------------------------------------- a program without section headers


def cut_sections(source: Path, target: Path) -> Path:
    """The program with its section header table cut off: it still runs (the
    kernel and ld.so need only the program headers)."""
    with source.open("rb") as stream:
        shoff = ELFFile(stream)["e_shoff"]
    target.write_bytes(source.read_bytes()[: shoff + 10])
    target.chmod(0o755)
    return target


def test_list_says_no_notes_are_readable(samples: Path, tmp_path: Path) -> None:
    path = cut_sections(samples / "sema", tmp_path / "cut")
    result = uemu("list", str(path))
    sane(result)
    assert result.returncode == 0
    warning, nothing = result.stderr.splitlines()
    assert warning.startswith(f"uemu: warning: {path}: section header table (64 bytes at offset ")
    assert warning.endswith("; no SDT notes readable")
    assert nothing == f"uemu: no SDT probes in {path}"


def test_run_runs_a_program_without_section_headers(samples: Path, tmp_path: Path) -> None:
    """run and attach exited 5 and killed the command."""
    path = cut_sections(samples / "sema", tmp_path / "cut")
    result = uemu("run", "--", str(path), "1")
    sane(result)
    assert result.returncode == 0 and "sync" in result.stdout, result.stderr


def test_attach_traces_a_program_without_section_headers(samples: Path, tmp_path: Path) -> None:
    path = cut_sections(samples / "longrun", tmp_path / "cut")
    target = subprocess.Popen([str(path), "1", "20"], stdout=subprocess.DEVNULL)
    try:
        tracer = attach_cli("--duration", "0.3", str(target.pid))
        code, _, err = stop_cli(tracer, None)
        assert code == 0 and "internal error" not in err, err
        assert target.poll() is None  # still running, untouched
    finally:
        target.send_signal(signal.SIGTERM)
        assert target.wait(timeout=10) == 0


# ---------------------------------------------------------------- what the tracee controls


@pytest.fixture
def non_utf8_copy(samples: Path, tmp_path: Path) -> Path:
    directory = tmp_path / NON_UTF8
    directory.mkdir()
    shutil.copy(samples / "sema", directory / "sema")
    return directory / "sema"


def test_a_program_whose_path_is_not_utf8(non_utf8_copy: Path) -> None:
    """read_maps raised UnicodeDecodeError at start: run exited 1."""
    result = uemu("run", "--json", "sema:always", "--", str(non_utf8_copy), "1")
    sane(result)
    assert result.returncode == 0 and '"name": "always"' in result.stderr, result.stderr


def test_list_of_a_process_whose_program_path_is_not_utf8(non_utf8_copy: Path) -> None:
    target = subprocess.Popen([str(non_utf8_copy), "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              env=dict(os.environ, SAMPLE_SYNC="1"))
    try:
        result = uemu("list", "--json", str(target.pid))
        sane(result)
        assert result.returncode == 0 and "sema" in result.stdout
    finally:
        target.kill()
        target.wait()


def test_a_file_mapped_mid_trace_whose_path_is_not_utf8(tmp_path: Path) -> None:
    """The mapping syscall makes uemu read the maps again, mid-trace."""
    data = tmp_path / NON_UTF8
    data.write_bytes(b"x" * 4096)
    script = ("import mmap, sys; f = open(sys.argv[1], 'rb'); "
              "m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); print(m[:1].decode())")
    python = shutil.which("python3", path="/usr/bin") or sys.executable
    for mappings in ("seccomp", "syscall"):
        result = uemu("run", f"--mappings={mappings}", "--", python, "-c", script, str(data))
        sane(result)
        assert (result.returncode, result.stdout) == (0, "x\n"), result.stderr


@pytest.fixture(scope="module")
def far_pointer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A probe whose operands compute 2^63 and 2^64 - 16 (asm-written specs)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    directory = tmp_path_factory.mktemp("far")
    (directory / "far.c").write_text(textwrap.dedent("""\
        #include <sys/sdt.h>
        int main(void) {
            __asm__ volatile("movabs $0x8000000000000000, %%rax\\n"
                             STAP_PROBE_ASM(hostile, far, -8@(%%rax) 8@-16(%%rax) 8@%%rax)
                             ::: "rax");
            return 0;
        }
        """))
    subprocess.run(["gcc", "-std=gnu99", "-O1", "-o", str(directory / "far"), str(directory / "far.c")], check=True)
    return directory / "far"


def test_an_operand_address_of_2_63_reads_as_unknown(far_pointer: Path) -> None:
    """os.pread raised OverflowError: an internal error, run exited 1."""
    result = uemu("run", "--json", "hostile:far", "--", str(far_pointer))
    sane(result)
    assert result.returncode == 0
    [line] = [line for line in result.stderr.splitlines() if '"far"' in line]
    assert '"args": [null, null, 9223372036854775808]' in line, line


def damaged(program: Path, damage: str) -> bytearray:
    """``program``'s bytes, damaged so that the kernel maps the file and then cannot
    finish its exec (ENOMEM or EFAULT past the point of no return).  The first two
    are the x86-64 fuzz finds, and where they land depends on the segment layout;
    a bss of 64 TiB fails the last mapping on every machine."""
    data = bytearray(program.read_bytes())
    if damage == "e_phnum 127":
        struct.pack_into("<H", data, 56, 127)  # Elf64_Ehdr.e_phnum
    elif damage == "cut inside a segment":
        del data[8192:]
    else:
        with program.open("rb") as stream:
            elf = ELFFile(stream)
            last = max(i for i, segment in enumerate(elf.iter_segments()) if segment["p_type"] == "PT_LOAD")
            header = elf["e_phoff"] + last * elf["e_phentsize"]
        struct.pack_into("<Q", data, header + 40, 1 << 46)  # Elf64_Phdr.p_memsz
    return data


@pytest.mark.parametrize("damage", ["cut inside a segment", "e_phnum 127", "a bss of 64 TiB"])
def test_run_reports_the_status_of_a_command_killed_in_its_exec(samples: Path, tmp_path: Path, damage: str) -> None:
    """The kernel maps such a file and then cannot finish (ENOMEM past the point
    of no return): it kills the process with SIGSEGV, and a shell says 139.
    The exec-error pipe is closed by that exec (close-on-exec) with nothing in
    it, and spawn.Spawned.exec_failure reads that as ENOEXEC ("cannot run ...:
    Exec format error", 126).  An empty pipe means the exec got past its point
    of no return: the child's own status is the answer (spawn.Spawned.exec_failure).

    Elsewhere than x86-64 the fuzz finds fail otherwise (arm64's 64 KiB-aligned
    segments: the cut file runs and dies of SIGBUS; 127 program headers are
    refused before the point of no return): uemu must then say what a shell says."""
    path = tmp_path / "damaged"
    path.write_bytes(damaged(samples / "basic", damage))
    path.chmod(0o755)
    try:
        alone = subprocess.run([str(path), "1"], capture_output=True, check=False).returncode
    except OSError as err:  # refused by execve: the shell's 126
        alone = None
        assert platform.machine() != "x86_64" and damage != "a bss of 64 TiB", err
    if platform.machine() == "x86_64" or damage == "a bss of 64 TiB":
        assert alone == -signal.SIGSEGV  # the kernel ran it, and killed it
    result = uemu("run", "--", str(path), "1")
    sane(result)
    if alone is None:
        assert result.returncode == 126 and "cannot run" in result.stderr, result.stderr
    else:
        assert alone < 0 and result.returncode == 128 - alone, result.stderr


def test_read_maps_gives_paths_that_open_again(tmp_path: Path) -> None:
    """A mapping's path as the tracee's file system spells it: undecodable bytes
    become lone surrogates (os.fsdecode), so the very file opens again."""
    import mmap

    from uemu.maps import read_maps

    path = tmp_path / NON_UTF8
    path.write_bytes(b"mapped")
    with path.open("rb") as stream, mmap.mmap(stream.fileno(), 0, prot=mmap.PROT_READ):
        [vma] = [v for v in read_maps(os.getpid()) if v.path.endswith(NON_UTF8)]
        assert os.fsencode(vma.path) == os.fsencode(str(path)) and Path(vma.path).read_bytes() == b"mapped"
