"""Command line: ``uemu list | attach | run | repair``.

A thin layer over the library: parse words, check them, call the API, print.
Every option is checked, and every file uemu writes is opened or checked,
before anything is written into a process; every step after arming runs under
the session's one way out (``Session.close``).  Every ``UemuError`` becomes
one line on stderr and its exit code; text that comes from a file or a tracee
is escaped (``events.escape``) wherever it is printed.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn, TextIO, TypeVar

from . import __version__, errors, probespec, sdt
from .chrome import ChromeTrace, SlicePair, read_comm
from .events import Event, JsonSite, LineShape, TextSite, count_lines, escape, json_line, text_line
from .maps import read_maps
from .objects import MappedObject, mapped_objects
from .printf import FIELD_LIMIT, FormatError, PrintfFormat

if TYPE_CHECKING:  # the tracer is imported only by the commands that trace: listing stays fast
    from .session import Session

EXIT_CODES = """\
exit status:
  0  success (run: the command's own status, or 128+N if signal N killed it)
  1  a failure while tracing
  2  bad usage: an unknown option, a bad value (format, duration, count), a file
     uemu must write that cannot be written
  3  no such file or process
  4  permission denied
  5  bad input: not an ELF file, malformed notes, unsupported architecture
  6  no probe matches
  7  the process cannot be traced (already traced, zombie, kernel thread)
  8  a probe the kernel would refuse (offset mismatch, alignment, instruction)
"""

MAX_DURATION = 1e9
"""Seconds (31 years): the most setitimer() takes whole, and more than any trace."""

MAPPINGS = ("seccomp", "rendezvous", "syscall", "exec")
"""``mappings.MappingMode``'s values (that module is slow to import; tests/unit/test_mappings.py checks they agree)."""


class UsageError(errors.UemuError):
    """The command line itself is wrong: an option, a value, a file it names."""

    exit_code = 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parse(argv)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except errors.UemuError as err:
        _say(f"uemu: {escape(err.message)}")
        return err.exit_code
    except BrokenPipeError:
        # `uemu list | head`: the reader left; say nothing more.
        _silence(sys.stdout)
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # a bug of ours: the session has already restored the tracee
        if os.environ.get("UEMU_DEBUG"):
            raise
        _say(f"uemu: internal error: {type(err).__name__}: {escape(str(err))} (UEMU_DEBUG=1 shows the traceback)")
        return 1


def _say(line: str) -> None:
    """One line on stderr, if there is a stderr to say it on."""
    if sys.stderr is not None:
        with suppress(OSError):  # stderr is gone: nobody is left to tell
            print(line, file=sys.stderr, flush=True)


def _warn(message: str) -> None:
    """The session's warnings: built from names and paths of the tracee, so escaped."""
    _say(f"uemu: warning: {escape(message)}")


def _silence(stream: TextIO | None) -> None:
    """Point a stream whose reader left at /dev/null, so that the flush at exit
    does not complain again."""
    if stream is not None:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


# ---- parsing ----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one-line UsageErrors (exit 2), as every other error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _parse(argv: list[str]) -> argparse.Namespace:
    """Options may come anywhere before ``--`` (``uemu attach PID --json PROBE``):
    each command's words are parsed intermixed, which argparse cannot do through
    subparsers, so the command word picks its parser here."""
    top, commands = _parsers()
    command: list[str] | None = None
    if argv[:1] == ["run"] and "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    if not argv or argv[0] not in commands:
        return top.parse_args(argv)  # --help, --version, or a usage error
    parser = commands[argv[0]]
    args = parser.parse_intermixed_args(argv[1:])
    args.command = argv[0]
    if args.command == "run":
        if command is None:  # no "--": the words are the command
            command, args.probes = args.probes, []
        if not command:
            parser.error("run needs a command: uemu run [OPTIONS] [PROBE...] -- CMD [ARGS...]")
        args.argv = command
    elif args.command == "attach":
        _split_pids(args, parser)
    if args.command in ("run", "attach"):
        _check_tracing_options(args)
    return args


def _parsers() -> tuple[_Parser, dict[str, _Parser]]:
    top = _Parser(
        prog="uemu",
        description="SDT (USDT) probes traced from user space with ptrace, as kernel uprobes would.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"uemu {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    listing = sub.add_parser(
        "list",
        help="list the SDT probes of a file or a process",
        description="List SDT probes of an ELF file (path) or of every object mapped in a process (PID).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument("target", metavar="TARGET", help="an ELF file, or a PID (all digits)")
    listing.add_argument("patterns", metavar="PATTERN", nargs="*", help="[OBJECT:]PROVIDER:NAME globs")
    listing.add_argument("--json", action="store_true", help="one JSON object per probe site (JSON Lines)")
    listing.add_argument("--plan", action="store_true",
                         help="per site, whether its hits will take a jump (jump, pun, evict) or the trap, and why")
    listing.set_defaults(handler=_cmd_list)

    run = sub.add_parser(
        "run",
        help="start a command under trace and report its probe hits",
        usage="uemu run [OPTIONS] [PROBE...] -- CMD [ARGS...]",
        description="Start CMD stopped before its first instruction, arm the probes, run it. "
        "Hits go to stderr (the command keeps stdout) unless -o is given; uemu exits with "
        "the command's status, or 128+N if signal N killed it.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("probes", metavar="PROBE", nargs="*", help=_PROBE_HELP)
    _tracing_options(run, default_mappings="seccomp")
    run.set_defaults(handler=_cmd_run)

    attach = sub.add_parser(
        "attach",
        help="trace running processes",
        usage="uemu attach [OPTIONS] PID [PID...] [PROBE...]",
        description="Attach to every thread of each PID and report probe hits until Ctrl-C, SIGTERM, "
        "SIGHUP, --duration, --max-events or the processes' exit; then restore them and detach. "
        "The leading all-digit words are PIDs, the others PROBEs.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    attach.add_argument("words", metavar="PID|PROBE", nargs="*", help="PIDs, then " + _PROBE_HELP)
    attach.add_argument("-p", "--pid", dest="pids", metavar="PID", type=_pid, action="append", default=[],
                        help="a process to trace (repeatable; as strace -p)")
    _tracing_options(attach, default_mappings="rendezvous")
    attach.set_defaults(handler=_cmd_attach)
    repair = sub.add_parser(
        "repair",
        help="undo what a uemu that died left in a process",
        description="Restore PID from uemu's journal and the table inside it: breakpoints, raised semaphores, "
        "the SIGTRAP action, uemu's areas. Without PID, list what the journals say is left behind "
        "(and remove the journals of processes that are gone).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    repair.add_argument("pid", metavar="PID", type=_pid, nargs="?")
    repair.set_defaults(handler=_cmd_repair)
    return top, {"list": listing, "run": run, "attach": attach, "repair": repair}


_PROBE_HELP = (
    "[OBJECT:]PROVIDER:NAME glob, the kernel's PATH:OFFSET[(REF_CTR_OFFSET)], or "
    "PATH:SYMBOL[+OFFSET]; none means every SDT probe"
)


def _tracing_options(parser: argparse.ArgumentParser, default_mappings: str) -> None:
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--output-format", choices=("text", "json", "chrome"),
                       help="a line per hit (text, the default), JSON Lines, or a Chrome/Perfetto "
                       "trace (Trace Event Format JSON)")
    shape.add_argument("--json", dest="output_format", action="store_const", const="json",
                       help="--output-format json")
    shape.add_argument("-c", "--count", action="store_true", help="print hit counts per probe at the end instead")
    parser.add_argument("--format", metavar="FMT",
                        help="printf-style line per hit (%%d %%i %%u %%x %%o %%c %%s %%.*s %%p %%f %%e %%g "
                        "%%%%, flags, width, precision, %%N$ positions, \\n \\t \\xHH escapes); with "
                        "chrome output, the events' names")
    parser.add_argument("--slice", metavar="BEGIN=END", type=_slice_pair, action="append", default=[],
                        help="chrome output: hits of BEGIN and END (two probe globs) open and close "
                        "nested slices per thread; their probes are traced too (repeatable)")
    parser.add_argument("-s", "--strsize", metavar="N", type=_string_size, default=256,
                        help="bytes read for %%s (default 256)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write hits to FILE")
    parser.add_argument("--duration", metavar="SECONDS", type=_seconds, help="stop tracing after this long")
    parser.add_argument("--max-events", metavar="N", type=_positive, help="stop tracing after N hits")
    parser.add_argument("--no-jumps", dest="jumps", action="store_false",
                        help="every site takes a breakpoint and a stop per hit (by default a site where a "
                        "jump fits takes the jump path: no stop; 'uemu list --plan' says which)")
    parser.add_argument("--drop", action="store_true",
                        help="jump path: a hit finding the event ring full is dropped (and counted) instead "
                        "of waiting for room")
    parser.add_argument("--ring-size", metavar="SIZE", type=_ring_size,
                        help="jump path: bytes of each traced process's event ring, a power of two from 64K "
                        "to 1G (K, M, G; default 16M, and a quarter more for its stamps): memory of the program, "
                        "taken when tracing starts (as hits fill it under -c); a burst bigger than the ring "
                        "waits for uemu to read (or drops under --drop)")
    parser.add_argument("-f", "--follow-forks", action="store_true", help="trace children too (fork, vfork, clone)")
    parser.add_argument("--strict", action="store_true",
                        help="a PROBE that matches nothing at start is an error (else it waits for objects "
                        "loaded later)")
    parser.add_argument("--ready-file", metavar="FILE",
                        help="create FILE once the probes are armed (a script can wait for it)")
    parser.add_argument(
        "--mappings",
        choices=MAPPINGS,
        default=default_mappings,
        help="how new mappings (dlopen, mmap) are noticed: a seccomp filter stopping only mapping "
        "syscalls (run only), the dynamic linker's dlopen breakpoint, a stop at every syscall, or only "
        f"at exec (default {default_mappings})",
    )


# ---- option values ------------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= MAX_DURATION:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{text!r}: a duration is more than 0 and at most {MAX_DURATION:g} seconds")
    return value


def _whole(text: str, low: int, high: float, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not low <= value <= high:
        limit = "" if math.isinf(high) else f" and at most {high}"
        raise argparse.ArgumentTypeError(f"{text!r}: {what} is at least {low}{limit}")
    return value


def _positive(text: str) -> int:
    return _whole(text, 1, math.inf, "a count")


def _string_size(text: str) -> int:
    return _whole(text, 0, FIELD_LIMIT, "a string size")


def _ring_size(text: str) -> int:
    from .ring import parse_size

    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _pid(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"not a PID: {text!r}")
    return _whole(text, 1, math.inf, "a PID")


def _slice_pair(text: str) -> SlicePair:
    begin, _, end = text.partition("=")
    try:
        ends = [probespec.parse(word) for word in (begin, end) if word and "=" not in word]
    except errors.BadInput:
        ends = []
    if len(ends) == 2 and begin != end:
        first, second = ends
        if isinstance(first, probespec.SdtPattern) and isinstance(second, probespec.SdtPattern):
            return SlicePair(first, second)
    raise argparse.ArgumentTypeError(f"{text!r}: a slice is BEGIN=END, two different [OBJECT:]PROVIDER:NAME globs")


def _split_pids(args: argparse.Namespace, parser: _Parser) -> None:
    """``attach PID [PID...] [PROBE...]``: the leading all-digit words are PIDs."""
    words = args.words
    lead = next((i for i, word in enumerate(words) if not (word.isascii() and word.isdigit())), len(words))
    try:
        pids = args.pids + [_pid(word) for word in words[:lead]]
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    if not pids:
        late = any(word.isascii() and word.isdigit() for word in words)
        parser.error(("the PIDs come before the PROBEs" if late else "attach needs a PID")
                     + ": uemu attach [OPTIONS] PID [PID...] [PROBE...]")
    args.pids = list(dict.fromkeys(pids))
    args.probes = words[lead:]


def _check_tracing_options(args: argparse.Namespace) -> None:
    """What no single option's parser can see: combinations, the format, the
    ready file's directory.  All before anything is traced."""
    args.output_format = args.output_format or "text"
    if args.command == "attach" and args.mappings == "seccomp":
        raise UsageError("--mappings seccomp needs 'uemu run': a running process cannot be given the "
                         "filter (attach takes rendezvous, syscall or exec)")
    if args.format is not None and (args.count or args.output_format == "json"):
        raise UsageError("--format shapes text lines or chrome event names: not with --json or --count")
    if args.slice and args.output_format != "chrome":
        raise UsageError("--slice pairs probes into the slices of --output-format chrome")
    if args.output_format == "chrome" and args.command == "run" and args.output is None:
        raise UsageError("run writes a chrome trace with -o FILE: its stderr is the command's")
    args.printf = None
    if args.format is not None:
        try:
            args.printf = PrintfFormat(args.format, args.strsize, escape_literal=args.output_format == "chrome")
        except FormatError as err:
            raise UsageError(f"--format: {err}") from None
    if args.ready_file is not None:
        _check_creatable("--ready-file", args.ready_file)
    # The slices' probes are traced too; with no other PROBE, only they are.
    args.probes = list(dict.fromkeys([*args.probes, *(p.text for s in args.slice for p in (s.begin, s.end))]))


def _check_creatable(option: str, path: str) -> None:
    """A file created only after arming must be known creatable before it."""
    directory = os.path.dirname(path) or "."
    if os.path.isdir(path):
        problem = "is a directory"
    elif not os.path.isdir(directory):
        problem = f"no directory {directory}"
    elif not os.access(directory, os.W_OK | os.X_OK):
        problem = f"cannot create files in {directory}"
    else:
        return
    raise UsageError(f"{option} {path}: {problem}")


# ---- run and attach -------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    session = _session(args)
    sink = _Sink.open(args, sys.stderr, "stderr")
    try:
        session.spawn(args.argv)
        _trace(session, args, sink)
    finally:
        session.close()
        sink.close()
    return session.exit_status if session.exit_status is not None else 0


def _cmd_attach(args: argparse.Namespace) -> int:
    session = _session(args)
    sink = _Sink.open(args, sys.stdout, "stdout")
    try:
        for pid in args.pids:
            session.attach(pid)
        _trace(session, args, sink)
    finally:
        session.close()
        sink.close()
    return 0


def _session(args: argparse.Namespace) -> Session:
    from .session import Session

    return Session(
        args.probes,
        follow_forks=args.follow_forks,
        decode_args=not args.count,
        mappings=args.mappings,
        strict=args.strict,
        warn=_warn,
        jumps=args.jumps,
        strings=args.printf.string_args if args.printf is not None else (),
        strsize=args.strsize,
        drop=args.drop,
        ring_size=args.ring_size,
        count_only=args.count and args.max_events is None,
    )


def _trace(session: Session, args: argparse.Namespace, sink: _Sink) -> None:
    """Everything after arming; the caller closes the session on every way out."""
    if args.ready_file is not None:
        try:
            with open(args.ready_file, "w"):
                pass
        except OSError as err:
            raise errors.OutputFailure(f"cannot create --ready-file {args.ready_file}: {err.strerror}") from None
    session.run(sink.handler(session), duration=args.duration, max_events=args.max_events)
    sink.finish(session)


_Out = TypeVar("_Out")
"""What a sink's write takes: an event, or text."""


@dataclass
class _Sink:
    """Where hits go and in what shape: opened and checked before anything is armed."""

    stream: TextIO
    where: str
    owned: bool
    count: bool
    render: Callable[[Event], str] | None = None
    lines: LineShape | None = None
    """The shape of ``render``'s lines, where the jump path can write them without an Event."""
    chrome: ChromeTrace | None = None
    failure: OSError | None = None

    @classmethod
    def open(cls, args: argparse.Namespace, default: TextIO | None, default_name: str) -> _Sink:
        if args.output is not None:
            try:
                # the sink owns the file past this function: close() closes it
                stream: TextIO = open(args.output, "w", buffering=1 << 16, encoding="utf-8",  # noqa: SIM115
                                      errors="surrogateescape")
            except OSError as err:
                raise UsageError(f"-o {args.output}: cannot write it: {err.strerror}") from None
            sink = cls(stream, args.output, True, args.count)
        elif default is None:
            raise UsageError(f"{default_name} is closed: give -o FILE for the hits")
        else:
            if isinstance(default, io.TextIOWrapper):
                default.reconfigure(errors="surrogateescape")  # argv's bytes in --format come back as given
            sink = cls(default, default_name, False, args.count)
        try:
            sink._shape(args)
        except BaseException:
            sink.close()
            raise
        return sink

    def _shape(self, args: argparse.Namespace) -> None:
        if args.count:
            return
        if args.output_format == "chrome":
            name = None if args.printf is None else args.printf.text
            self.chrome = ChromeTrace(self.stream, args.slice, name=name, comm=read_comm)
        elif args.output_format == "json":
            self.render, self.lines = json_line, JsonSite.of
        elif args.printf is None:
            self.render, self.lines = text_line, TextSite.of
        else:
            self.render = args.printf.render

    def handler(self, session: Session) -> Callable[[Event], None] | None:
        """The hit handler: a write that fails stops tracing (the session then
        restores everything) and is reported by ``finish``.  JSON and text lines: the jump
        path's hits come as their lines, a batch a write (``Reporter.line_shape``)."""
        if self.count:
            return None
        if self.chrome is not None:
            self.chrome.comm = session.thread_name
            write: Callable[[Event], object] = self.chrome.write
        else:
            render, put = self.render, self.stream.write
            assert render is not None
            write = lambda event: put(render(event))  # noqa: E731
        on_hit = self._guarded(session, write)
        if self.lines is not None:
            session.writes_lines(on_hit, self._guarded(session, self.stream.write), self.lines)
        return on_hit

    def _guarded(self, session: Session, write: Callable[[_Out], object]) -> Callable[[_Out], None]:
        """``write``, not called once a write failed; the first failure kept, and tracing stopped."""

        def guarded(out: _Out) -> None:
            if self.failure is None:
                try:
                    write(out)
                except OSError as err:
                    self.failure = err
                    session.stop("output")

        return guarded

    def finish(self, session: Session) -> None:
        """What is written at the end (counts, the trace's close), then a flush;
        a reader that left is said nothing to, any other failure is an error."""
        try:
            if self.failure is None:
                if self.count:
                    self.stream.writelines(count_lines(session.counts()))
                if self.chrome is not None:
                    self.chrome.close()
            self.stream.flush()
        except OSError as err:
            self.failure = self.failure or err
        if isinstance(self.failure, BrokenPipeError):
            _silence(self.stream)
        elif self.failure is not None:
            raise errors.OutputFailure(f"cannot write hits to {self.where}: {self.failure.strerror}")

    def close(self) -> None:
        if self.owned:
            with suppress(OSError):  # finish() has said what went wrong, or an earlier error is on its way
                self.stream.close()


# ---- repair ----------------------------------------------------------------


def _cmd_repair(args: argparse.Namespace) -> int:
    from . import repair

    def warn(message: str) -> None:
        print(f"uemu: warning: {message}", file=sys.stderr)

    if args.pid is None:
        lines, left = repair.left_behind(warn), None
    else:
        report = repair.repair(args.pid, warn)
        lines, left = report.lines, report.left
    for line in lines:
        print(line)
    if left is not None:
        print(f"uemu: {left}", file=sys.stderr)
        return 1
    return 0


# ---- list ------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace) -> int:
    patterns = [_sdt_pattern(text) for text in args.patterns]
    if args.target.isdigit():
        rows, warnings = _process_rows(int(args.target))
    else:
        rows, warnings = _file_rows(args.target)
    for warning in warnings:
        _warn(warning)
    if not rows:
        _say(f"uemu: no SDT probes in {escape(args.target)}")
        return 0
    chosen = {id(p) for p in probespec.select([row.probe for row in rows], patterns)}
    rows = [row for row in rows if id(row.probe) in chosen]
    if sys.stdout is None:
        raise UsageError("stdout is closed: nowhere to list the probes")
    if args.plan:
        _print_plans(rows, args.json, sys.stdout.write, int(args.target) if args.target.isdigit() else None)
        return 0
    (_print_json if args.json else _print_table)(rows, sys.stdout.write)
    return 0


def _sdt_pattern(text: str) -> probespec.SdtPattern:
    spec = probespec.parse(text)
    if not isinstance(spec, probespec.SdtPattern):
        raise errors.BadInput(f"{text}: list takes [OBJECT:]PROVIDER:NAME globs")
    return spec


@dataclass(frozen=True)
class _Row:
    """A probe site and, for a process, where it is at run time."""

    probe: sdt.Probe
    in_process: bool = False
    runtime_address: int | None = None
    runtime_semaphore: int | None = None

    @classmethod
    def mapped(cls, probe: sdt.Probe, mapped: MappedObject) -> _Row:
        return cls(
            probe,
            True,
            None if probe.file_offset is None else mapped.runtime_address(probe.file_offset),
            None if probe.semaphore_offset is None else mapped.runtime_semaphore(probe.semaphore_offset),
        )


def _file_rows(path: str) -> tuple[list[_Row], list[str]]:
    obj = sdt.open_elf(path)
    return [_Row(p) for p in obj.probes], obj.warnings + [e.message for e in obj.note_errors]


def _process_rows(pid: int) -> tuple[list[_Row], list[str]]:
    objects, warnings = mapped_objects(pid, read_maps(pid))
    rows = []
    for mapped in objects:
        warnings += mapped.elf.warnings + [e.message for e in mapped.elf.note_errors]
        rows += [_Row.mapped(p, mapped) for p in mapped.elf.probes]
    return rows, warnings


def _print_json(rows: list[_Row], write: Callable[[str], object]) -> None:
    for row in rows:
        p = row.probe
        record = {
            "object": escape(p.object),
            "provider": escape(p.provider),
            "name": escape(p.name),
            "address": p.address,
            "file_offset": p.file_offset,
            "semaphore": p.semaphore,
            "semaphore_offset": p.semaphore_offset,
            "args": escape(p.args),
            "build_id": p.build_id,
        }
        if row.in_process:
            record["runtime_address"] = row.runtime_address
            record["runtime_semaphore"] = row.runtime_semaphore
        write(json.dumps(record) + "\n")


def _print_table(rows: list[_Row], write: Callable[[str], object]) -> None:
    """One line per probe name and object: sites, semaphore, argument layouts."""
    groups: dict[tuple[str, str, str], list[_Row]] = {}
    for row in rows:
        p = row.probe
        groups.setdefault((p.object, p.provider, p.name), []).append(row)
    for (obj, provider, name), sites in groups.items():
        addresses = ",".join(_hex(r.runtime_address if r.in_process else r.probe.address) for r in sites)
        # Usually one semaphore for every site of a name, but a site may have its own.
        semaphores = dict.fromkeys(
            (r.runtime_semaphore if r.in_process else r.probe.semaphore, r.probe.semaphore_offset)
            for r in sites
            if r.probe.semaphore is not None
        )
        semaphore = ",".join(f"{_hex(where)}(off {_hex(offset)})" for where, offset in semaphores) or "-"
        layouts = " | ".join(escape(layout) for layout in dict.fromkeys(r.probe.args for r in sites))
        count = f"{len(sites)} site" + ("s" if len(sites) > 1 else "")
        write(f"{escape(obj)} {escape(provider)}:{escape(name)} [{count}] {addresses} "
              f"semaphore={semaphore} args: {layouts}\n")


def _print_plans(rows: list[_Row], as_json: bool, write: Callable[[str], object], pid: int | None) -> None:
    """One line per site: the path its hits will take (uemu/jumps.py decides)."""
    from .jumpplan import Neighbours, plan_of_site
    from .process import start_brk

    vmas = read_maps(pid) if pid is not None else None
    brk = start_brk(pid) if pid is not None else None
    sites: dict[str, list[int]] = {}
    for row in rows:
        at = row.runtime_address if row.in_process else row.probe.address
        if at is not None:
            sites.setdefault(row.probe.object, []).append(at)
    elves = {elf.path: elf for elf in (sdt.open_elf(obj) for obj in sites)}
    neighbours = {obj: Neighbours(sorted(at)) for obj, at in sites.items()}
    for row in rows:
        p, where = row.probe, row.runtime_address if row.in_process else row.probe.address
        if p.file_offset is None or where is None:
            continue
        plan = plan_of_site(elves[p.object], p.file_offset, where, neighbours[p.object], vmas, brk)
        if as_json:
            write(json.dumps({"object": p.object, "provider": p.provider, "name": p.name, "address": where,
                              "plan": plan.path, "why": plan.why}) + "\n")
        else:
            write(f"{escape(p.object)} {escape(p.provider)}:{escape(p.name)} {_hex(where)} {plan.path}: "
                  f"{escape(plan.why)}\n")


def _hex(value: int | None) -> str:
    return "?" if value is None else f"{value:#x}"


if __name__ == "__main__":
    sys.exit(main())
