"""PROBE words that match nothing when tracing starts stay pending and are armed in
objects mapped later (issue 11 §1): a dlopen'ed library, an exec'd program, a library
the JVM's launcher loads; --strict makes them an error, and a word that never matched
is said at the end."""

from __future__ import annotations

import glob
import shutil
import subprocess
import sys

import pytest
from samplelog import counts, expected_hits, reported_hits, run_traced

from uemu import errors, sdt
from uemu.session import Session


def _uemu(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "uemu", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.parametrize(("word", "providers"), [("sdtlib:*", {"sdtlib"}),
                                                  ("libsdtlib.so:sdtlib:*", {"sdtlib"}),
                                                  ("libsdt*:*:*", {"sdtlib", "common"})])
def test_a_library_loaded_by_dlopen_is_matched_by_short_names(samples, word, providers):
    """The program itself has no probes; the word waits for libsdtlib.so."""
    warnings: list[str] = []
    run = run_traced([samples / "dlopen"], [word], warn=warnings.append)
    assert run.exit_status == 0
    truth = [hit for hit in expected_hits(run.lines) if hit[0].split(":")[0] in providers]
    assert truth and counts(reported_hits(run.events)) == counts(truth)
    assert any("stays pending" in w for w in warnings), warnings
    assert not any("never matched" in w for w in warnings), warnings


def test_an_exec_chain_is_matched_after_the_exec(samples):
    warnings: list[str] = []
    run = run_traced(["sh", "-c", f"exec {samples / 'basic'} 2"], ["basic:*"], warn=warnings.append)
    assert run.exit_status == 0
    assert counts(reported_hits(run.events)) == counts(expected_hits(run.lines))
    assert run.events and any("stays pending" in w for w in warnings)


def test_strict_refuses_a_word_that_matches_nothing_yet(samples):
    with pytest.raises(errors.ProbeNotFound) as caught:
        Session(["sdtlib:start"], strict=True).spawn([str(samples / "dlopen")])
    assert "dlopen" in caught.value.message and "--strict" in caught.value.message
    result = _uemu("run", "--strict", "sdtlib:start", "--", str(samples / "dlopen"))
    assert result.returncode == 6 and result.stderr.count("\n") == 1, result.stderr


def test_a_word_that_never_matched_is_said_at_the_end_with_the_closest_probes(samples):
    result = _uemu("run", "basic:strin", "--", str(samples / "basic"), "1")
    assert result.returncode == 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("uemu:")]
    assert len(lines) == 2 and "stays pending" in lines[0], result.stderr
    assert "'basic:strin' never matched a probe; closest probes seen: basic:string" in lines[1]


def test_nothing_to_trace_is_said(samples):
    result = _uemu("run", "--", "/bin/true")
    assert result.returncode == 0
    assert result.stderr == "uemu: warning: nothing was traced: no SDT probe in /bin/true or anything it loaded\n"
    quiet = _uemu("run", "--", "sh", "-c", f"exec {samples / 'basic'} 1 >/dev/null 2>&1")
    assert quiet.returncode == 0 and "uemu: warning" not in quiet.stderr, "the program exec'd had probes"


def _jvm() -> tuple[str, str] | None:
    """java and its libjvm.so, when the JVM carries hotspot SDT probes."""
    java = shutil.which("java")
    if java is None:
        return None
    real = subprocess.run([java, "-XshowSettings:properties", "-version"], capture_output=True, text=True)
    home = next((line.split("=", 1)[1].strip() for line in real.stderr.splitlines()
                 if line.strip().startswith("java.home =")), None)
    libjvm = next(iter(glob.glob(f"{home}/lib/server/libjvm.so")), None) if home else None
    if libjvm is None or not any(p.full_name == "hotspot:class__loaded" for p in sdt.open_elf(libjvm).probes):
        return None
    return java, libjvm


@pytest.mark.oracle
@pytest.mark.parametrize("word", ["hotspot:class__loaded", "libjvm.so:hotspot:class__loaded",
                                  "libjvm*:hotspot:class__loaded"])
def test_java_classes_loaded_equal_the_jvms_own_log(word, tmp_path):
    """libjvm.so is dlopen'ed by the launcher: the JVM's -Xlog:class+load is the truth."""
    found = _jvm()
    if found is None:
        pytest.skip("no java whose libjvm.so carries hotspot SDT probes")
    java, _ = found
    log = tmp_path / "classes"
    result = _uemu("run", "--count", word, "--", java, f"-Xlog:class+load:file={log}", "-version", timeout=300)
    assert result.returncode == 0, result.stderr
    loaded = sum(1 for line in log.read_text().splitlines() if "source:" in line)
    assert loaded > 100
    assert result.stderr.splitlines()[-1] == f"hotspot:class__loaded {loaded}", result.stderr
