"""The kernel's life cycle, side by side: the same program under kernel uprobes
(tracefs, PATH:OFFSET(REF_CTR_OFFSET)) and under uemu, with the semaphores and
breakpoints read at each step.  tests/fidelity.md maps these tests to the
behaviours of shared/reference/kernel-uprobes.md §9."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from oracle import KernelUprobes, sdt_sites, tracefs_reason
from samplelog import counts, expected_hits, json_hits, parse, per_probe, reported_hits, run_traced
from tracee import UEMU, Tracee, attach_cli, interrupt_and_run_out, read_memory, stop_cli, tracer_pid

from uemu import sdt
from uemu.ownsignals import CHECK_INTERVAL

needs_tracefs = pytest.mark.skipif(tracefs_reason() is not None, reason=str(tracefs_reason()))

RAWMAP_STEPS = ["text", "text-twice", "other-inode", "shared", "readonly", "uncovered", "data",
                "text-again", "text-over", "unmap-text", "text-moved", "text-split"]
CUT_STEPS = ["text", "cut", "data-cut", "text-cut", "restore", "data", "text-again"]  # rawmap --cut


def _observe(tracee: Tracee, library: sdt.ElfObject, before_step=None, started: bool = False,
             steps: list[str] = RAWMAP_STEPS) -> dict:
    """At each step of rawmap: every semaphore in every data-like mapping, and the
    first byte of every probe site in every text mapping."""
    probes = library.probes
    seen = {}
    if not started:
        tracee.wait_sync("start")
    for step in steps:
        if before_step is not None:
            before_step(step)
        tracee.release()
        tracee.wait_sync(step)
        maps = {line.word: [int(v) for v in line.values] for line in tracee.lines() if line.kind == "map"}
        if "unmap-text" in maps:
            del maps["text-again"], maps["text-over"], maps["unmap-text"]  # that text mapping is gone
        if "text-moved" in maps:
            del maps["text"]  # it is at text-moved now
        state = {}
        for name, (address, _, offset) in maps.items():
            if name.startswith("text"):
                state[name] = tuple(_peek(tracee.pid, address + p.file_offset - offset, 1) for p in probes)
            elif name in ("data", "shared", "readonly"):
                state[name] = tuple(_peek(tracee.pid, address + p.semaphore_offset - offset, 2)
                                    for p in probes if p.semaphore_offset is not None)
        seen[step] = state
    tracee.run_out()
    return seen


def _peek(pid: int, address: int, size: int) -> str | int | None:
    """One byte as hex, two as a little-endian counter; None for a page past the
    end of its file (rawmap --cut)."""
    try:
        data = read_memory(pid, address, size)
    except OSError:
        return None
    return data.hex() if size == 1 else int.from_bytes(data, "little")


def _library(build) -> sdt.ElfObject:
    return sdt.open_elf(str(build.directory / "libsdtlib.so"))


@pytest.mark.oracle
@needs_tracefs
def test_delayed_semaphores_step_by_step_equal_kernel_uprobes(runnable_build):
    """Text mapped before the data: the increment waits (once, however often the
    text is patched), is not applied to another inode, a shared, a read-only or a
    non-covering mapping, is applied when the data appears, counts again for a
    text mapped after it, and is not taken back by munmap.  A text moved by mremap
    keeps its breakpoints, and so does one split by mprotect."""
    library = _library(runnable_build)
    program = runnable_build.directory / "rawmap"
    with KernelUprobes(sdt_sites(library.path), with_args=False), Tracee([program]) as tracee:
        kernel = _observe(tracee, library)
    with Tracee([program], under=(*UEMU, "run", "--")) as tracee:
        under_run = _observe(tracee, library)
    with Tracee([program]) as tracee:
        tracee.wait_sync("start")
        cli = attach_cli("--mappings=syscall", str(tracee.pid))
        assert tracer_pid(tracee.pid) != 0, "uemu is not attached, yet it said it was armed"
        under_attach = _observe(tracee, library, started=True)
        assert stop_cli(cli, None) == (0, "", "")  # the program's exit ends it
    nop = Path(library.path).read_bytes()[library.probes[0].file_offset:][:1].hex()
    assert kernel["text"]["text"][0] != nop and kernel["data"]["data"][0] > 0, "the oracle did nothing"
    assert nop not in (kernel["text-moved"]["text-moved"][0], kernel["text-split"]["text-split"][0]), \
        "the kernel's breakpoints moved with mremap and stayed through mprotect"
    assert _probed(under_run, nop) == _probed(kernel, nop)
    assert _probed(under_attach, nop) == _probed(kernel, nop)


def _probed(seen: dict, nop: str) -> dict:
    """``_observe``'s steps with each site's byte as the file's (``nop``) or a probe's:
    the kernel's breakpoint, uemu's, or the jump path's jump (uemu/jumps.py)."""
    return {step: {name: tuple(v if not isinstance(v, str) else "nop" if v == nop else "probe" for v in values)
                   for name, values in state.items()}
            for step, state in seen.items()}


