"""The objects a program starts with, found as glibc's dynamic linker finds them.

``ldd`` may run the program it is asked about (it execs it with
LD_TRACE_LOADED_OBJECTS, and an ELF interpreter of the program's choice runs
then); uemu never runs the target's code for its own purposes.  So this module
reads the ELF files instead, with ``elfheaders`` (bounded, regular files only),
and follows glibc's ``_dl_map_object`` (elf/dl-load.c):

- PT_INTERP names the dynamic linker, which is loaded first and answers to
  its path and its DT_SONAME; no PT_INTERP: a static program, nothing more.
- LD_PRELOAD (the environment uemu passes), then /etc/ld.so.preload.
- DT_NEEDED breadth first; a name already loaded (by a name it was loaded as,
  or its DT_SONAME) or a file already loaded (device and inode) is not loaded
  again.
- A name with a slash is a path (after dynamic string tokens).  Otherwise, in
  order: DT_RPATH of the loader, of its loader and on up, then of the program,
  unless the loader has DT_RUNPATH (an object with DT_RUNPATH has no DT_RPATH:
  get-dynamic-info.h); LD_LIBRARY_PATH (``:`` or ``;``); the loader's own
  DT_RUNPATH (direct dependencies only); /etc/ld.so.cache (format
  ``glibc-ld.so.cache1.1``; without a cache, the directories of
  /etc/ld.so.conf); the system directories.  DF_1_NODEFLIB in the loader skips
  the last two.  Every search directory is tried in its ``glibc-hwcaps/``
  subdirectories the CPU supports first.
- $ORIGIN, $LIB, $PLATFORM (also ``${...}``) in search paths and names;
  ``$ORIGIN`` of the program is the directory of its resolved path
  (/proc/self/exe), of a library the directory of the path it was opened as.
- A file of another ELF class, byte order or machine is skipped and the search
  goes on (glibc's ``found_other_class``).

The system directories and $LIB come from where the interpreter lives (glibc
puts ld.so in its slibdir: /usr/lib/x86_64-linux-gnu gives $LIB
``lib/x86_64-linux-gnu`` and /lib/x86_64-linux-gnu, /usr/lib/x86_64-linux-gnu,
/lib, /usr/lib, as ``ld.so --help`` lists them; Debian's lib32 ld.so gives
/lib32, /usr/lib32, /lib, /usr/lib).

Differs: glibc up to 2.36 also searches legacy hwcaps subdirectories (tls/,
x86_64/, i686/, sse2/, haswell/), gone since 2.37, and expands $PLATFORM to
``haswell`` or ``xeon_phi`` on some Intel CPUs: neither is modelled.  Secure
mode (a set-user-ID program), LD_AUDIT, DT_FILTER and DT_AUXILIARY are not
modelled.  Where ld.so would stop with an error (a file that is no ELF file in
a search directory, a missing library), the search goes on or the name is
left out: the program would not start, and uemu reports that when it runs it.
"""

from __future__ import annotations

import glob
import os
import shutil
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from . import errors
from .elfheaders import PT_DYNAMIC, PT_INTERP, PT_LOAD, ElfHeaders, Unsound, open_headers, open_regular

LD_SO_CACHE = "/etc/ld.so.cache"
LD_SO_CONF = "/etc/ld.so.conf"
LD_SO_PRELOAD = "/etc/ld.so.preload"
MAX_OBJECTS = 4096
"""Objects loaded at most: a hostile chain of DT_NEEDED ends here."""
MAX_NEEDED = 1024
"""DT_NEEDED entries of one object followed at most (a program has dozens; each
costs a search of every directory)."""
MAX_DYNAMIC = 1 << 20
"""Bytes of PT_DYNAMIC read at most (a big library's holds a few hundred)."""
MAX_STRING = 4096
"""Bytes of one dynamic string read at most (PATH_MAX)."""
MAX_CACHE = 64 << 20
MAX_SHEBANGS = 4
"""Interpreters the kernel follows at most (BINPRM_MAX_RECURSION)."""

DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 14, 15, 29
DT_FLAGS_1 = 0x6FFFFFFB
DF_1_NODEFLIB = 0x800

