"""The pytest plugin (entry point ``pytest11``: ``uemu``): the ``usdt`` fixture.

pytest imports this module at start-up in every project of an environment
where uemu is installed, so it imports nothing but pytest itself: uemu's
tracer, ELF and ptrace code load when a test first asks for ``usdt``.
``-p no:uemu`` turns the plugin off.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from uemu.testing import Usdt


@pytest.fixture
def usdt() -> Usdt:
    """Trace a command or a running process under uemu::

        with usdt.run(["./cache", "--fill", "10"], probes=["cache:*"],
                      strings={"cache:evict": 1}) as trace:
            pass
        assert trace.count("cache:miss") == 10
        assert trace.args("cache:evict")[0] == (3, b"key-3")
    """
    from uemu.testing import Usdt  # only for tests that use it

    return Usdt()


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """A failed comparison with a trace's count or arguments says what did fire.
    Free for everyone else: nothing is imported, and without a trace module
    loaded there is no trace value to explain."""
    probetrace = sys.modules.get("uemu.probetrace")
    if probetrace is None:
        return None
    explanation: list[str] | None = probetrace.explain(op, left, right)
    return explanation
