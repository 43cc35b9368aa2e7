"""Whether a client's servers are unreachable now: said once when an outage starts and ends."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

__all__ = ["Outage"]

logger = logging.getLogger("batchstash.client.http")  # what users configure for the client


class Outage:
    """The client-wide state "every URL fails on the connection", shared by its threads.

    An outage starts when a pass over the URLs fails on every one on the connection, and is
    said once at WARNING; it ends when any server answers, said once at INFO. Requests that
    were on their way when a server came back do not start another.

    Args:
        urls: the client's base URLs (named when the outage ends).
        clock: the monotonic clock.
        describe: how long a request keeps trying (``up to 90 s``), for the WARNING line.
    """

    def __init__(
        self, urls: Sequence[str], clock: Callable[[], float], describe: Callable[[], str]
    ) -> None:
        self.urls = tuple(urls)
        self.clock = clock
        self.describe = describe
        self._lock = threading.Lock()
        self._since: float | None = None  # clock time every URL first failed
        self._reached_at = float("-inf")  # clock time a server last answered

    @property
    def since(self) -> float | None:
        """Clock time the outage going on started (``None``: none)."""
        with self._lock:
            return self._since

    def unreachable(self, failures: Sequence[tuple[str, str]], begun: float) -> None:
        """Every URL failed on the connection (``(url, what happened)``) in a pass begun then.

        Said once per outage: not again while it lasts, nor for a pass that began before a
        server last answered (a request on its way when the servers came back).
        """
        with self._lock:
            if self._since is not None or begun < self._reached_at:
                return
            self._since = self.clock()
        urls = ", ".join(url for url, _ in failures)
        if len(failures) == 1:
            reason = failures[0][1]
        else:
            reason = "; ".join(f"{url}: {what}" for url, what in failures)
        logger.warning(
            "server%s %s unreachable (%s); retrying for %s",
            "s" if len(failures) > 1 else "",
            urls,
            reason,
            self.describe(),
        )

    def reached(self) -> None:
        """A server answered: an outage, if one was said, is over."""
        now = self.clock()
        with self._lock:
            since, self._since = self._since, None
            self._reached_at = now
        if since is not None:
            logger.info(
                "%s reachable again after %.1f s", ", ".join(self.urls), max(0.0, now - since)
            )
