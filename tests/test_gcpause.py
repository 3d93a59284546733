"""The collector pause: survivors end in the oldest generation (no pass over them when the
collector comes back), and a reference cycle made during the pause is still collected."""

from __future__ import annotations

import gc
import weakref

from reconciler.repo.gcpause import gc_paused


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_survivors_are_old_and_cycles_are_still_collected() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():  # nested: the outer one decides
            pass
        assert not gc.isenabled()
        kept = [[i] for i in range(1000)]
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
    assert gc.isenabled()
    young = {id(o) for o in gc.get_objects(generation=0)}
    assert not any(id(x) in young for x in kept)
    assert any(o is kept[0] for o in gc.get_objects(generation=2))
    assert gc.get_freeze_count() == 0  # nothing left frozen
    assert gone() is not None  # a cycle is not freed by reference counting...
    gc.collect()
    assert gone() is None  # ...but by the next full collection


def test_a_disabled_collector_stays_disabled() -> None:
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
