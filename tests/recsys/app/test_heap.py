import gc
from collections.abc import Iterator

import pytest

from recsys.app.heap import freeze_startup_heap


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the suite runs with a normal collector


def test_start_up_objects_leave_the_collectors_walk(unfrozen: None) -> None:
    survivor = [object() for _ in range(1000)]

    frozen = freeze_startup_heap()

    # frozen objects still die by reference count (the suite's earlier objects do, now and
    # then, between the two calls): the count can only fall
    assert frozen >= gc.get_freeze_count() >= len(survivor)
    assert not any(o is survivor for o in gc.get_objects())  # a full GC no longer scans it
    garbage = [[n] for n in range(10)]
    assert any(o is garbage for o in gc.get_objects())  # what comes after still is
