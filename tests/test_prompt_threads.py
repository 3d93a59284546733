"""A cycle runs with a short GIL switch interval (reader threads of large process outputs
are not starved by CPU-bound work in the main thread), and restores the one it found, also
when cycles overlap in threads."""

from __future__ import annotations

import sys
import threading
from typing import Any

import pytest

from reconciler.engine import cycle
from reconciler.engine.cycle import SWITCH_INTERVAL, prompt_threads


@pytest.fixture(autouse=True)
def default_interval() -> Any:
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield
    sys.setswitchinterval(before)


def test_the_interval_is_short_inside_and_restored_after() -> None:
    with prompt_threads():
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL, rel=0.05)
    assert sys.getswitchinterval() == pytest.approx(0.005, rel=0.05)
    sys.setswitchinterval(0.0001)  # a process that chose shorter keeps its own
    with prompt_threads():
        assert sys.getswitchinterval() == pytest.approx(0.0001, rel=0.05)
    assert sys.getswitchinterval() == pytest.approx(0.0001, rel=0.05)


def test_overlapping_cycles_restore_the_interval_only_when_the_last_ends() -> None:
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with prompt_threads():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=other)
    with prompt_threads():
        t.start()
        assert entered.wait(10)
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL, rel=0.05)  # the other still runs
    release.set()
    t.join(10)
    assert sys.getswitchinterval() == pytest.approx(0.005, rel=0.05)


def test_reconcile_runs_its_cycle_with_the_short_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []

    def fake(*args: Any, **kwargs: Any) -> str:
        seen.append(sys.getswitchinterval())
        raise RuntimeError("the cycle failed")

    monkeypatch.setattr(cycle, "_reconcile", fake)
    with pytest.raises(RuntimeError):
        cycle.reconcile(None, cycle.HostTarget())  # type: ignore[arg-type]
    assert seen == [pytest.approx(SWITCH_INTERVAL, rel=0.05)]
    assert sys.getswitchinterval() == pytest.approx(0.005, rel=0.05)  # restored even after a raise
