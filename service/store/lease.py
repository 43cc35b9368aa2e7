"""The job record and its lease: one prime or clear at a time across every process of a store.

``job.json`` holds the current (or last) job: its kind, state, owner, progress and a heartbeat.
A job *holds the lease* while it is running, its owner renews the heartbeat within ``lease_s``
and, when the owner is on this host, its process is still alive (so a killed server's lease is
free at once, not after the timeout). Every change is a compare-and-swap on the record's version
(:meth:`StoreBackend.replace`), so two processes can never both believe they hold it. Any process
can ask the holder to stop (``cancel_requested``); the holder sees it at its next heartbeat.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from batchstash.client import ConflictError

from . import layout
from .backend import NoSuchKey, StoreBackend

__all__ = [
    "DEFAULT_LEASE_S",
    "JobLease",
    "JobRecord",
    "JobState",
    "LeaseLostError",
    "read_job",
    "request_cancel",
]

DEFAULT_LEASE_S = 15.0


class JobState:
    """The states of a job."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # its process died or stopped renewing the lease


class LeaseLostError(ConflictError):
    """Another process took the store's job lease from this job (it stopped renewing in time)."""


def _start_ticks(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _owner() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": _start_ticks(pid)}


def _owner_gone(owner: dict[str, Any]) -> bool:
    """Whether the owner is a process of this host that no longer exists (or is another one)."""
    if owner.get("host") != socket.gethostname():
        return False
    pid = int(owner.get("pid", 0))
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    started = owner.get("started")
    return bool(started) and _start_ticks(pid) not in ("", started)


@dataclass(frozen=True)
class JobRecord:
    """``job.json``: one prime or clear job (see the module docstring)."""

    job_id: str
    kind: str
    state: str
    owner: dict[str, Any]
    heartbeat_at: float
    lease_s: float
    started_at: float
    finished_at: float | None = None
    cancel_requested: bool = False
    progress: dict[str, list[int]] = field(default_factory=dict)
    initial: int = 0
    stored_bytes: int = 0
    generation: str = ""
    error: dict[str, str] | None = None

    def holds_lease(self, now: float | None = None) -> bool:
        """Whether the job is running and its owner is alive and renewing."""
        if self.state != JobState.RUNNING:
            return False
        now = time.time() if now is None else now
        return now <= self.heartbeat_at + self.lease_s and not _owner_gone(self.owner)

    def effective_state(self) -> str:
        """The state, with a running job whose owner is gone reported as ``interrupted``."""
        if self.state == JobState.RUNNING and not self.holds_lease():
            return JobState.INTERRUPTED
        return self.state

    def encode(self) -> bytes:
        """The record as JSON."""
        return json.dumps(asdict(self), sort_keys=True).encode()


def _decode(raw: bytes | bytearray) -> JobRecord | None:
    try:
        return JobRecord(**json.loads(bytes(raw).decode("utf-8")))
    except (ValueError, TypeError, UnicodeDecodeError):
        return None  # a damaged job record holds nothing; the next job overwrites it


def read_job(backend: StoreBackend) -> tuple[JobRecord | None, str | None]:
    """The job record and its version (``None, None`` when there is none)."""
    try:
        raw, version = backend.read_versioned(layout.JOB)
    except NoSuchKey:
        return None, None
    return _decode(raw), version


def _swap(
    backend: StoreBackend, change: Callable[[JobRecord | None], JobRecord | None]
) -> JobRecord | None:
    """Apply ``change`` to the current record by compare-and-swap, retrying on a race.

    ``change`` returns the new record, or ``None`` to leave the record as it is.
    """
    while True:
        current, version = read_job(backend)
        new = change(current)
        if new is None:
            return None
        data = new.encode()
        written = (
            backend.create(layout.JOB, data)
            if version is None
            else backend.replace(layout.JOB, data, version)
        )
        if written:
            return new


class JobLease:
    """The lease of one running job, held by this process.

    Use :meth:`acquire`; then :meth:`heartbeat` at least every ``lease_s / 3`` seconds and
    :meth:`finish` once.
    """

    def __init__(self, backend: StoreBackend, record: JobRecord) -> None:
        self.backend = backend
        self.record = record

    @property
    def job_id(self) -> str:
        """The job's id."""
        return self.record.job_id

    @classmethod
    def acquire(
        cls,
        backend: StoreBackend,
        kind: str,
        lease_s: float = DEFAULT_LEASE_S,
        **fields: Any,
    ) -> JobLease:
        """Start a job of ``kind`` (``prime`` or ``clear``) if no other job holds the lease.

        Raises:
            ConflictError: another job is running (the message says which and where).
        """
        now = time.time()
        new = JobRecord(
            job_id=uuid.uuid4().hex[:16],
            kind=kind,
            state=JobState.RUNNING,
            owner=_owner(),
            heartbeat_at=now,
            lease_s=lease_s,
            started_at=now,
            **fields,
        )

        def claim(current: JobRecord | None) -> JobRecord:
            if current is not None and current.holds_lease():
                owner = current.owner
                raise ConflictError(
                    f"a {current.kind} (job {current.job_id}) is running on "
                    f"{owner.get('host')} (pid {owner.get('pid')}); "
                    + ("wait for it or cancel it first" if current.kind == "prime" else "wait")
                )
            return new

        _swap(backend, claim)
        return cls(backend, new)

    def heartbeat(self, **updates: Any) -> JobRecord:
        """Renew the lease, recording ``updates`` (progress...); returns the record written.

        Raises:
            LeaseLostError: another job took the lease (this one must stop writing).
        """

        def renew(current: JobRecord | None) -> JobRecord:
            if current is None or current.job_id != self.job_id:
                raise LeaseLostError(
                    f"job {self.job_id} lost the store's lease to "
                    f"{'nobody' if current is None else 'job ' + current.job_id}"
                )
            return replace(current, heartbeat_at=time.time(), **updates)

        written = _swap(self.backend, renew)
        self.record = written or self.record  # renew always writes: never None
        return self.record

    def finish(self, state: str, **updates: Any) -> JobRecord:
        """End the job in ``state`` and free the lease.

        Raises:
            LeaseLostError: another job took the lease meanwhile.
        """
        return self.heartbeat(state=state, finished_at=time.time(), **updates)


def request_cancel(backend: StoreBackend) -> JobRecord | None:
    """Ask the running prime to stop; returns its record, or ``None`` if none is running."""

    def ask(current: JobRecord | None) -> JobRecord | None:
        if current is None or current.kind != "prime" or not current.holds_lease():
            return None
        if current.cancel_requested:
            return None
        return replace(current, cancel_requested=True)

    written = _swap(backend, ask)
    if written is not None:
        return written
    current, _ = read_job(backend)
    if current is not None and current.kind == "prime" and current.holds_lease():
        return current  # cancel was already requested
    return None
