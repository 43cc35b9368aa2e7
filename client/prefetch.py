"""Work done a bounded number of items ahead of the caller, in background threads."""

from __future__ import annotations

import gc
import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["ahead", "may_wait", "prefetched"]

T = TypeVar("T")
R = TypeVar("R")

_collections = 0  # garbage collections under way (they run one at a time, under the GIL)


def _count_collection(phase: str, info: dict[str, Any]) -> None:
    global _collections
    _collections = max(0, _collections + (1 if phase == "start" else -1))


gc.callbacks.append(_count_collection)


def may_wait() -> bool:
    """Whether a generator's cleanup may wait for threads here (not in a garbage collection).

    An iterator dropped without ``close()`` is in a reference cycle (its generators refer to
    it), so the collector finalizes it at an arbitrary point of an arbitrary thread: inside
    ``threading``'s own bookkeeping, for one, where joining a thread takes a lock that thread
    already holds and never returns. Cleanup run by the collector stops its threads without
    waiting for them; they end by themselves.
    """
    return _collections == 0


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
        wait = threading.current_thread() not in workers and may_wait()
        pool.shutdown(wait=wait, cancel_futures=True)


_END = object()


class _Raised:
    """An exception of the drawing thread, carried to the caller in order."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def ahead(
    items: Iterator[T], depth: int, name: str = "batchstash-ahead", wait: float = 60.0
) -> Generator[T, None, None]:
    """Yield ``items``, which a background thread draws up to ``depth`` ahead of the caller.

    The thread draws an item only while fewer than ``depth`` wait for the caller (the one it
    is drawing included), so the work of drawing (a generator's body, run and closed in that
    thread) overlaps with what the caller does between items. An exception is raised where
    its item would have been yielded; closing the generator stops the thread, waiting up to
    ``wait`` seconds for the item it is drawing. ``depth=0`` draws in the caller's thread.
    """
    if depth <= 0:
        yield from items
        return
    handed: queue.SimpleQueue[Any] = queue.SimpleQueue()
    room = threading.Semaphore(depth)
    stop = threading.Event()

    def run() -> None:
        try:
            while True:
                while not room.acquire(timeout=0.05):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                item = next(items, _END)
                handed.put(item)
                if item is _END:
                    return
        except BaseException as exc:  # noqa: BLE001 - carried to the caller, raised there
            handed.put(_Raised(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = handed.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            room.release()
            yield item
    finally:
        stop.set()
        room.release()  # wakes a thread waiting for room
        # finalized by the garbage collector in its own thread, it cannot wait for itself
        if threading.current_thread() is not thread and may_wait():
            thread.join(timeout=wait)