@pytest.mark.oracle
@needs_tracefs
@pytest.mark.parametrize("where", ["past-text", "in-text", "whole"])
def test_writes_past_the_end_of_a_cut_file_fail_as_in_the_kernel(runnable_build, tmp_path, where):
    """The library is cut short while mapped: a counter VMA past the end cannot
    take the delayed increment, which is deleted all the same (the data mapped
    again once the file is whole gets nothing); a text mapped while the counter
    cannot be raised gets no breakpoint; a text page past the end cannot be read
    or patched (cut inside the text, or the whole file); a new text mapping afterwards still
    increments.  Kernel: ``delayed_ref_ctr_inc()``, ``uprobe_write_opcode()``."""
    copy = tmp_path / "libsdtlib.so"
    shutil.copy(runnable_build.directory / "libsdtlib.so", copy)
    library = sdt.open_elf(str(copy))
    page = os.sysconf("SC_PAGESIZE")
    first = {"past-text": min(p.semaphore_offset for p in library.probes if p.semaphore_offset),
             "in-text": min(p.file_offset for p in library.probes), "whole": 0}[where]
    cut = first // page * page
    text_end = max(s.p_offset + s.p_filesz for s in library.segments if s.executable)
    if where == "past-text" and cut < text_end:
        pytest.skip(f"{library.path}: the first semaphore shares a page with the text: no cut leaves the text whole")
    argv = [runnable_build.directory / "rawmap", "--cut", str(cut), copy]
    with KernelUprobes(sdt_sites(library.path), with_args=False), Tracee(argv) as tracee:
        kernel = _observe(tracee, library, steps=CUT_STEPS)
    with Tracee(argv, under=(*UEMU, "run", "--")) as tracee:
        under_run = _observe(tracee, library, steps=CUT_STEPS)
        run_warnings = tracee.stderr()
    with Tracee(argv) as tracee:
        tracee.wait_sync("start")
        cli = attach_cli("--mappings=syscall", str(tracee.pid))
        # Once the file is whole again, uemu's periodic look at its sites runs (as it does
        # on a slow machine): the breakpoint the cut took is no tampering to mend.
        under_attach = _observe(tracee, library, started=True, steps=CUT_STEPS,
                                before_step=lambda step: time.sleep(1.5 * CHECK_INTERVAL) if step == "data" else None)
        status, _, attach_warnings = stop_cli(cli, None)
    assert set(kernel["data"]["data"]) == {0}, "the kernel applied an increment it should have deleted"
    assert min(kernel["text-again"]["data"]) > 0, "the oracle's uprobes stopped counting"
    if where != "past-text":
        assert set(kernel["cut"]["text"]) == {None}, "the cut left the text readable"
    nop = Path(library.path).read_bytes()[library.probes[0].file_offset:][:1].hex()
    assert _probed(under_run, nop) == _probed(kernel, nop)
    assert _probed(under_attach, nop) == _probed(kernel, nop)
    assert status == 0
    for warnings in (run_warnings, attach_warnings):
        assert "ref_ctr increment failed" in warnings
        assert "Traceback" not in warnings


@pytest.mark.oracle
@needs_tracefs
def test_a_pending_increment_is_dropped_on_detach_without_a_write(samples):
    """Armed after the text, gone before the data: nothing to apply, nothing written."""
    program = samples / "rawmap"
    library = sdt.open_elf(str(samples / "libsdtlib.so"))
    results = {}
    for oracle in ("kernel", "uemu"):
        with Tracee([program]) as tracee:
            state = {}

            def arm_then_leave(step: str, tracee=tracee, state=state, oracle=oracle) -> None:
                if step == "text-twice":  # the text is mapped: arm now...
                    if oracle == "kernel":
                        state["kernel"] = KernelUprobes(sdt_sites(library.path), with_args=False).__enter__()
                    else:
                        state["cli"] = attach_cli("--mappings=syscall", str(tracee.pid))
                        assert tracer_pid(tracee.pid) != 0, "uemu is not attached, yet it said it was armed"
                elif step == "shared":  # ...and leave before the data
                    if oracle == "kernel":
                        state["kernel"].__exit__(None, None, None)
                    else:
                        assert stop_cli(state["cli"], signal.SIGINT)[0] == 0

            results[oracle] = _observe(tracee, library, before_step=arm_then_leave)
    nop = Path(library.path).read_bytes()[library.probes[0].file_offset:][:1].hex()
    assert _probed(results["uemu"], nop) == _probed(results["kernel"], nop)
    assert set(results["kernel"]["data"]["data"]) == {0}


