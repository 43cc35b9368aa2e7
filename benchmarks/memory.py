"""Memory: the server's peak RSS by store size, a consumer's RSS growth by prefetch depth."""

from __future__ import annotations

from typing import Any

from .consumers import ConsumerPool, LoadTask
from .servers import Server

__all__ = ["client_growth", "server_peak"]


def server_peak(
    server: Server, pool: ConsumerPool, store_batches: int, max_batches: int, max_seconds: float
) -> dict[str, Any]:
    """Read batches through a freshly started server on a primed store; return its RSS.

    The server never primes, so its peak covers start-up (plan, configuration hash) and serving:
    what a replica on that store needs. One consumer, ``prefetch=4``.
    """
    idle = server.memory()
    load = pool.run(LoadTask(server.url, "iter", 1, max_batches, max_seconds))
    after = server.memory()
    return {
        "store_batches": store_batches,
        "idle_rss": idle["rss"],
        "peak": after["peak"],
        "rss_after": after["rss"],
        "batches_read": load["batches"],
    }


def client_growth(
    url: str, prefetch: int, batch_bytes: int, max_batches: int, max_seconds: float
) -> dict[str, Any]:
    """A fresh consumer process's peak RSS growth while iterating with ``prefetch``."""
    with ConsumerPool(1) as pool:
        load = pool.run(LoadTask(url, "iter", 1, max_batches, max_seconds, prefetch=prefetch))
    limit = 3 * prefetch * batch_bytes
    return {
        "prefetch": prefetch,
        "growth": load["client_growth"],
        "rss_before": load["client_rss_before"],
        "peak": load["client_peak"],
        "limit": limit,
        "ratio": load["client_growth"] / (prefetch * batch_bytes),
        "batches": load["batches"],
        "mb_s": load["mb_s"],
    }
