"""What a hit produces for its consumers: counts, decoded arguments, events.

Kernel: kernel/trace/trace_uprobe.c's handler (``uprobe_dispatcher`` ->
``__uprobe_trace_func``): each consumer of the hit uprobe counts the hit and,
when someone listens, fetches the probe's arguments (``fetch``) and writes an
event.  Argument readers are built once per consumer and mm (an object's
symbols resolve through that mm's load bias) and kept in ``Mm.readers``.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from . import argspec, ptrace
from .events import Event, LineShape
from .ringfeed import RingEvent
from .uprobes import Consumer, Hit, Mm

if TYPE_CHECKING:
    from .tasks import Task

Handler = Callable[[Event], None]


class Reporter:
    """Hands each hit to the user's handlers and queue, counting as it goes: hits of
    the trap path (``report``, at the stop) and of the jump path (``deliver``, events
    read from the ring), in time order when ``before`` merges them (uemu/ringfeed.py)."""

    def __init__(self, decode_args: bool, on_limit: Callable[[], None], on_error: Callable[[], None]):
        self.decode_args = decode_args
        self.handlers: list[Handler] = []
        self.queue: deque[Event] | None = None
        """Events for ``Session.events()``, delivered after the thread resumed."""
        self.event_count = 0
        self.max_events: int | None = None
        self._on_limit = on_limit
        self.lock: AbstractContextManager[object] = contextlib.nullcontext()
        """Held while a hit is counted and handed out (the jump path's reader thread
        delivers too)."""
        self.before: Callable[[int], None] | None = None
        """Called with a trap hit's time before it is handed out: hand out the jump
        path's older hits first."""
        self.error: BaseException | None = None
        """What a handler raised first: handlers are called no more and ``on_error``
        ends the session, which re-raises it once everything is restored (a handler
        raising at every later event, leaving's own included, must not stop the leaving)."""
        self._on_error = on_error
        self.line_out: tuple[Handler, Callable[[str], object], LineShape] | None = None
        """A handler that does nothing but write each event's line (the CLI's --json and
        text lines), how it writes text, and the shape of its lines: ``line_shape``."""

    def line_shape(self) -> LineShape | None:
        """The shape of ``line_out``'s lines, while its handler is the only one and no
        queue takes events: the jump path then hands out its hits as their lines, not as
        Events, and ``deliver`` writes them a batch in one call (an Event and the calls
        of a handler cost more than the line, per hit)."""
        if self.line_out is None or self.queue is not None or self.handlers != [self.line_out[0]]:
            return None
        return self.line_out[2]

    def full(self) -> bool:
        """--max-events is reached: further hits are neither counted nor reported."""
        return self.max_events is not None and self.event_count >= self.max_events

    def report(self, task: Task, mm: Mm, hit: Hit, regs: ptrace.RegsView) -> None:
        """Every consumer of the hit uprobe; ``regs`` are as at the site."""
        wants_events = bool(self.handlers) or self.queue is not None
        with self.lock:
            for consumer in hit.uprobe.consumers:
                if self.full():
                    return
                consumer.hits += 1
                self.event_count += 1
                if wants_events:
                    self._emit(task, mm, consumer, hit.site, regs)
                if self.full():
                    self._on_limit()

    def deliver(self, ring_events: Iterator[RingEvent]) -> None:
        """Hits read from the jump path's ring, in the iterator's order (an event None:
        counted only; a str: its line, written by ``line_out``).  ``full`` written
        out, the lock taken once for them all: this runs for every event of the jump path.
        What raises leaves the hits after it in ``ring_events`` (uemu/ringfeed.py keeps
        them)."""
        with self.lock:
            limit = self.max_events
            lines: list[str] = []
            try:
                for _, consumer, event in ring_events:
                    if limit is not None and self.event_count >= limit:
                        continue
                    consumer.hits += 1
                    self.event_count += 1
                    if isinstance(event, str):
                        lines.append(event)
                    elif event is not None:
                        self._write(lines)  # the lines before it first
                        self._hand_out(event)
                    if limit is not None and self.event_count >= limit:
                        self._on_limit()
            finally:
                self._write(lines)

    def _write(self, lines: list[str]) -> None:
        """Lines of ring events, written by ``line_out`` in one call (and forgotten); not
        once a handler has failed, as handlers are not called then."""
        if lines and self.error is None and self.line_out is not None:
            self.line_out[1]("".join(lines))
        lines.clear()

    def _emit(self, task: Task, mm: Mm, consumer: Consumer, site: int, regs: ptrace.RegsView) -> None:
        memory = mm.memory
        args = None
        if self.decode_args:
            args = [read(regs, memory.read) for read in arg_readers(mm, consumer)]
        probe = consumer.probe
        event = Event(
            time.monotonic_ns(), task.pid, task.tid, probe.object, probe.provider, probe.name, site,
            list(argspec.split(probe.args)), args, memory.read_string,
        )
        if self.before is not None:
            self.before(event.ts_ns)
        self._hand_out(event)

    def _hand_out(self, event: Event) -> None:
        """To each handler, then the queue."""
        if self.error is None:
            for handler in self.handlers:
                try:
                    handler(event)
                except BaseException as err:  # noqa: BLE001  (re-raised by Session.close, after leaving)
                    self.error = err
                    self._on_error()
                    break
        if self.queue is not None:
            event.read_string = None
            self.queue.append(event)


def arg_readers(mm: Mm, consumer: Consumer) -> list[argspec.Reader]:
    """Argument readers of a consumer in ``mm``, built on its first hit there."""
    readers = mm.readers.get(consumer)
    if readers is None:
        obj = mm.object_of(consumer.probe.object)
        resolve = None
        if obj is not None:
            near = consumer.probe.address

            def resolve(name: str) -> int | None:
                assert obj is not None
                return obj.symbol_runtime_address(name, near)

        little = obj.elf.little_endian if obj is not None else None
        readers = [
            argspec.make_reader(spec, mm.arch, resolve, little_endian=little)
            for spec in argspec.parse_all(consumer.probe.args, mm.arch)
        ]
        mm.readers[consumer] = readers
    return readers
