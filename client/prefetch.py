"""Results of a function over items, computed a bounded number ahead in background threads."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["prefetched"]

T = TypeVar("T")
R = TypeVar("R")


def prefetched(fn: Callable[[T], R], items: Iterable[T], prefetch: int) -> Generator[R, None, None]:
    """Yield ``fn(item)`` for each item in order, computing up to ``prefetch`` ahead in threads.

    At most ``prefetch`` results are requested but not yet yielded at any time, so memory stays
    bounded; ``prefetch=0`` calls ``fn`` in the caller's thread. An exception is raised where its
    item would have been yielded; closing the generator cancels the pending work.
    """
    if prefetch <= 0:
        yield from map(fn, items)
        return
    pending: deque[Future[R]] = deque()
    source = iter(items)
    workers: set[threading.Thread] = set()
    pool = ThreadPoolExecutor(
        max_workers=prefetch,
        thread_name_prefix="batchstash-prefetch",
        initializer=lambda: workers.add(threading.current_thread()),
    )
    try:
        for item in source:
            pending.append(pool.submit(fn, item))
            if len(pending) >= prefetch:
                break
        while pending:
            result = pending.popleft().result()
            for item in source:
                pending.append(pool.submit(fn, item))
                break
            yield result
    finally:
        for future in pending:
            future.cancel()
        # a generator dropped mid-way may be finalized by the garbage collector in one of its
        # own workers, which cannot wait for itself: the others stop once their item is done
        pool.shutdown(wait=threading.current_thread() not in workers, cancel_futures=True)
