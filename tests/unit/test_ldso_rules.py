"""ldso's pure rules: tokens, search-path lists, ld.so.cache decoding, ld.so.conf.

The whole search is compared with the dynamic linker itself in
integration/test_ldso_oracle.py; here each rule is pinned to glibc's words
(elf/dl-load.c ``is_dst``, ``_dl_dst_substitute``, ``fillin_rpath``;
elf/dl-cache.c ``search_cache``; sysdeps/generic/dl-cache.h).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from uemu import ldso

SYSTEM = ldso._System(
    lib="lib/x86_64-linux-gnu",
    platform="x86_64",
    system_dirs=("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib"),
    hwcaps=("x86-64-v3", "x86-64-v2"),
    cache_flags=frozenset({0x0303}),
)
OBJECT = ldso._Object("/opt/app/lib/libx.so", (1, 2), ldso._Dynamic(), "/opt/app/lib", None)


@pytest.mark.parametrize(("text", "expanded"), [
    ("$ORIGIN/../lib", "/opt/app/lib/../lib"),
    ("${ORIGIN}/x", "/opt/app/lib/x"),
    ("/a/$LIB/b", "/a/lib/x86_64-linux-gnu/b"),
    ("/a/${PLATFORM}", "/a/x86_64"),
    ("$ORIGINAL/x", "$ORIGINAL/x"),  # not a token: an identifier character follows
    ("$ORIGIN_x", "$ORIGIN_x"),
    ("${ORIGIN", "${ORIGIN"),  # no closing brace
    ("$FOO/x", "$FOO/x"),  # unknown: the $ stays
    ("a$", "a$"),
    ("$ORIGIN$LIB", "/opt/app/liblib/x86_64-linux-gnu"),
])
def test_dynamic_string_tokens(text: str, expanded: str) -> None:
    assert ldso._expand(text, OBJECT, SYSTEM) == expanded


def test_a_known_token_without_a_value_drops_the_path() -> None:
    riscv = ldso._System("lib", None, ("/lib",), (), frozenset({3}))
    assert ldso._expand("/x/$PLATFORM/y", OBJECT, riscv) is None
    unknown_origin = ldso._Object("", (0, 0), ldso._Dynamic(), None, None)
    assert ldso._expand("$ORIGIN/lib", unknown_origin, SYSTEM) is None


def test_search_path_elements() -> None:
    """Trailing slashes become one, an empty element is the current directory,
    a repeated one counts once, one whose token has no value is dropped."""
    riscv = ldso._System("lib", None, ("/lib",), (), frozenset({3}))
    assert ldso._search_path("/a//:/b:/a:::/:$PLATFORM/x:/c", ":", OBJECT, riscv) == ["/a/", "/b/", "", "/", "/c/"]
    assert ldso._search_path("/a;/b:/c", ":;", OBJECT, SYSTEM) == ["/a/", "/b/", "/c/"]
    assert ldso._search_path(None, ":", OBJECT, SYSTEM) == []


# ---------------------------------------------------------------- ld.so.cache


def cache_file(entries: list[tuple[int, str, str, int]], hwcaps: list[str] = (), endian: str = "<",
               flags_byte: int = 2, old_format: bool = False) -> bytes:
    """A cache in glibc's new format: header, 24-byte entries, strings, and a
    glibc-hwcaps extension when ``hwcaps`` names subdirectories."""
    strings = bytearray()
    offsets: dict[str, int] = {}
    header_size = 48 + 24 * len(entries)

    def string(text: str) -> int:
        if text not in offsets:
            offsets[text] = header_size + len(strings)
            strings.extend(text.encode() + b"\0")
        return offsets[text]

    body = b"".join(struct.pack(endian + "iIIIQ", flags, string(name), string(path), 0, hwcap)
                    for flags, name, path, hwcap in entries)
    hwcap_offsets = [string(h) for h in hwcaps]
    extension = b""
    extension_offset = 0
    if hwcaps:
        extension_offset = (header_size + len(strings) + 3) & ~3
        strings.extend(b"\0" * (extension_offset - header_size - len(strings)))
        array_offset = extension_offset + 8 + 16
        extension = (struct.pack(endian + "II", ldso._CACHE_EXTENSION_MAGIC, 1)
                     + struct.pack(endian + "IIII", ldso._CACHE_TAG_GLIBC_HWCAPS, 0, array_offset, 4 * len(hwcaps))
                     + b"".join(struct.pack(endian + "I", o) for o in hwcap_offsets))
    header = b"glibc-ld.so.cache1.1" + struct.pack(endian + "IIB3xI12x", len(entries), len(strings), flags_byte,
                                                   extension_offset)
    new = header + body + bytes(strings) + extension
    if not old_format:
        return new
    old = b"ld.so-1.7.0\0" + struct.pack("<I", 0)
    return old + new  # 16 bytes, already 8-aligned: no old entries, no padding


def read_cache(tmp_path: Path, data: bytes, system: ldso._System = SYSTEM) -> ldso._Cache | None:
    (tmp_path / "ld.so.cache").write_bytes(data)
    return ldso._Cache.read(str(tmp_path / "ld.so.cache"), system)


HWCAP = ldso._CACHE_HWCAP_EXTENSION


def test_the_best_supported_hwcaps_entry_wins(tmp_path: Path) -> None:
    cache = read_cache(tmp_path, cache_file([
        (0x0303, "libz.so.1", "/l/glibc-hwcaps/x86-64-v4/libz.so.1", HWCAP | 2),  # v4: unsupported here
        (0x0303, "libz.so.1", "/l/glibc-hwcaps/x86-64-v2/libz.so.1", HWCAP | 0),
        (0x0303, "libz.so.1", "/l/glibc-hwcaps/x86-64-v3/libz.so.1", HWCAP | 1),
        (0x0303, "libz.so.1", "/l/libz.so.1", 0),
    ], hwcaps=["x86-64-v2", "x86-64-v3", "x86-64-v4"]))
    assert cache is not None and cache.lookup("libz.so.1") == "/l/glibc-hwcaps/x86-64-v3/libz.so.1"


def test_plain_entries_and_flags(tmp_path: Path) -> None:
    """Another ABI's entry (libc6 without x86-64) is passed over; the first
    acceptable plain entry wins; a legacy hwcap entry does not count."""
    cache = read_cache(tmp_path, cache_file([
        (0x0003, "libm.so.6", "/lib32/libm.so.6", 0),
        (0x0303, "libm.so.6", "/l/tls/libm.so.6", 1 << 63 | 1),
        (0x0303, "libm.so.6", "/l/libm.so.6", 0),
        (0x0303, "libm.so.6", "/other/libm.so.6", 0),
    ]))
    assert cache is not None and cache.lookup("libm.so.6") == "/l/libm.so.6" and cache.lookup("libnone.so") is None
    i386 = ldso._System("lib32", "i686", ("/lib32",), (), ldso._GENERIC_CACHE_FLAGS)
    assert read_cache(tmp_path, cache_file([(0x0003, "libm.so.6", "/lib32/libm.so.6", 0)]), i386).lookup(
        "libm.so.6") == "/lib32/libm.so.6"


def test_big_endian_and_old_format_wrappers(tmp_path: Path) -> None:
    entries = [(0x0303, "liba.so", "/l/liba.so", 0)]
    assert read_cache(tmp_path, cache_file(entries, endian=">", flags_byte=3)).lookup("liba.so") == "/l/liba.so"
    assert read_cache(tmp_path, cache_file(entries, old_format=True)).lookup("liba.so") == "/l/liba.so"


@pytest.mark.parametrize("damage", ["truncated", "endian-invalid", "count", "string", "magic", "empty"])
def test_a_broken_cache_is_no_cache(tmp_path: Path, damage: str) -> None:
    data = bytearray(cache_file([(0x0303, "liba.so", "/l/liba.so", 0)]))
    if damage == "truncated":
        data = data[:60]
    elif damage == "endian-invalid":
        data[28] = 1
    elif damage == "count":
        struct.pack_into("<I", data, 20, 1 << 30)
    elif damage == "string":
        struct.pack_into("<I", data, 48 + 4, 1 << 30)
    elif damage == "magic":
        data[0:5] = b"GLIBC"
    else:
        data = bytearray()
    assert read_cache(tmp_path, bytes(data)) is None


# ---------------------------------------------------------------- ld.so.conf


def test_conf_includes_comments_and_types(tmp_path: Path) -> None:
    (tmp_path / "ld.so.conf.d").mkdir()
    (tmp_path / "ld.so.conf").write_text("# top\n/usr/local/lib\ninclude ld.so.conf.d/*.conf\n/opt/x=libc6 # typed\n")
    (tmp_path / "ld.so.conf.d" / "b.conf").write_text("/b/lib/\n")
    (tmp_path / "ld.so.conf.d" / "a.conf").write_text("/a/lib\n/usr/local/lib\ninclude ../ld.so.conf\n")
    assert ldso._conf_dirs(str(tmp_path / "ld.so.conf")) == ["/usr/local/lib/", "/a/lib/", "/b/lib/", "/opt/x/"]


def test_unreadable_programs_give_just_the_program(tmp_path: Path) -> None:
    """What is no ELF file, a FIFO, a missing file: the program alone, never an error."""
    import os

    (tmp_path / "text").write_text("hello\n")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "script").write_text(f"#!{tmp_path}/fifo\n")
    for name in ("text", "fifo", "loop", "missing"):
        assert ldso.startup_objects(str(tmp_path / name), {}) == [str(tmp_path / name)]
    assert ldso.startup_objects(str(tmp_path / "script"), {}) == [str(tmp_path / "script"), f"{tmp_path}/fifo"]