# ld.so.cache entry flags a dynamic linker accepts (_dl_cache_check_flags):
# FLAG_ELF_LIBC6 (3) with the arch's FLAG_*_LIB64 bits, or the generic 1 or 3.
_CACHE_FLAGS = {
    ("EM_X86_64", 64): frozenset({0x0303}),
    ("EM_X86_64", 32): frozenset({0x0803}),
    ("EM_AARCH64", 64): frozenset({0x0A03}),
    ("EM_RISCV", 64): frozenset({0x1003}),  # lp64d, Debian's riscv64 ABI
}
_GENERIC_CACHE_FLAGS = frozenset({1, 3})
_CACHE_HWCAP_EXTENSION = 1 << 62
_CACHE_ISA_LEVEL_BITS = (1 << 10) - 1
_CACHE_EXTENSION_MAGIC = 0xEAA42174
_CACHE_TAG_GLIBC_HWCAPS = 1

# AT_PLATFORM as the kernel sets it for a process of that machine and class.
_PLATFORMS = {("EM_X86_64", 64): "x86_64", ("EM_386", 32): "i686", ("EM_AARCH64", 64): "aarch64"}

# glibc-hwcaps subdirectories, best first, with the /proc/cpuinfo flags each
# needs (sysdeps/x86/get-isa-level.h; cpuinfo says pni for SSE3, abm for LZCNT,
# and xsave where glibc tests OSXSAVE).
_X86_64_LEVELS = (
    ("x86-64-v4", ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")),
    ("x86-64-v3", ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave")),
    ("x86-64-v2", ("cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3")),
)


@dataclass(frozen=True)
class _Abi:
    """What a library must share with the program (glibc's ``open_verify``)."""

    elf_class: int
    little_endian: bool
    machine: str

    @classmethod
    def of(cls, headers: ElfHeaders) -> _Abi:
        return cls(headers.header.elf_class, headers.header.little_endian, str(headers.header.e_machine))


@dataclass(frozen=True)
class _Dynamic:
    """The dynamic section's entries that decide loading."""

    needed: tuple[str, ...] = ()
    soname: str | None = None
    rpath: str | None = None
    runpath: str | None = None
    nodeflib: bool = False


@dataclass(eq=False)
class _Object:
    """A loaded object as ld.so's ``link_map`` knows it."""

    path: str
    """``l_name``: the path it was opened as ("" for the program, as in glibc)."""
    file_id: tuple[int, int]
    dynamic: _Dynamic
    origin: str | None
    """$ORIGIN; None where it cannot be known (a DST using it drops the path)."""
    loader: _Object | None
    names: list[str] = field(default_factory=list)
    """``l_libname``: the names it was loaded as, then its DT_SONAME once matched."""

    def answers_to(self, name: str) -> bool:
        """glibc's ``_dl_name_match_p``, and the DT_SONAME check of ``_dl_map_object``."""
        return name in self.names or name == self.dynamic.soname


@dataclass(frozen=True)
class _System:
    """The dynamic linker's fixed facts for one ABI."""

    lib: str
    """DL_DST_LIB: what $LIB expands to."""
    platform: str | None
    system_dirs: tuple[str, ...]
    hwcaps: tuple[str, ...]
    """glibc-hwcaps subdirectory names the CPU supports, best first."""
    cache_flags: frozenset[int]


def startup_objects(program: str, env: Mapping[str, str]) -> list[str]:
    """The program's path, then every object the dynamic linker loads before
    the program's first instruction, in link-map order (as ``ldd`` lists them).

    ``program`` is looked up in ``env``'s PATH as execvp does; a script's
    ``#!`` interpreter is followed as the kernel does.  Nothing is run.  What
    cannot be read is left out: the list is what uemu may look in for probes.
    """
    path = _executable(program, env)
    return [path, *_interpreter_objects(path, env, MAX_SHEBANGS)]


def _executable(program: str, env: Mapping[str, str]) -> str:
    if "/" in program:
        return program
    found = shutil.which(program, path=os.pathsep.join(os.get_exec_path(dict(env))))
    return found or program


def _interpreter_objects(path: str, env: Mapping[str, str], shebangs: int) -> list[str]:
    """What the kernel and ld.so load for ``path``, not counting ``path``."""
    try:
        with open_headers(path) as headers:
            abi, interp = _Abi.of(headers), _interp(headers)
            dynamic = _dynamic(headers)
    except errors.ElfFormatError:
        interpreter = _shebang(path) if shebangs else None
        if interpreter is None:
            return []
        return [interpreter, *_interpreter_objects(interpreter, env, shebangs - 1)]
    except (errors.UemuError, Unsound):
        return []
    if interp is None:
        return []  # a static program
    return _Linker(abi, interp, env).load(path, dynamic)


def _shebang(path: str) -> str | None:
    """The interpreter a ``#!`` line names (the kernel reads 256 bytes)."""
    try:
        stream, _ = open_regular(path, path)
        with stream:
            head = stream.read(256)
    except (OSError, errors.UemuError):
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    return os.fsdecode(words[0]) if words else None


def _interp(headers: ElfHeaders) -> str | None:
    for segment in headers.segments:
        if segment.p_type == PT_INTERP:
            data = headers.read(segment.p_offset, min(segment.p_filesz, MAX_STRING), "PT_INTERP")
            return os.fsdecode(data.split(b"\0", 1)[0])
    return None


def _dynamic(headers: ElfHeaders) -> _Dynamic:
    """DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH and DF_1_NODEFLIB from PT_DYNAMIC.

    ld.so reads the segment, not the section; DT_STRTAB is an address, turned
    into a file offset through PT_LOAD.  An object with DT_RUNPATH has no
    DT_RPATH (get-dynamic-info.h).
    """
    segment = next((s for s in headers.segments if s.p_type == PT_DYNAMIC), None)
    if segment is None:
        return _Dynamic()
    entries = list(_dynamic_entries(headers, segment.p_offset, segment.p_filesz))
    table = dict(entries)  # the last of each tag counts, as in get-dynamic-info.h
    strtab = _file_offset(headers, table.get(DT_STRTAB))
    size = table.get(DT_STRSZ, 0)

    def string(offset: int | None) -> str | None:
        if offset is None or strtab is None:
            return None
        length = min(MAX_STRING, size - offset, headers.size - strtab - offset)
        if length <= 0:
            return None
        return os.fsdecode(headers.read(strtab + offset, length, "dynamic string").split(b"\0", 1)[0])

    runpath = string(table.get(DT_RUNPATH))
    return _Dynamic(
        needed=tuple(filter(None, map(string, [value for tag, value in entries if tag == DT_NEEDED][:MAX_NEEDED]))),
        soname=string(table.get(DT_SONAME)),
        rpath=None if runpath is not None else string(table.get(DT_RPATH)),
        runpath=runpath,
        nodeflib=bool(table.get(DT_FLAGS_1, 0) & DF_1_NODEFLIB),
    )


def _file_offset(headers: ElfHeaders, vaddr: int | None) -> int | None:
    """The file offset of a link-time address, through PT_LOAD."""
    if vaddr is None:
        return None
    for segment in headers.segments:
        if segment.p_type == PT_LOAD:
            offset = segment.file_offset(vaddr)
            if offset is not None:
                return offset
    return None


def _dynamic_entries(headers: ElfHeaders, offset: int, size: int) -> Iterator[tuple[int, int]]:
    """(d_tag, d_val) up to DT_NULL; gABI Elf32_Dyn/Elf64_Dyn."""
    entry = struct.Struct(headers.header.byte_order + ("qQ" if headers.header.elf_class == 64 else "iI"))
    size = min(size, MAX_DYNAMIC, headers.size - offset)
    if size <= 0:
        return
    data = headers.read(offset, size, "PT_DYNAMIC")
    for tag, value in entry.iter_unpack(data[: len(data) - len(data) % entry.size]):
        if tag == DT_NULL:
            return
        yield tag, value


class _Linker:
    """One run of ld.so's start-up loading, for one program."""

    def __init__(self, abi: _Abi, interp: str, env: Mapping[str, str]):
        self.abi = abi
        self.system = _system(abi, interp)
        self.env = env
        self.objects: list[_Object] = []
        self.interp = interp
        self.cache: _Cache | None = _Cache.read(LD_SO_CACHE, self.system)
        self.conf_dirs = [] if self.cache is not None else _conf_dirs(LD_SO_CONF)

    def load(self, program: str, dynamic: _Dynamic) -> list[str]:
        main = _Object("", _file_id(program) or (0, 0), dynamic, _dirname(os.path.realpath(program)), None)
        rtld = self._open(self.interp, None, [self.interp])
        self.objects = [main] + ([rtld] if rtld is not None else [])
        order = [main]
        for name in _split(self.env.get("LD_PRELOAD", ""), " :") + _preload_file():
            self._append(order, self._map(name, main))  # rtld.c do_preload: the program is the loader
        for obj in order:  # breadth first, as _dl_map_object_deps; order grows as it goes
            for name in obj.dynamic.needed:
                self._append(order, self._map(_expand(name, obj, self.system), obj))
        self._append(order, rtld)  # ld.so stays last when nothing names it
        return [obj.path for obj in order[1:]]

    @staticmethod
    def _append(order: list[_Object], obj: _Object | None) -> None:
        if obj is not None and obj not in order and len(order) < MAX_OBJECTS:
            order.append(obj)

    def _map(self, name: str | None, loader: _Object) -> _Object | None:
        """``_dl_map_object``: a loaded object answering to ``name``, else the file found for it."""
        if not name:
            return None  # a token without a value: ld.so fails, we leave the name out
        for obj in self.objects:
            if obj.answers_to(name):
                if name not in obj.names:
                    obj.names.append(name)
                return obj
        if len(self.objects) >= MAX_OBJECTS:
            return None
        if "/" in name:
            path = _expand(name, loader, self.system)
            return self._open(path, loader, [name]) if path else None
        for path in self._candidates(name, loader):
            found = self._open(path, loader, [name])
            if found is not None:
                return found
        return None

    def _candidates(self, name: str, loader: _Object) -> Iterator[str]:
        main = self.objects[0]
        if loader.dynamic.runpath is None:
            chain: list[_Object] = []
            at: _Object | None = loader
            while at is not None:
                chain.append(at)
                at = at.loader
            if main not in chain:
                chain.append(main)
            for obj in chain:
                yield from self._in_dirs(name, _search_path(obj.dynamic.rpath, ":", obj, self.system))
        yield from self._in_dirs(name, _search_path(self.env.get("LD_LIBRARY_PATH"), ":;", main, self.system))
        yield from self._in_dirs(name, _search_path(loader.dynamic.runpath, ":", loader, self.system))
        if self.cache is not None:
            cached = self.cache.lookup(name)
            # DF_1_NODEFLIB: a cache entry in a system directory does not count.
            if cached is not None and not (loader.dynamic.nodeflib and cached.startswith(self.system.system_dirs)):
                yield cached
        elif not loader.dynamic.nodeflib:
            yield from self._in_dirs(name, self.conf_dirs)
        if not loader.dynamic.nodeflib:
            yield from self._in_dirs(name, [d + "/" for d in self.system.system_dirs])

    def _in_dirs(self, name: str, dirs: list[str]) -> Iterator[str]:
        """``open_path``: each directory's hwcaps subdirectories, then itself."""
        for directory in dirs:
            for sub in self.system.hwcaps:
                yield f"{directory}glibc-hwcaps/{sub}/{name}"
            yield directory + name

    def _open(self, path: str, loader: _Object | None, names: list[str]) -> _Object | None:
        """``open_verify`` and ``_dl_map_object_from_fd``: a new object, the one
        already loaded from that file, or None (missing, unreadable, other ABI)."""
        file_id = _file_id(path)
        if file_id is None:
            return None
        for obj in self.objects:
            if obj.file_id == file_id:
                obj.names.extend(n for n in names if n not in obj.names)
                return obj
        try:
            with open_headers(path) as headers:
                if _Abi.of(headers) != self.abi:
                    return None
                dynamic = _dynamic(headers)
        except (errors.UemuError, Unsound):
            return None
        obj = _Object(path, file_id, dynamic, _dirname(os.path.join(os.getcwd(), path)), loader, list(names))
        self.objects.append(obj)
        return obj


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL in the name
        return None
    return (st.st_dev, st.st_ino)


def _dirname(path: str) -> str:
    """The origin of ``path``: ``_dl_new_object`` cuts at the last slash, keeping a lone first one."""
    head = path.rsplit("/", 1)[0]
    return head or "/"


def _split(text: str, separators: str) -> list[str]:
    for separator in separators[1:]:
        text = text.replace(separator, separators[0])
    return [word for word in text.split(separators[0]) if word]


def _preload_file() -> list[str]:
    try:
        with open(LD_SO_PRELOAD, "rb") as stream:
            text = os.fsdecode(stream.read(1 << 20))
    except OSError:
        return []
    return _split(text, " \t\n:")


def _search_path(text: str | None, separators: str, obj: _Object, system: _System) -> list[str]:
    """``fillin_rpath``: directories with a trailing slash, tokens expanded, each
    once; an empty element is the current directory, one whose token has no
    value is dropped."""
    if not text:
        return []
    dirs: list[str] = []
    for element in _fields(text, separators):
        if element:
            expanded = _expand(element, obj, system)
            if not expanded:
                continue
            element = expanded.rstrip("/") + "/" if expanded.strip("/") else "/"
        if element not in dirs:
            dirs.append(element)
    return dirs


def _fields(text: str, separators: str) -> list[str]:
    """strsep: every field, empty ones included."""
    for separator in separators[1:]:
        text = text.replace(separator, separators[0])
    return text.split(separators[0])


_TOKENS = ("ORIGIN", "PLATFORM", "LIB")


def _expand(text: str, obj: _Object, system: _System) -> str | None:
    """``_dl_dst_substitute``: $ORIGIN, $PLATFORM, $LIB (or ``${...}``) replaced;
    None when a known token has no value; an unknown ``$`` stays."""
    if "$" not in text:
        return text
    values = {"ORIGIN": obj.origin, "PLATFORM": system.platform, "LIB": system.lib}
    out, i = [], 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
            continue
        token, length = _token(text, i + 1)
        if token is None:
            out.append("$")
            i += 1
            continue
        value = values[token]
        if value is None:
            return None
        out.append(value)
        i += 1 + length
    return "".join(out)


def _token(text: str, at: int) -> tuple[str | None, int]:
    """``is_dst``: the token at ``at`` (just after ``$``) and its length with braces."""
    curly = text.startswith("{", at)
    start = at + curly
    for token in _TOKENS:
        end = start + len(token)
        if not text.startswith(token, start):
            continue
        if curly:
            if text.startswith("}", end):
                return token, len(token) + 2
        elif not (end < len(text) and (text[end].isascii() and (text[end].isalnum() or text[end] == "_"))):
            return token, len(token)
    return None, 0


def _system(abi: _Abi, interp: str) -> _System:
    """$LIB and the system directories from the interpreter's own directory
    (its slibdir), $PLATFORM and hwcaps from the machine."""
    home = os.path.dirname(os.path.realpath(interp))
    # merged /usr: /usr/lib/x86_64-linux-gnu is also /lib/x86_64-linux-gnu, the name ld.so uses
    if home.startswith("/usr/") and os.path.realpath(home[4:]) == home:
        home = home[4:]
    lib = home.lstrip("/") or "lib"
    dirs = tuple(dict.fromkeys(["/" + lib, "/usr/" + lib, "/lib", "/usr/lib"]))
    key = (abi.machine, abi.elf_class)
    hwcaps = _x86_64_levels() if key == ("EM_X86_64", 64) else ()
    return _System(lib, _PLATFORMS.get(key), dirs, hwcaps, _CACHE_FLAGS.get(key, _GENERIC_CACHE_FLAGS))


def _x86_64_levels() -> tuple[str, ...]:
    """The x86-64 ISA levels this CPU supports, best first; a level needs
    every flag of the levels below it too."""
    try:
        with open("/proc/cpuinfo") as stream:
            have = set(next((line.split(":", 1)[1].split() for line in stream if line.startswith("flags")), []))
    except OSError:
        return ()
    supported: list[str] = []
    for name, needs in reversed(_X86_64_LEVELS):
        if not have.issuperset(needs):
            break
        supported.insert(0, name)
    return tuple(supported)


def _conf_dirs(path: str) -> list[str]:
    """ldconfig's configuration: one directory a line (``=TYPE`` ignored),
    ``include GLOB`` (relative to the including file's directory), ``#``
    comments; each directory once, each file read once."""
    dirs: list[str] = []
    _read_conf(path, dirs, set())
    return dirs


def _read_conf(path: str, dirs: list[str], seen: set[str]) -> None:
    real = os.path.realpath(path)
    if real in seen:
        return
    seen.add(real)
    try:
        stream, _ = open_regular(path, path)
        with stream:
            lines = os.fsdecode(stream.read(1 << 20)).splitlines()
    except (OSError, errors.UemuError):
        return
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line.startswith("include") and line[7:8].isspace():
            for pattern in line[8:].split():
                for included in sorted(glob.glob(os.path.join(os.path.dirname(path), pattern))):
                    _read_conf(included, dirs, seen)
        elif line.startswith("/"):
            directory = line.split("=", 1)[0].rstrip("/") + "/"
            if directory not in dirs:
                dirs.append(directory)


@dataclass
class _Cache:
    """/etc/ld.so.cache in glibc's new format (sysdeps/generic/dl-cache.h)."""

    entries: dict[str, list[tuple[int, int, str]]]
    """library name -> (flags, hwcap, path) in file order."""
    hwcaps_names: list[str]
    """The glibc-hwcaps extension: subdirectory names an entry's hwcap indexes."""
    system: _System

    @classmethod
    def read(cls, path: str, system: _System) -> _Cache | None:
        """None when there is no cache or it is not one glibc would use."""
        try:
            with open(path, "rb") as stream:
                data = stream.read(MAX_CACHE + 1)
        except OSError:
            return None
        if len(data) > MAX_CACHE:
            return None
        try:
            return cls._parse(data, system)
        except (struct.error, ValueError):
            return None

    @classmethod
    def _parse(cls, data: bytes, system: _System) -> _Cache | None:
        base = 0
        if data.startswith(b"ld.so-1.7.0"):  # old format first, the new one after its entries
            (old_count,) = struct.unpack_from("<I", data, 12)
            base = (16 + old_count * 12 + 7) & ~7
        if data[base : base + 20] != b"glibc-ld.so.cache1.1":
            return None
        endian = {0: "<", 2: "<", 3: ">"}.get(data[base + 28] & 3)
        if endian is None:
            return None
        count, _strings, _flags, extension = struct.unpack_from(endian + "IIB3xI", data, base + 20)
        if (len(data) - base - 48) // 24 < count:
            return None

        entries: dict[str, list[tuple[int, int, str]]] = {}
        table = data[base + 48 : base + 48 + 24 * count]
        for flags, key, value, _osversion, hwcap in struct.iter_unpack(endian + "iIIIQ", table):
            # entries name strings from the new header on; the extension from the file's start
            entries.setdefault(_c_string(data, base + key), []).append((flags, hwcap, _c_string(data, base + value)))
        return cls(entries, _hwcaps_names(data, endian, extension), system)

    def lookup(self, name: str) -> str | None:
        """``search_cache``: among the entries of ``name`` with acceptable flags,
        the glibc-hwcaps entry of the best supported subdirectory, else the
        first plain one (hwcaps entries come first)."""
        best, best_rank = None, len(self.system.hwcaps)
        for flags, hwcap, path in self.entries.get(name, []):
            if flags not in self.system.cache_flags:
                continue
            if (hwcap >> 32) & ~_CACHE_ISA_LEVEL_BITS == _CACHE_HWCAP_EXTENSION >> 32:
                index = hwcap & 0xFFFFFFFF
                subdir = self.hwcaps_names[index] if index < len(self.hwcaps_names) else None
                if subdir in self.system.hwcaps and self.system.hwcaps.index(subdir) < best_rank:
                    best, best_rank = path, self.system.hwcaps.index(subdir)
                continue
            if best is not None:
                break
            if hwcap:
                continue  # a legacy hwcap entry (not modelled: see the module's Differs)
            return path
        return best


def _c_string(data: bytes, at: int) -> str:
    if at >= len(data):
        raise ValueError("string outside the cache")
    return os.fsdecode(data[at : data.index(b"\0", at)])


def _hwcaps_names(data: bytes, endian: str, extension: int) -> list[str]:
    """The glibc-hwcaps section of the cache's extension directory, if any."""
    if not extension or extension % 4 or extension + 8 > len(data):
        return []
    magic, count = struct.unpack_from(endian + "II", data, extension)
    if magic != _CACHE_EXTENSION_MAGIC or extension + 8 + 16 * count > len(data):
        return []
    directory = data[extension + 8 : extension + 8 + 16 * count]
    for tag, _flags, offset, size in struct.iter_unpack(endian + "IIII", directory):
        if tag == _CACHE_TAG_GLIBC_HWCAPS and offset + size <= len(data) and size % 4 == 0:
            names = struct.iter_unpack(endian + "I", data[offset : offset + size])
            return [_c_string(data, index) for (index,) in names]
    return []
