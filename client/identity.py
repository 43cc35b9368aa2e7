"""The check that every URL of a client serves one store: its fingerprint, learnt and confirmed."""

from __future__ import annotations

import logging
import threading

import httpx

from .endpoints import Endpoints
from .errors import PlanError

__all__ = ["StoreIdentity"]

logger = logging.getLogger("batchstash.client.http")  # what users configure for the client


class StoreIdentity:
    """The store fingerprint a client's URLs serve, and who told it.

    Args:
        endpoints: the client's URLs (a store change is confirmed by asking another one).
    """

    def __init__(self, endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        self._lock = threading.Lock()
        self._known: tuple[str, str] | None = None  # (fingerprint, the URL that told it)

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint learnt so far (``None`` before the first answer that carries one)."""
        with self._lock:
            return None if self._known is None else self._known[0]

    def observe(self, fingerprint: str | None, url: str) -> None:
        """Check that ``url`` serves the store the client knows; learn it on the first answer.

        With one URL a new fingerprint is the store changing, and is followed. With several, a
        new fingerprint is followed only when another URL confirms it: the URL that told the
        old one if it answers, else the first other URL that does.

        Raises:
            PlanError: two URLs serve different stores, or no other URL answers to confirm.
        """
        if not fingerprint:
            return
        with self._lock:
            known = self._known
            if known is None or (known[1] == url and len(self.endpoints) == 1):
                self._known = (fingerprint, url)
                return
            if known[0] == fingerprint:
                return
            others = sorted(
                (e for e in self.endpoints if e.url != url),
                key=lambda e: (e.url != known[1], e.failures > 0),
            )
        mine = self.probe(url) or fingerprint
        for other in others:
            theirs = self.probe(other.url)
            if theirs is None:
                continue
            if theirs != mine:
                raise PlanError(
                    f"{url} serves store {mine}, but {other.url} serves {theirs}: every URL of a "
                    "client must serve the same store (replicas of one data dir); batches of two "
                    "stores are not mixed"
                )
            with self._lock:
                self._known = (mine, url)
            logger.info("the store changed: %s and %s now serve %s", url, other.url, mine)
            return
        raise PlanError(
            f"{url} serves store {mine}, but {known[1]} served {known[0]} and no other URL "
            "answers now to confirm that the store changed: every URL of a client must serve "
            "the same store"
        )

    def probe(self, url: str) -> str | None:
        """The fingerprint ``url`` serves now (one request, no retry); ``None`` if it fails."""
        endpoint = self.endpoints.get(url)
        try:
            response = endpoint.http.get("/v1/metadata")
            response.raise_for_status()
            return str(response.json()["fingerprint"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None
