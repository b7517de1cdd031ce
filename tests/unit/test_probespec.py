"""PROBE words: SDT globs, the kernel's uprobe_events place, PATH:SYMBOL+OFF."""

import pytest

from uemu import errors, probespec
from uemu.probespec import RawUprobe, SdtPattern, SymbolUprobe
from uemu.sdt import Probe


@pytest.mark.parametrize(
    "text, value",
    [("0x1f", 31), ("0X1F", 31), ("017", 15), ("0", 0), ("42", 42), ("4096", 4096)],
)
def test_kstrtoul_bases(text, value):
    assert probespec.kstrtoul(text) == value


@pytest.mark.parametrize("text", ["", "x12", "0x", "09", "-1", "12a"])
def test_kstrtoul_rejects(text):
    with pytest.raises(ValueError):
        probespec.kstrtoul(text)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("/bin/prog:0x1130", RawUprobe("/bin/prog", 0x1130, 0, "/bin/prog:0x1130")),
        ("/bin/prog:0x1130(0x4010)", RawUprobe("/bin/prog", 0x1130, 0x4010, "/bin/prog:0x1130(0x4010)")),
        ("./prog:4400(020)", RawUprobe("./prog", 4400, 16, "./prog:4400(020)")),
        ("/a:b/prog:0x10", RawUprobe("/a:b/prog", 0x10, 0, "/a:b/prog:0x10")),
        ("/bin/prog:main", SymbolUprobe("/bin/prog", "main", 0, "/bin/prog:main")),
        ("/bin/prog:main+0x8", SymbolUprobe("/bin/prog", "main", 8, "/bin/prog:main+0x8")),
        ("prov:name", SdtPattern(None, "prov", "name", "prov:name")),
        ("libc.so*:prov:na*", SdtPattern("libc.so*", "prov", "na*", "libc.so*:prov:na*")),
        ("/usr/lib/libx.so:prov:name", SdtPattern("/usr/lib/libx.so", "prov", "name", "/usr/lib/libx.so:prov:name")),
        ("tick", SdtPattern(None, "*", "tick", "tick")),
        (":tick", SdtPattern(None, "*", "tick", ":tick")),
    ],
)
def test_parse_classifies(text, expected):
    assert probespec.parse(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("/bin/prog:0x10(0x20", "Reference counter brace is not closed"),
        ("/bin/prog:0x10(0x20)x", "Reference counter has wrong suffix"),
        ("/bin/prog:0x10(zz)", "Invalid reference counter offset"),
        ("/bin/prog:0x1g", "Invalid uprobe offset"),
    ],
)
def test_parse_tracefs_errors_use_kernel_words(text, message):
    with pytest.raises(errors.BadInput, match=message):
        probespec.parse(text)


def _probe(obj, provider, name):
    return Probe(obj, provider, name, 0x1000, 0x1000, None, None, "", None, 0)


PROBES = [
    _probe("/usr/lib/libfoo.so.1", "foo", "start"),
    _probe("/usr/lib/libfoo.so.1", "foo", "stop"),
    _probe("/usr/bin/app", "app", "tick"),
    _probe("/usr/bin/app", "app", "tock"),
]


def test_select_by_object_basename_and_path():
    by_base = probespec.select(PROBES, [probespec.parse("libfoo.so*:foo:*")])
    by_path = probespec.select(PROBES, [probespec.parse("/usr/lib/libfoo.so.1:*:st*")])
    assert [p.name for p in by_base] == ["start", "stop"]
    assert [p.name for p in by_path] == ["start", "stop"]


def test_select_keeps_input_order_and_unions_patterns():
    chosen = probespec.select(PROBES, [probespec.parse("app:tock"), probespec.parse("foo:start")])
    assert [p.full_name for p in chosen] == ["foo:start", "app:tock"]


def test_unmatched_pattern_names_near_matches():
    with pytest.raises(errors.ProbeNotFound) as info:
        probespec.select(PROBES, [probespec.parse("app:tik")])
    assert "app:tick" in info.value.near
    assert info.value.exit_code == 6
