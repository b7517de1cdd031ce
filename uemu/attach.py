"""Attaching to running processes: checked, every thread seized and stopped, the mm armed.

strace's ``attach_tcb`` and ``startup_attach``: a process the user names is checked
before it is touched (traceable, of an arch uemu knows, each PROBE word matching in
it); then every thread is seized (``Tracer.seize_all``), its mm read again and armed
by the mapping mode (``mapmode.py``, ``arming.py``), and the threads resumed.  With
``follow_forks`` the processes already descended from it are attached by the same
rules; children born later are adopted as they come (``tasks.py``).  Starting a
command instead is ``spawn.py``'s; leaving, on a failure too, is the session's
(``close``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import errors, process, sigtrap
from .mapmode import ModeChoice
from .mappings import MappingMode
from .maps import read_maps
from .ownsignals import OwnSignals
from .selection import Selection
from .tasks import Tracees
from .tracer import Tracer


@dataclass(eq=False)
class Attacher:
    """What attaching uses of the session's; ``close`` is its way out, taken when
    attaching fails after the checks."""

    tracer: Tracer
    tracees: Tracees
    selection: Selection
    modes: ModeChoice
    own_signals: OwnSignals
    options: int
    """PTRACE_O_* to seize with."""
    warn: Callable[[str], None]
    armed: Callable[[], None]
    """Told of each process armed."""
    close: Callable[[], None]

    def attach(self, pid: int) -> None:
        """Process ``pid``; with ``follow_forks``, every process already descended from it."""
        self._attach_process(pid)
        if self.tracees.follow_forks:
            self._attach_descendants(pid)

    def _attach_descendants(self, root: int) -> None:
        """Every process whose parent chain reaches ``root``, found from /proc and
        attached by the same rules, until a look finds no new one (a process
        forked meanwhile by a traced one is auto-attached already)."""
        tried: set[int] = set()
        while True:
            traced = {task.pid for task in self.tracees.tasks.values()}
            fresh = [pid for pid in process.descendants(root) if pid not in tried and pid not in traced]
            if not fresh:
                return
            for pid in fresh:
                tried.add(pid)
                try:
                    self._attach_process(pid, descendant=True)
                except (errors.NotFound, errors.TraceeGone):
                    continue  # it ended meanwhile
                except (errors.AttachRefused, errors.AccessDenied, errors.UnsupportedArch) as err:
                    self.warn(f"{err.message}; its probes are not traced")

    def _attach_process(self, pid: int, descendant: bool = False) -> None:
        process.check_attachable(pid)
        arming = self.modes.choose(MappingMode.RENDEZVOUS, self.tracer)
        if not arming.tracker.attachable:
            raise errors.BadInput(f"{arming.tracker.mode} mapping tracking needs 'uemu run': "
                                  "a running process cannot get the filter")
        # Each word must match before the process is touched; the objects are read
        # again once it is stopped (it may have exec'd or mapped more meanwhile).
        process.executable_arch(pid)
        if not descendant:
            self.selection.check_process(self.tracees.objects_of(pid, read_maps(pid)), pid)
        self.own_signals.install()
        self.tracer.stopping = True
        try:
            self.tracer.seize_all(pid, self.options)
            mm = self.tracees.tasks[pid].mm or self.tracees.new_mm(pid, process.executable_arch(pid))
            for task in self.tracees.tasks.values():
                if task.pid == pid and task.mm is None:
                    task.mm = mm
            arming.arm(mm, mm.vmas, self.tracer.injectable(mm))
            if mm.net is not None:
                sigtrap.warn_blocking([t.tid for t in self.tracees.tasks.values() if t.pid == pid], pid, self.warn)
        except (errors.NotFound, errors.TraceeGone):
            if not descendant:
                self.close()
            raise  # a descendant that ended meanwhile: its tasks report their exits
        except BaseException:
            self.close()
            raise
        self.armed()
        self.tracer.resume_parked()
