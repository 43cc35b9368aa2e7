"""``ahead`` and ``prefetched``: work a bounded number ahead, and cleanup that never hangs."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Generator

import pytest

from batchstash.client.prefetch import ahead, may_wait, prefetched


class Source:
    """Counts what was drawn, and in which thread it was drawn and closed."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.count, self.fail_at = count, fail_at
        self.drawn: list[int] = []
        self.threads: set[str] = set()
        self.closed_in: str | None = None

    def __call__(self) -> Generator[int, None, None]:
        try:
            for i in range(self.count):
                if i == self.fail_at:
                    raise ValueError(f"item {i} failed")
                self.threads.add(threading.current_thread().name)
                self.drawn.append(i)
                yield i
        finally:
            self.closed_in = threading.current_thread().name


def test_items_come_in_order_drawn_by_another_thread() -> None:
    source = Source(50)
    assert list(ahead(source(), 2, name="drawer")) == list(range(50))
    assert source.threads == {"drawer"} and source.closed_in == "drawer"


@pytest.mark.parametrize("depth", [1, 3])
def test_it_draws_at_most_depth_ahead_of_the_caller(depth: int) -> None:
    source = Source(100)
    it = ahead(source(), depth)
    assert next(it) == 0
    time.sleep(0.3)  # it would draw more now if it could
    assert len(source.drawn) == 1 + depth  # the caller's, and those waiting for it
    it.close()


def test_an_exception_is_raised_where_its_item_is() -> None:
    got = []
    with pytest.raises(ValueError, match="item 3 failed"):
        for item in ahead(Source(10, fail_at=3)(), 2):
            got.append(item)
    assert got == [0, 1, 2]


def test_closing_stops_the_thread_and_closes_the_source_there() -> None:
    source = Source(1000)
    it = ahead(source(), 1, name="drawer")
    next(it)
    it.close()
    assert source.closed_in == "drawer"
    assert not [t for t in threading.enumerate() if t.name == "drawer"]
    assert len(source.drawn) <= 2


def test_depth_zero_draws_in_the_callers_thread() -> None:
    source = Source(5)
    assert list(ahead(source(), 0)) == list(range(5))
    assert source.threads == {threading.current_thread().name}


def _dropped_in_a_cycle(kind: str) -> None:
    """A generator of ``kind``, started, then dropped in a reference cycle (as an iterator is)."""
    if kind == "prefetched":
        started = prefetched(lambda x: x, range(100), 3)
    else:
        started = ahead(iter(range(100)), 2)
    next(started)
    cycle: list[object] = [started]
    cycle.append(cycle)


@pytest.mark.parametrize("kind", ["prefetched", "ahead"])
def test_a_dropped_generator_collected_inside_threadings_bookkeeping_does_not_hang(
    kind: str,
) -> None:
    # the collector may finalize it in any thread, at any point: here with the lock that
    # joining a thread takes already held, as threading's own bookkeeping holds it
    _dropped_in_a_cycle(kind)
    done = threading.Event()

    def collect() -> None:
        with threading._shutdown_locks_lock:  # type: ignore[attr-defined]
            gc.collect()
        done.set()

    threading.Thread(target=collect, daemon=True).start()
    assert done.wait(20), "the collector's cleanup waited for a thread and never returned"
    assert may_wait()  # outside a collection, cleanup waits for its threads again
