"""The committed blobs are what uemu/runtime/build.py makes of the committed sources, and
the ABI facts they were built with agree with outside oracles."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import capstone
import pytest
from runtime_harness import syscall_names, uapi_available

from uemu.arch import by_name
from uemu.runtime import build, layout, load_blob

ARCHES = [target.arch for target in build.TARGETS]
MANIFEST = json.loads((build.BLOBS / build.MANIFEST).read_text())


@pytest.mark.parametrize("arch", ARCHES)
def test_manifest_describes_the_committed_blob(arch: str) -> None:
    entry = MANIFEST[arch]
    code = (build.BLOBS / f"{arch}.bin").read_bytes()
    blob = load_blob(arch)
    assert hashlib.sha256(code).hexdigest() == entry["blob_sha256"]
    assert len(code) == entry["size"] <= layout.BLOB_MAX
    assert entry["entries"] == {name: getattr(blob, name) for name in entry["entries"]}


@pytest.mark.parametrize("arch", ARCHES)
def test_blobs_were_built_from_the_sources_as_they_are(arch: str) -> None:
    """Edited runtime.c, an arch header, layout.py or a fact in uemu.arch without running
    ``python3 -m uemu.runtime.build``?"""
    target = next(t for t in build.TARGETS if t.arch == arch)
    assert build.source_hash(target) == MANIFEST[arch]["source_sha256"], "rebuild the blobs"


def test_rebuilding_gives_the_same_bytes(tmp_path: Path) -> None:
    missing = [t.compiler[0] for t in build.TARGETS if shutil.which(t.compiler[0]) is None]
    if missing:
        pytest.skip(f"no {', '.join(missing)}")
    versions = {t.arch: build.compiler_version(t) for t in build.TARGETS}
    if any(versions[arch] != MANIFEST[arch]["compiler"] for arch in ARCHES):
        pytest.skip(f"other compilers than the manifest's: {versions}")
    manifest = build.build_all(tmp_path)
    assert manifest == MANIFEST
    for arch in ARCHES:
        assert (tmp_path / f"{arch}.bin").read_bytes() == (build.BLOBS / f"{arch}.bin").read_bytes()


def test_a_relocation_is_refused(tmp_path: Path) -> None:
    """A pointer in data would need a loader: the build must say so, not ship it."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    source = tmp_path / "bad.c"
    source.write_text("void f(void); void (*const table[])(void) = { f }; void f(void) {}\n"
                      "void uemu_trap_handler(void) {} void uemu_restorer(void) {}\n"
                      "void uemu_inject_syscall(void) {} void uemu_hit_entry(void) {}\n")
    (tmp_path / "runtime.ld").write_text(build.linker_script())
    elf = tmp_path / "bad.elf"
    subprocess.run(["gcc", *build.COMMON_FLAGS, *build.LINK_FLAGS, f"-Wl,-T,{tmp_path / 'runtime.ld'}",
                    "-o", str(elf), str(source)], check=True, capture_output=True)
    with pytest.raises(build.BuildError, match="relocations"):
        build.check_elf("x86_64", elf.read_bytes())


_DISASSEMBLERS = {
    "x86_64": (capstone.CS_ARCH_X86, capstone.CS_MODE_64),
    "i386": (capstone.CS_ARCH_X86, capstone.CS_MODE_32),
    "aarch64": (capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM),
    "riscv64": (capstone.CS_ARCH_RISCV, capstone.CS_MODE_RISCV64),
}


@pytest.mark.parametrize("arch", ARCHES)
def test_stubs_do_what_their_names_say(arch: str) -> None:
    """inject_syscall: the ABI's syscall instruction, then a trap; restorer: rt_sigreturn
    by the number in the kernel's uapi header."""
    facts, blob = by_name(arch), load_blob(arch)
    stub = blob.code[blob.inject_syscall:]
    assert stub.startswith(facts.syscall_insn)
    assert facts.backend.is_trap(stub[len(facts.syscall_insn):])
    if not uapi_available(arch):
        pytest.skip("no uapi headers")
    number = {name: nr for nr, name in syscall_names(arch).items()}["rt_sigreturn"]
    decoder = capstone.Cs(*_DISASSEMBLERS[arch])
    load, call = list(decoder.disasm(blob.code[blob.restorer:], blob.restorer, 2))
    assert load.op_str.endswith(hex(number)) or load.op_str.endswith(str(number)), load.op_str
    assert blob.code[call.address:call.address + call.size] == facts.syscall_insn


_UCONTEXT_PROBE = r"""
#define _GNU_SOURCE
#include <stddef.h>
#include <stdio.h>
#include <sys/ucontext.h>
#define R(name) printf("%s %zu\n", #name, offsetof(ucontext_t, uc_mcontext.gregs[REG_##name]));
int main(void) { REGS return 0; }
"""
_GLIBC_NAMES = {
    "x86_64": {"rip": "RIP", "rsp": "RSP", "eflags": "EFL", "rax": "RAX", "rbx": "RBX", "rcx": "RCX", "rdx": "RDX",
               "rsi": "RSI", "rdi": "RDI", "rbp": "RBP", **{f"r{n}": f"R{n}" for n in range(8, 16)}},
    "i386": {"eip": "EIP", "esp": "ESP", "eflags": "EFL", "eax": "EAX", "ebx": "EBX", "ecx": "ECX", "edx": "EDX",
             "esi": "ESI", "edi": "EDI", "ebp": "EBP", "cs": "CS", "ds": "DS", "es": "ES", "fs": "FS", "gs": "GS"},
}


@pytest.mark.parametrize("arch, flags", [("x86_64", ()), ("i386", ("-m32",))])
def test_ucontext_offsets_agree_with_glibc(arch: str, flags: tuple[str, ...], tmp_path: Path) -> None:
    """glibc's ucontext_t lays the kernel's signal frame out; where it can be compiled and
    run here, it is the oracle of Arch.ucontext_regs."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    names = _GLIBC_NAMES[arch]
    source = tmp_path / "probe.c"
    source.write_text(_UCONTEXT_PROBE.replace("REGS", " ".join(f"R({n})" for n in names.values())))
    program = tmp_path / "probe"
    compiled = subprocess.run(["gcc", *flags, "-o", str(program), str(source)], capture_output=True, text=True)
    if compiled.returncode != 0:
        pytest.skip(f"cannot build for {arch}: {compiled.stderr.strip()}")
    glibc = dict(line.split() for line in subprocess.run([str(program)], capture_output=True, text=True,
                                                         check=True).stdout.splitlines())
    facts = by_name(arch).ucontext_regs
    assert {ours: facts[ours] for ours in names} == {ours: int(glibc[theirs]) for ours, theirs in names.items()}
    assert set(facts) == set(names), "every register the handler may touch is checked"