@pytest.mark.oracle
@needs_tracefs
@pytest.mark.parametrize("name, args", [("fork", ()), ("exec", ("2",)), ("exec", ("2", "thread")),
                                        ("dlopen", ())], ids=["fork", "exec", "exec-thread", "dlopen"])
def test_follow_forks_counts_equal_kernel_uprobes(samples, name, args):
    """Children, exec chains and dlopen/dlclose/re-dlopen under uemu run -f hit as
    under a system-wide kernel uprobe: the kernel keeps breakpoints and raised
    semaphores in every child and arms every image and library it maps."""
    program = samples / name
    sites = sdt_sites(str(program), str(samples / "libsdtlib.so"))
    with KernelUprobes(sites, with_args=False) as kernel:
        _lines, status = _run_untraced(program, args)
        kernel_counts = kernel.hits()
    run = run_traced([program, *args], follow_forks=True)
    assert status == 0 and run.exit_status == 0
    assert counts(reported_hits(run.events)) == +kernel_counts
    assert counts(expected_hits(run.lines)) == +kernel_counts


def _run_untraced(program, args):
    from samplelog import run_untraced

    return run_untraced([program, *args])


def test_children_not_followed_are_cleaned_before_they_run(samples):
    """Without -f: every child (fork, grandchild, vfork, posix_spawn) runs as if
    untraced (no SIGTRAP from a breakpoint of ours, semaphores not raised in it),
    and only the parent's hits are reported."""
    run = run_traced([samples / "fork"])
    assert run.exit_status == 0
    children = [line for line in run.lines if line.kind == "child"]
    assert children and all(line.values[-1] == "0" for line in children), children
    parent = run.lines[0].pid
    assert {e.pid for e in run.events} == {parent}
    assert {e.name for e in run.events} == {"parent"}
    hits = expected_hits(run.lines)
    assert "fork:guarded" not in {name for name, *_ in hits}  # the children saw their semaphore at 0
    assert counts(reported_hits(run.events)) == counts([h for h in hits if h[2] == parent])


def test_exec_through_a_shell_reports_the_new_images_probes(usdt, samples):
    with usdt.run(["sh", "-c", f"exec {samples / 'basic'} 2"]) as trace:
        pass
    assert trace.exit_status == 0
    assert trace.counts() == counts(expected_hits(parse(trace.stdout.decode())))
    assert trace.events and {e.object for e in trace.events} == {str(samples / "basic")}


def test_dlopen_while_attached_arms_each_load(samples, tmp_path):
    """Attached before the first dlopen (rendezvous, the default): the library's
    probes fire after each dlopen, stop with dlclose, and fire again after the
    second dlopen with its semaphore raised again."""
    with Tracee([samples / "dlopen"]) as tracee:
        tracee.wait_sync("before-dlopen")
        events_file = tmp_path / "events"
        cli = attach_cli(str(tracee.pid), "--json", "-o", str(events_file))
        assert tracer_pid(tracee.pid) != 0, "uemu is not attached, yet it said it was armed"
        for label in ("before-mprotect", "before-dlclose", "before-reopen", "end"):
            tracee.release()
            tracee.wait_sync(label)
        truth = interrupt_and_run_out(tracee, cli)
    assert truth and json_hits(events_file) == truth


@pytest.mark.parametrize("mappings", ["rendezvous", "syscall"])
def test_threads_loading_and_unloading_a_library_while_attached(samples, tmp_path, mappings):
    """Several threads dlopen, call and dlclose a probed library over and over:
    every load is armed before the call (its semaphore raised too, so the guarded
    probe passes), every unload forgotten, every hit of every thread reported."""
    with Tracee([samples / "dlthreads", "3", "15"]) as tracee:
        tracee.wait_sync("start")
        events_file = tmp_path / "events"
        cli = attach_cli(f"--mappings={mappings}", str(tracee.pid), "--json", "-o", str(events_file))
        assert tracer_pid(tracee.pid) != 0, "uemu is not attached, yet it said it was armed"
        tracee.release()
        tracee.wait_sync("end")
        truth = interrupt_and_run_out(tracee, cli)
    reported = json_hits(events_file)
    assert counts(truth)["sdtlib:guarded"] == 45  # the semaphore was raised in every fresh mapping
    # sdtlib:call's third argument is the library's static call counter, which the
    # other threads may bump between the line the program prints and the probe.
    assert per_probe(_without_shared_counter(reported)) == per_probe(_without_shared_counter(truth))


def _without_shared_counter(hits):
    return [(name, values[:2] if name == "sdtlib:call" else values, tid) for name, values, tid in hits]
