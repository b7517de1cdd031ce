"""ldso.startup_objects against the dynamic linker's own answer.

The oracle is glibc's ld.so in trace mode (``LD_TRACE_LOADED_OBJECTS=1``, what
``ldd`` does): it loads the program's start-up objects exactly as for a run and
prints them instead of running the program.  Tests only: uemu itself never
runs a target.  Scenarios the samples lack (RPATH inherited along the loader
chain, RUNPATH ending it, tokens, glibc-hwcaps, another ELF class first in the
path, DF_1_NODEFLIB, SONAME aliases) are built here with gcc from one-line
sources; what to expect comes from ld.so, never from us.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from uemu import ldso

pytestmark = pytest.mark.oracle


VDSO_NAMES = ("linux-vdso", "linux-gate")


def ld_so_answer(program: str, env: Mapping[str, str], cwd: str | None = None) -> list[str]:
    """The paths ld.so's trace lists, in its order (vDSO and names not found left out)."""
    result = subprocess.run([program], env={**env, "LD_TRACE_LOADED_OBJECTS": "1"}, cwd=cwd,
                            capture_output=True, text=True, timeout=30, check=False)
    paths = []
    for line in result.stdout.splitlines():
        words = line.split()
        if "=>" in words:
            target = words[words.index("=>") + 1]
            if target != "not":
                paths.append(target)
        elif words and not words[0].startswith(VDSO_NAMES) and words[0] != "statically":
            paths.append(words[0])  # a name that is its own path (ld.so prints it once)
    return paths


