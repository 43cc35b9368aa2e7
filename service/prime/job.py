"""A background prime: runs ``BatchStash.prime`` off the event loop and reports its progress."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchstash.client import BatchstashError, PrimeCancelledError

if TYPE_CHECKING:
    from batchstash.service.engine import BatchStash

__all__ = ["JobState", "PrimeJob"]

logger = logging.getLogger(__name__)


class JobState:
    """The states of a prime job."""

    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class _Progress:
    done: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    initial: int = 0


class PrimeJob:
    """Runs at most one prime at a time in a background thread (the pool does the encoding).

    Args:
        stash: the stash to prime.
        on_change: called after every progress update (for metrics).
    """

    def __init__(
        self, stash: BatchStash, on_change: Callable[[PrimeJob], None] | None = None
    ) -> None:
        self.stash = stash
        self.state = JobState.IDLE
        self.error: BatchstashError | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._progress = _Progress()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._on_change = on_change

    @property
    def running(self) -> bool:
        """Whether a prime is in progress."""
        return self.state == JobState.RUNNING

    def start(self) -> bool:
        """Start priming unless it is running already (then the caller joins the running one).

        Returns:
            ``True`` if a new prime started, ``False`` if one was already running.
        """
        with self._lock:
            if self.running:
                return False
            self.stash.check_fresh()
            self.state, self.error = JobState.RUNNING, None
            self.started_at, self.finished_at = time.time(), None
            self._progress = _Progress()
            self._cancel.clear()
            self._thread = threading.Thread(target=self._run, name="batchstash-prime", daemon=True)
            self._thread.start()
            return True

    def cancel(self) -> bool:
        """Ask a running prime to stop; returns whether one was running."""
        if not self.running:
            return False
        self._cancel.set()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the background thread; returns whether it finished."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _on_progress(self, split: str, done: int, total: int) -> None:
        progress = self._progress
        if split not in progress.total:
            progress.initial += done
        progress.done[split], progress.total[split] = done, total
        if self._on_change:
            self._on_change(self)

    def _run(self) -> None:
        try:
            self.stash.prime(progress=self._on_progress, cancel=self._cancel)
            state = JobState.DONE
        except PrimeCancelledError as exc:
            state, self.error = JobState.CANCELLED, exc
        except BatchstashError as exc:
            state, self.error = JobState.FAILED, exc
            logger.error("prime failed: %s", exc.message)
        except Exception as exc:  # a user's vectorizer or factory: report, never kill the server
            state, self.error = JobState.FAILED, BatchstashError(f"{type(exc).__name__}: {exc}")
            logger.exception("prime failed")
        self.finished_at = time.time()
        self.state = state
        if self._on_change:
            self._on_change(self)

    def snapshot(self) -> dict[str, Any]:
        """The job's state, per-split progress, rate and ETA."""
        progress = self._progress
        done, total = sum(progress.done.values()), sum(progress.total.values())
        rate = eta = None
        if self.started_at is not None:
            elapsed = (self.finished_at or time.time()) - self.started_at
            encoded = done - progress.initial
            if elapsed > 0 and encoded > 0:
                rate = encoded / elapsed
                eta = (total - done) / rate if self.running else 0.0
        error = (
            None if self.error is None else {"code": self.error.code, "message": self.error.message}
        )
        return {
            "state": self.state,
            "splits": {
                s: {"done": progress.done[s], "total": progress.total[s]}
                for s in sorted(progress.total)
            },
            "rate": rate,
            "eta_s": eta,
            "error": error,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }
