"""The server's jobs: a prime in a background thread, cancel and clear, status from the store.

Job state lives in the store's job record (:mod:`batchstash.service.store.lease`), so every server
sharing the store tells the same job, refuses a clear while any of them primes, and can cancel a
prime that another one runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from batchstash.client import (
    BatchstashError,
    ConflictError,
    NotPrimedError,
    StaleStoreError,
)

from ..store.lease import JobLease, JobRecord, JobState, read_job, request_cancel
from ..store.reader import StoreReader
from .inputs import PrimeInputs
from .plan import clear_store, describe_store
from .run import prime_store

__all__ = ["JobState", "PrimeJob"]

logger = logging.getLogger(__name__)

PROGRESS_LOG_S = 5.0


class PrimeJob:
    """Starts, cancels and reports the store's prime; clears it.

    Args:
        reader: the store's reader (split totals before any prime, records read again after
            this process writes them).
        inputs: what a prime needs, when this server has the dataset (``None``: a read-only
            replica).
        on_change: called after every progress update (metrics).
    """

    def __init__(
        self,
        reader: StoreReader,
        inputs: PrimeInputs | None = None,
        on_change: Callable[[PrimeJob], None] | None = None,
    ) -> None:
        self.backend = reader.backend
        self.reader = reader
        self.inputs = inputs
        self._on_change = on_change
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_change = 0.0
        self._last_log = 0.0
        self._job_id: str | None = None
        self._counts: dict[str, tuple[int, int]] = {}

    @property
    def local(self) -> bool:
        """Whether this process runs a prime now."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def running(self) -> bool:
        """Whether a prime holds the store's lease (here or in another process)."""
        return self.local or self._prime_elsewhere()

    def _still_running(self) -> bool:
        """Whether this process's job still holds the lease (not just its thread alive)."""
        record, _ = read_job(self.backend)
        return record is not None and record.job_id == self._job_id and record.holds_lease()

    def _prime_elsewhere(self) -> bool:
        record, _ = read_job(self.backend)
        return record is not None and record.kind == "prime" and record.holds_lease()

    def _read_only(self) -> PrimeInputs:
        if self.inputs is None:
            raise ConflictError(
                "this server is a read-only replica (role serve, no dataset): "
                "prime from a server that has the dataset"
            )
        return self.inputs

    def _check_fresh(self) -> None:
        """Raise :class:`StaleStoreError` if the store holds another configuration."""
        try:
            self.reader.check_fresh()
        except NotPrimedError:
            pass  # nothing planned yet (or damaged records a prime repairs): not stale

    def start(self) -> bool:
        """Start priming unless a prime runs already (then the caller joins it).

        A prime sent after a cancel starts a new job once the cancelled one has stopped.

        Returns:
            ``True`` if a new prime started, ``False`` if a running one was joined.

        Raises:
            ConflictError: a read-only replica, or a clear holds the lease.
            StaleStoreError: the store holds another configuration's batches.
        """
        if self.inputs is None and self._prime_elsewhere():
            return False  # a replica joins the prime another server runs
        inputs = self._read_only()
        with self._lock:
            thread = self._thread
            if thread is not None and thread.is_alive():
                if not self._cancel.is_set() and self._still_running():
                    return False
                # cancelled, or its job already ended (the thread is finishing): a new job
                thread.join(timeout=30)  # a cancelled prime stops within a task
                if thread.is_alive():
                    raise ConflictError("the previous prime is still stopping: retry shortly")
            self._check_fresh()
            try:
                lease = JobLease.acquire(self.backend, "prime")
            except ConflictError:
                if self._prime_elsewhere():
                    return False  # another server primes this store: join its job
                raise
            self._cancel.clear()
            self._job_id = lease.job_id
            self._counts, self._last_log = {}, time.monotonic()
            self._thread = threading.Thread(
                target=self._run, args=(inputs, lease), name="batchstash-prime", daemon=True
            )
            self._thread.start()
            return True

    def _run(self, inputs: PrimeInputs, lease: JobLease) -> None:
        try:
            try:
                encoded = prime_store(
                    inputs,
                    lease=lease,
                    progress=self._progress,
                    cancel=self._cancel,
                    demand=self.reader.demand,  # batches the server's reads found missing go first
                )
            finally:
                self.reader.refresh()  # this process wrote the records: read them again
            stored = sum(c[0] for c in self._counts.values())
            logger.info(
                "prime done: %d batches encoded, %d stored: the store is primed",
                encoded,
                stored,
                extra={"encoded": encoded, "stored": stored},
            )
        except BatchstashError as exc:
            logger.log(
                logging.INFO if exc.code == "prime_cancelled" else logging.ERROR,
                "prime %s: %s",
                "cancelled" if exc.code == "prime_cancelled" else "failed",
                exc.message,
            )
        except Exception:  # a user's vectorizer or factory: report, never kill the server
            logger.exception("prime failed")
        if self._on_change:
            self._on_change(self)

    def _progress(self, split: str, done: int, total: int) -> None:
        now = time.monotonic()
        self._counts[split] = (done, total)
        if now - self._last_log >= PROGRESS_LOG_S:
            self._last_log = now
            stored, planned = (sum(c[i] for c in self._counts.values()) for i in (0, 1))
            splits = {s: {"done": c[0], "total": c[1]} for s, c in self._counts.items()}
            logger.info(
                "priming: %d/%d batches stored",
                stored,
                planned,
                extra={"done": stored, "total": planned, "splits": splits},
            )
        if self._on_change and (done == total or now - self._last_change > 0.2):
            self._last_change = now
            self._on_change(self)

    def cancel(self) -> bool:
        """Ask the running prime to stop, wherever it runs; returns whether one was running."""
        if self.local:
            self._cancel.set()
            request_cancel(self.backend)
            return True
        return request_cancel(self.backend) is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for this process's prime thread; returns whether it finished."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def clear(self) -> None:
        """Remove every encoded batch and the records, refused while any prime runs.

        Raises:
            ConflictError: a prime or another clear holds the store's lease.
        """
        if self.local:
            raise ConflictError("cannot clear while a prime is running; cancel it first")
        try:
            clear_store(self.backend)
        finally:
            self.reader.refresh()
        self.describe()  # a server with the dataset keeps serving metadata and splits

    def describe(self) -> None:
        """Write the plan and the store's description if there is none (a server with the dataset).

        Raises:
            ConflictError: the store has no description and another job holds its lease.
        """
        if self.inputs is None:
            return
        try:
            describe_store(self.backend, self.inputs.encoder, self.inputs.decoded_attributes)
        finally:
            self.reader.refresh()

    def snapshot(self) -> dict[str, Any]:
        """The store's job: state, per-split progress, rate, ETA, error, owner."""
        record, _ = read_job(self.backend)
        if record is not None and record.kind == "prime" and record.progress:
            return _prime_body(record)
        if record is not None and record.kind == "prime":  # just started: no progress yet
            body = _prime_body(record)
        else:
            body = {
                "state": JobState.RUNNING if record and record.holds_lease() else "idle",
                "kind": None if record is None else record.kind,
                "job_id": None if record is None else record.job_id,
                "splits": {},
                "rate": None,
                "eta_s": None,
                "error": None if record is None else record.error,
                "started_at": None,
                "finished_at": None,
                "cancel_requested": False,
            }
        try:
            counts = self.reader.split_counts()
        except (NotPrimedError, StaleStoreError):
            counts = {}
        body["splits"] = {
            s: {"done": c["stored"], "total": c["batches"]} for s, c in counts.items()
        }
        return body


def _prime_body(record: JobRecord) -> dict[str, Any]:
    state = record.effective_state()
    done = sum(p[0] for p in record.progress.values())
    total = sum(p[1] for p in record.progress.values())
    rate = eta = None
    elapsed = (record.finished_at or time.time()) - record.started_at
    encoded = done - record.initial
    if elapsed > 0 and encoded > 0:
        rate = encoded / elapsed
        eta = (total - done) / rate if state == JobState.RUNNING else 0.0
    error = record.error
    if state == JobState.INTERRUPTED and error is None:
        error = {
            "code": "prime_interrupted",
            "message": f"the priming process ({record.owner.get('host')}, pid "
            f"{record.owner.get('pid')}) stopped before finishing: prime again to resume",
        }
    return {
        "state": state,
        "kind": "prime",
        "job_id": record.job_id,
        "splits": {s: {"done": p[0], "total": p[1]} for s, p in sorted(record.progress.items())},
        "rate": rate,
        "eta_s": eta,
        "error": error,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "cancel_requested": record.cancel_requested,
        "bytes": record.stored_bytes,
    }