def agrees(program: str, env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    ours = ldso.startup_objects(program, env)
    assert ours[0] == program
    return ours[1:], ld_so_answer(program, env)


# ---------------------------------------------------------------- real programs


@pytest.mark.parametrize("name", ["linked", "basic", "dlopen", "threads"])
def test_samples(runnable_build, name: str) -> None:
    """x86_64 and i386 samples; ``linked`` finds libsdtlib.so through RUNPATH $ORIGIN."""
    ours, theirs = agrees(str(runnable_build.directory / name), os.environ)
    assert ours == theirs and theirs


SYSTEM_PROGRAMS = [
    shutil.which("python3", path="/usr/bin"), shutil.which("bash"), shutil.which("gdb"),
    *sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres")),
    *sorted(glob.glob("/usr/lib/jvm/*/bin/java")),
]


PROGRAM = shutil.which("bash") or shutil.which("python3", path="/usr/bin")
"""A program that needs libraries beside libc: bash, or python3 where bash is not
installed (the test guests' root has busybox's sh)."""
MULTIARCH = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
"""The system's library directory name (Debian multiarch): x86_64-linux-gnu, ..."""


@pytest.mark.parametrize("program", [p for p in SYSTEM_PROGRAMS if p], ids=os.path.basename)
def test_system_programs(program: str) -> None:
    ours, theirs = agrees(program, os.environ)
    assert ours == theirs and theirs


def test_without_a_cache_the_configured_directories_are_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    """/etc/ld.so.conf's directories stand in for a missing cache (ldconfig puts
    no other library in it): the answers are the same."""
    monkeypatch.setattr(ldso, "LD_SO_CACHE", "/nonexistent/ld.so.cache")
    for program in filter(None, SYSTEM_PROGRAMS):
        ours, theirs = agrees(program, os.environ)
        assert ours == theirs


def test_environment_search_path_and_preloads() -> None:
    """LD_LIBRARY_PATH (``:`` and ``;``, another class's directory first, $ORIGIN)
    and LD_PRELOAD (a name searched for, a path) as uemu passes them."""
    libm = next(p for p in (f"/lib/{MULTIARCH}/libm.so.6", f"/usr/lib/{MULTIARCH}/libm.so.6") if os.path.exists(p))
    env = {**os.environ,
           "LD_LIBRARY_PATH": f"/usr/lib32:/nonexistent;$ORIGIN/../lib/{MULTIARCH}",
           "LD_PRELOAD": f"libz.so.1 {libm}"}
    assert PROGRAM is not None
    ours, theirs = agrees(PROGRAM, env)
    assert ours == theirs and any("libz.so" in p for p in theirs)


def test_the_cache_reads_as_ldconfig_prints_it() -> None:
    """Every x86-64 name in ``ldconfig -p`` (it reads the same file) resolves to
    its first entry there."""
    if platform.machine() != "x86_64" or not os.path.exists(ldso.LD_SO_CACHE):
        pytest.skip("an x86-64 system's ld.so.cache (the test guests' roots have none: ldconfig never ran there)")
    system = ldso._system(ldso._Abi(64, True, "EM_X86_64"), "/lib64/ld-linux-x86-64.so.2")
    cache = ldso._Cache.read(ldso.LD_SO_CACHE, system)
    assert cache is not None
    listed = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    first: dict[str, str] = {}
    for line in listed.splitlines()[1:]:
        name, rest = line.strip().split(" ", 1)
        if "(libc6,x86-64" in rest:
            first.setdefault(name, rest.split(" => ", 1)[1])
    assert first and {name: cache.lookup(name) for name in first} == first


# ---------------------------------------------------------------- built scenarios


class Builder:
    """One-line C libraries and programs in a temporary directory."""

    def __init__(self, root: Path):
        if shutil.which("gcc") is None:
            pytest.skip("gcc is not installed")
        self.root = root

    def _compile(self, output: Path, flags: Sequence[str], links: Sequence[Path], by_path: Sequence[Path]) -> Path:
        """``links`` are named by file name (-l:NAME), ``by_path`` by their path
        (a library without DT_SONAME is then needed by that path)."""
        output.parent.mkdir(parents=True, exist_ok=True)
        source = self.root / f"{output.name}.c"
        source.write_text("int main(void) { return 0; }\n")
        command = ["gcc", *flags, "-o", str(output), str(source), "-Wl,--no-as-needed", *map(str, by_path)]
        for lib in links:
            command += [f"-L{lib.parent}", f"-l:{lib.name}"]
        subprocess.run(command, check=True, capture_output=True)
        return output

    def lib(self, path: str, needs: Sequence[Path] = (), flags: Sequence[str] = ()) -> Path:
        return self._compile(self.root / path, ["-shared", "-fPIC", *flags], needs, ())

    def program(self, path: str, needs: Sequence[Path], flags: Sequence[str] = (),
                by_path: Sequence[Path] = ()) -> Path:
        return self._compile(self.root / path, list(flags), needs, by_path)


@pytest.fixture
def build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Builder:
    monkeypatch.chdir(tmp_path)  # relative search directories are the current one's, for both of us
    return Builder(tmp_path)


def check(program: Path, env: Mapping[str, str] | None = None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")} if env is None else env
    ours, theirs = agrees(str(program), env)
    assert ours == theirs
    return theirs


def test_rpath_is_inherited_along_the_loader_chain(build: Builder) -> None:
    two = build.lib("a/libtwo.so")
    one = build.lib("b/libone.so", [two])
    prog = build.program("prog", [one], ["-Wl,--disable-new-dtags", f"-Wl,-rpath,{one.parent}:{two.parent}"])
    assert str(two) in check(prog)


def test_runpath_applies_to_direct_dependencies_only(build: Builder) -> None:
    two = build.lib("a/libtwo.so")
    one = build.lib("b/libone.so", [two])
    prog = build.program("prog", [one], ["-Wl,--enable-new-dtags", f"-Wl,-rpath,{one.parent}:{two.parent}"])
    found = check(prog)
    assert str(one) in found and str(two) not in found


def test_a_runpath_disables_the_chain_of_rpaths(build: Builder) -> None:
    """libone has DT_RUNPATH: its dependency is not looked for in the program's DT_RPATH."""
    two = build.lib("a/libtwo.so")
    one = build.lib("b/libone.so", [two], ["-Wl,--enable-new-dtags", "-Wl,-rpath,/nonexistent"])
    prog = build.program("prog", [one], ["-Wl,--disable-new-dtags", f"-Wl,-rpath,{one.parent}:{two.parent}"])
    assert str(two) not in check(prog)


def test_tokens_in_search_paths(build: Builder) -> None:
    one = build.lib("bin/x86_64/lib/x86_64-linux-gnu/libone.so")
    prog = build.program("bin/prog", [one], ["-Wl,--enable-new-dtags", "-Wl,-rpath,$ORIGIN/${PLATFORM}/$LIB"])
    assert Path(check(prog)[0]).samefile(one)


def test_glibc_hwcaps_subdirectories_come_first(build: Builder) -> None:
    plain = build.lib("a/libone.so")
    best = build.lib("a/glibc-hwcaps/x86-64-v2/libone.so")
    prog = build.program("prog", [plain], ["-Wl,--enable-new-dtags", f"-Wl,-rpath,{plain.parent}"])
    assert str(best) in check(prog)


def test_a_library_of_another_class_is_skipped(build: Builder) -> None:
    wrong = build.lib("a/libone.so", flags=["-m32"])
    right = build.lib("b/libone.so")
    prog = build.program("prog", [right], ["-Wl,--enable-new-dtags", f"-Wl,-rpath,{wrong.parent}:{right.parent}"])
    assert str(right) in check(prog)


def test_the_current_directory_from_an_empty_element(build: Builder) -> None:
    one = build.lib("libone.so")
    prog = build.program("prog", [one])
    env = {"PATH": os.environ["PATH"], "LD_LIBRARY_PATH": "/nonexistent;"}
    assert "libone.so" in check(prog, env)


def test_nodefaultlib_skips_the_cache_and_system_directories(build: Builder) -> None:
    """The program's own libc.so.6 is not found where its DF_1_NODEFLIB forbids;
    libtwo's, asked for by a loader without the flag, is found later."""
    two = build.lib("a/libtwo.so")
    prog = build.program("prog", [two], ["-Wl,-z,nodefaultlib", "-Wl,--enable-new-dtags", f"-Wl,-rpath,{two.parent}"])
    found = check(prog)
    assert found[0] == str(two) and found[1].endswith("/libc.so.6")


def test_a_soname_answers_for_a_loaded_object_and_a_path_is_a_path(build: Builder) -> None:
    """libtwo needs libalias.so.1, the name of no file but the DT_SONAME of
    libone, preloaded by its path; the program needs libthree by its path."""
    one = build.lib("a/libone.so", flags=["-Wl,-soname,libalias.so.1"])
    two = build.lib("b/libtwo.so", [one])
    three = build.lib("c/libthree.so")
    prog = build.program("prog", [two], ["-Wl,--enable-new-dtags", f"-Wl,-rpath,{two.parent}"], by_path=[three])
    found = check(prog, {"PATH": os.environ["PATH"], "LD_PRELOAD": str(one)})
    assert found[0] == str(one) and str(two) in found and str(three) in found


def test_nothing_is_run(build: Builder, tmp_path: Path) -> None:
    """A program whose PT_INTERP would write a file if run: the interpreter is
    listed, never started."""
    marker = tmp_path / "ran"
    (tmp_path / "evil.c").write_text(
        f'#include <fcntl.h>\nint main(void) {{ return open("{marker}", O_CREAT | O_WRONLY, 0600) < 0; }}\n')
    evil = tmp_path / "evil"
    if subprocess.run(["gcc", "-static", "-o", str(evil), str(tmp_path / "evil.c")], capture_output=True,
                      check=False).returncode:
        pytest.skip("no static libc to build the interpreter")
    prog = build.program("prog", [], [f"-Wl,--dynamic-linker={evil}"])
    assert ldso.startup_objects(str(prog), {})[-1] == str(evil)
    assert not marker.exists()


def test_a_script_brings_its_interpreter(tmp_path: Path) -> None:
    """The kernel follows ``#!``: the interpreter and what it starts with."""
    assert PROGRAM is not None
    script = tmp_path / "script"
    script.write_text(f"#!{PROGRAM} -e\necho hi\n")
    script.chmod(0o755)
    assert ldso.startup_objects(str(script), os.environ) == [str(script), PROGRAM,
                                                             *ld_so_answer(PROGRAM, os.environ)]


def test_a_name_is_looked_up_in_path_as_execvp_does(tmp_path: Path) -> None:
    assert PROGRAM is not None
    os.symlink(PROGRAM, tmp_path / "myprogram")
    objects = ldso.startup_objects("myprogram", {"PATH": f"/nonexistent:{tmp_path}"})
    assert objects[0] == str(tmp_path / "myprogram") and objects[1:] == ld_so_answer(PROGRAM, os.environ)
