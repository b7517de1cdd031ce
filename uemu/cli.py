"""Command line: ``uemu list | attach | run``.

A thin layer over the library: parse words, call the API, print.  Every
``UemuError`` becomes one line on stderr and its exit code; no traceback
reaches the user for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from . import errors, probespec, sdt
from .maps import read_maps
from .objects import MappedObject, mapped_objects

if TYPE_CHECKING:  # the tracer is imported only by the commands that trace: listing stays fast
    from .events import Event
    from .session import Session

EXIT_CODES = """\
exit status:
  0  success (run: the command's own status, or 128+N if signal N killed it)
  1  a failure while tracing
  2  bad usage
  3  no such file or process
  4  permission denied
  5  bad input: not an ELF file, malformed notes, unsupported architecture
  6  no probe matches
  7  the process cannot be traced (already traced, zombie, kernel thread)
  8  a probe the kernel would refuse (offset mismatch, alignment, instruction)
"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if argv[:1] == ["run"] and "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        if not command:
            command, args.probes = args.probes, []
        if not command:
            parser.error("run needs a command: uemu run [OPTIONS] [PROBE...] -- CMD [ARGS...]")
        args.argv = command
    try:
        return args.handler(args)
    except errors.UemuError as err:
        print(f"uemu: {err.message}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        # `uemu list | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # a bug of ours: the session has already restored the tracee
        if os.environ.get("UEMU_DEBUG"):
            raise
        print(f"uemu: internal error: {type(err).__name__}: {err} (UEMU_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uemu",
        description="SDT (USDT) probes traced from user space with ptrace, as kernel uprobes would.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser(
        "list",
        help="list the SDT probes of a file or a process",
        description="List SDT probes of an ELF file (path) or of every object mapped in a process (PID).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument("target", metavar="TARGET", help="an ELF file, or a PID (all digits)")
    listing.add_argument("patterns", metavar="PATTERN", nargs="*", help="[OBJECT:]PROVIDER:NAME globs")
    listing.add_argument("--json", action="store_true", help="one JSON object per probe site (JSON Lines)")
    listing.set_defaults(handler=_cmd_list)

    run = commands.add_parser(
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

    attach = commands.add_parser(
        "attach",
        help="trace a running process",
        description="Attach to every thread of PID and report probe hits until Ctrl-C, SIGTERM, "
        "SIGHUP, --duration, --max-events or the process's exit; then restore it and detach.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    attach.add_argument("pid", metavar="PID", type=int)
    attach.add_argument("probes", metavar="PROBE", nargs="*", help=_PROBE_HELP)
    _tracing_options(attach, default_mappings="rendezvous")
    attach.set_defaults(handler=_cmd_attach)
    return parser


_PROBE_HELP = (
    "[OBJECT:]PROVIDER:NAME glob, the kernel's PATH:OFFSET[(REF_CTR_OFFSET)], or "
    "PATH:SYMBOL[+OFFSET]; none means every SDT probe"
)


def _tracing_options(parser: argparse.ArgumentParser, default_mappings: str) -> None:
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object per hit (JSON Lines)")
    output.add_argument("--format", metavar="FMT", help="printf-style line per hit: %%d %%i %%u %%x %%X %%o %%c %%s %%p %%f %%%%")
    output.add_argument("--count", action="store_true", help="print hit counts per probe at the end instead")
    parser.add_argument("--strsize", metavar="N", type=int, default=256, help="bytes read for %%s (default 256)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write hits to FILE")
    parser.add_argument("--duration", metavar="SECONDS", type=float, help="stop tracing after this long")
    parser.add_argument("--max-events", metavar="N", type=int, help="stop tracing after N hits")
    parser.add_argument("-f", "--follow-forks", action="store_true", help="trace children too (fork, vfork, clone)")
    parser.add_argument("--strict", action="store_true",
                        help="a PROBE that matches nothing at start is an error (else it waits for objects "
                        "loaded later)")
    parser.add_argument("--ready-file", metavar="FILE",
                        help="create FILE once the probes are armed (a script can wait for it)")
    parser.add_argument(
        "--mappings",
        choices=("seccomp", "rendezvous", "syscall", "exec"),
        default=default_mappings,
        help="how new mappings (dlopen, mmap) are noticed: a seccomp filter stopping only mapping "
        "syscalls (run only), the dynamic linker's dlopen breakpoint, a stop at every syscall, or only "
        f"at exec (default {default_mappings})",
    )


# ---- run and attach ---------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    session = _session(args)
    with _output(args, default=sys.stderr) as stream:
        session.spawn(args.argv)
        _ready(args)
        _trace(session, args, stream)
    return session.exit_status if session.exit_status is not None else 0


def _cmd_attach(args: argparse.Namespace) -> int:
    session = _session(args)
    with _output(args, default=sys.stdout) as stream:
        session.attach(args.pid)
        _ready(args)
        _trace(session, args, stream)
    return 0


def _ready(args: argparse.Namespace) -> None:
    if args.ready_file is not None:
        with open(args.ready_file, "w"):
            pass


def _session(args: argparse.Namespace) -> Session:
    from .session import Session

    return Session(
        args.probes,
        follow_forks=args.follow_forks,
        decode_args=not args.count,
        mappings=args.mappings,
        strict=args.strict,
    )


def _trace(session: Session, args: argparse.Namespace, stream: TextIO) -> None:
    from .events import PrintfFormat, escape, text_line

    if args.count:
        session.run(duration=args.duration, max_events=args.max_events)
        for name, hits in sorted(session.counts().items()):
            stream.write(f"{escape(name)} {hits}\n")
        return
    if args.json:
        render: Callable[[Event], str] = lambda event: event.to_json() + "\n"
    elif args.format is not None:
        try:
            render = PrintfFormat(args.format, args.strsize).render
        except ValueError as err:
            raise errors.BadInput(str(err)) from None
    else:
        render = text_line
    write = stream.write
    session.run(lambda event: write(render(event)), duration=args.duration, max_events=args.max_events)


@contextmanager
def _output(args: argparse.Namespace, default: TextIO) -> Iterator[TextIO]:
    if args.output is None:
        yield default
        default.flush()
        return
    try:
        stream = open(args.output, "w", buffering=1 << 16)
    except OSError as err:
        raise errors.UemuError(f"cannot write {args.output}: {err.strerror}") from None
    with stream:
        yield stream


# ---- list ------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace) -> int:
    patterns = [_sdt_pattern(text) for text in args.patterns]
    if args.target.isdigit():
        rows, warnings = _process_rows(int(args.target))
    else:
        rows, warnings = _file_rows(args.target)
    for warning in warnings:
        print(f"uemu: warning: {warning}", file=sys.stderr)
    if not rows:
        print(f"uemu: no SDT probes in {args.target}", file=sys.stderr)
        return 0
    chosen = {id(p) for p in probespec.select([row.probe for row in rows], patterns)}
    rows = [row for row in rows if id(row.probe) in chosen]
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
            "object": p.object,
            "provider": p.provider,
            "name": p.name,
            "address": p.address,
            "file_offset": p.file_offset,
            "semaphore": p.semaphore,
            "semaphore_offset": p.semaphore_offset,
            "args": p.args,
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
        layouts = list(dict.fromkeys(r.probe.args for r in sites))
        count = f"{len(sites)} site" + ("s" if len(sites) > 1 else "")
        write(f"{obj} {provider}:{name} [{count}] {addresses} semaphore={semaphore} args: {' | '.join(layouts)}\n")


def _hex(value: int | None) -> str:
    return "?" if value is None else f"{value:#x}"


if __name__ == "__main__":
    sys.exit(main())
