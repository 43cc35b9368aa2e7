"""The operator's calls: prime, status, clear, cancel, wait (``BatchClient.admin``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .errors import NotPrimedError, error_for_code

__all__ = ["AdminCalls"]

_TERMINAL_STATES = {"done", "failed", "cancelled", "interrupted"}


class AdminCalls:
    """The ``/v1/admin`` endpoints of a server, over a client's requests.

    ``BatchClient(url).admin`` is one; the client's own ``prime()``, ``status()``, ``clear()``,
    ``cancel()`` and ``wait_for_prime()`` call it.

    Args:
        request: sends one request with the client's retries and returns the JSON body, called
            as ``request(method, path, **httpx_options)``.
        sleep: how to wait between polls.
    """

    def __init__(
        self, request: Callable[..., Any], sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._json = request
        self._sleep = sleep

    def prime(self, **options: Any) -> dict[str, Any]:
        """Start encoding every batch in the background (or join the running prime).

        Args:
            **options: prime options sent as the JSON body (e.g. ``splits``, ``workers``).

        Returns:
            The status object (see :meth:`status`).

        Raises:
            ConflictError: a clear holds the store, or the server has role ``serve`` (a
                read-only replica) and no prime runs to join.
        """
        return dict(self._json("POST", "/v1/admin/prime", json=options))

    def status(self) -> dict[str, Any]:
        """Return the prime job status.

        Keys: ``state`` (``idle``, ``running``, ``done``, ``failed``, ``cancelled``,
        ``interrupted``: the priming process died; prime again to resume), ``job_id``, ``splits``
        (``{name: {done, total}}``), ``rate`` (batches/s), ``eta_s``, ``error``, ``store_bytes``,
        ``fingerprint``, ``stale``, ``started_at`` and ``finished_at``.
        """
        return dict(self._json("GET", "/v1/admin/status"))

    def clear(self) -> dict[str, Any]:
        """Remove every encoded batch.

        Raises:
            ConflictError: a prime is running (cancel it first), or the server has role
                ``serve`` (a read-only replica never clears the store it shares).
        """
        return dict(self._json("POST", "/v1/admin/clear"))

    def cancel(self) -> dict[str, Any]:
        """Ask the running prime to stop; returns the status object.

        Raises:
            ConflictError: the server has role ``serve`` (a read-only replica never cancels the
                prime every replica waits for).
        """
        return dict(self._json("DELETE", "/v1/admin/prime"))

    def wait_for_prime(
        self,
        timeout: float | None = 600.0,
        poll: float = 1.0,
        on_status: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll :meth:`status` until the prime job ends; return the final status.

        Args:
            timeout: give up after this many seconds (``None``: never).
            poll: seconds between polls.
            on_status: called with every status polled (e.g. to draw progress).

        Raises:
            NotPrimedError: the job did not end within ``timeout`` or ended other than ``done``
                without an error of its own.
            BatchstashError: the job failed; the class matches its ``error.code``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            if on_status is not None:
                on_status(status)
            state = status.get("state")
            if state == "done":
                return status
            if state in _TERMINAL_STATES:
                error = status.get("error") or {}
                cls = error_for_code(str(error.get("code", "not_primed")))
                raise cls(f"prime {state}: {error.get('message', 'no error reported')}")
            if deadline is not None and time.monotonic() >= deadline:
                raise NotPrimedError(f"prime is still {state!r} after {timeout}s")
            self._sleep(poll)
