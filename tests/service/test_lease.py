"""The job record and its lease: one prime or clear at a time, compare-and-swap, dead owners."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from dataclasses import replace

import pytest

from batchstash.client import ConflictError
from batchstash.service.store import layout
from batchstash.service.store.backend import open_backend
from batchstash.service.store.lease import (
    DEFAULT_LEASE_S,
    JobLease,
    JobRecord,
    JobState,
    LeaseLostError,
    read_job,
    request_cancel,
)


@pytest.fixture
def backend(store_url):
    return open_backend(store_url)  # every lease test runs on a directory and on S3


@pytest.fixture
def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _record(owner, heartbeat_at=None, kind="prime", state=JobState.RUNNING, **fields):
    now = time.time()
    return JobRecord(
        job_id="other-job",
        kind=kind,
        state=state,
        owner=owner,
        heartbeat_at=now if heartbeat_at is None else heartbeat_at,
        lease_s=DEFAULT_LEASE_S,
        started_at=now,
        **fields,
    )


def _put(backend, record):
    backend.write(layout.JOB, [record.encode()])


def test_acquire_writes_the_job_record(backend):
    assert read_job(backend) == (None, None)
    lease = JobLease.acquire(backend, "prime", lease_s=5.0, generation="g1")
    record, version = read_job(backend)
    assert record == lease.record and version == backend.version(layout.JOB)
    assert record.job_id == lease.job_id and len(lease.job_id) == 16
    assert (record.kind, record.state, record.lease_s, record.generation) == (
        "prime",
        JobState.RUNNING,
        5.0,
        "g1",
    )
    assert record.owner["host"] == socket.gethostname() and record.owner["pid"] == os.getpid()
    assert record.owner["started"]  # the process start time, against pid reuse
    assert record.holds_lease() and record.effective_state() == JobState.RUNNING


@pytest.mark.parametrize("kind", ["prime", "clear"])
def test_acquire_refuses_while_another_lease_is_alive(backend, kind):
    first = JobLease.acquire(backend, kind)
    pattern = rf"a {kind} \(job {first.job_id}\) is running on .* \(pid {os.getpid()}\)"
    with pytest.raises(ConflictError, match=pattern):
        JobLease.acquire(backend, "prime")
    with pytest.raises(ConflictError, match=pattern):
        JobLease.acquire(backend, "clear")
    assert read_job(backend)[0] == first.record  # untouched


def test_the_conflict_says_what_to_do(backend):
    JobLease.acquire(backend, "prime")
    with pytest.raises(ConflictError, match="wait for it or cancel it first"):
        JobLease.acquire(backend, "clear")


def test_a_finished_job_frees_the_lease(backend):
    first = JobLease.acquire(backend, "prime")
    done = first.finish(JobState.DONE, stored_bytes=42)
    assert done.state == JobState.DONE and done.finished_at is not None and done.stored_bytes == 42
    assert not done.holds_lease() and done.effective_state() == JobState.DONE
    second = JobLease.acquire(backend, "clear")
    assert read_job(backend)[0].job_id == second.job_id != first.job_id


def test_only_one_of_concurrent_acquires_wins(backend):
    start = threading.Barrier(8)
    won, lost = [], []

    def race():
        start.wait()
        try:
            won.append(JobLease.acquire(backend, "prime"))
        except ConflictError:
            lost.append(1)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7
    assert read_job(backend)[0].job_id == won[0].job_id


def test_a_lease_whose_owner_died_on_this_host_is_free_at_once(backend, dead_pid):
    stale = _record({"host": socket.gethostname(), "pid": dead_pid, "started": ""})
    _put(backend, stale)
    assert stale.heartbeat_at + stale.lease_s > time.time()  # the heartbeat is fresh...
    assert not stale.holds_lease()  # ...but its process is gone
    assert stale.effective_state() == JobState.INTERRUPTED
    lease = JobLease.acquire(backend, "prime")
    assert read_job(backend)[0].job_id == lease.job_id


@pytest.mark.parametrize(
    ("owner", "held"),
    [
        (lambda: {**_me(), "started": ""}, True),
        (lambda: {**_me(), "started": "not-my-start-time"}, False),  # the pid was reused
        (lambda: {**_me(), "pid": 0}, False),
        (lambda: {"host": "another-host", "pid": 1, "started": "1"}, True),  # cannot look
    ],
    ids=["alive", "pid-reused", "no-pid", "other-host"],
)
def test_holds_lease_checks_the_owner_process(owner, held):
    assert _record(owner()).holds_lease() is held


@pytest.mark.parametrize(
    ("age", "state", "held"),
    [
        (0.0, JobState.RUNNING, True),
        (DEFAULT_LEASE_S + 1, JobState.RUNNING, False),
        (0.0, JobState.DONE, False),
        (0.0, JobState.FAILED, False),
        (0.0, JobState.CANCELLED, False),
    ],
)
def test_holds_lease_needs_a_running_job_and_a_fresh_heartbeat(age, state, held):
    now = time.time()
    record = _record({"host": "another-host", "pid": 1}, heartbeat_at=now - age, state=state)
    assert record.holds_lease(now) is held
    expected = state if held or state != JobState.RUNNING else JobState.INTERRUPTED
    assert record.effective_state() == expected


def test_an_expired_lease_can_be_taken(backend):
    _put(backend, _record({"host": "another-host", "pid": 1}, heartbeat_at=time.time() - 60))
    lease = JobLease.acquire(backend, "prime")
    assert read_job(backend)[0].job_id == lease.job_id


def test_a_damaged_job_record_holds_nothing(backend):
    backend.write(layout.JOB, [b"{not json"])
    record, version = read_job(backend)
    assert record is None and version == backend.version(layout.JOB)
    lease = JobLease.acquire(backend, "clear")
    assert read_job(backend)[0] == lease.record


def test_heartbeat_renews_and_records_progress(backend):
    lease = JobLease.acquire(backend, "prime")
    before = lease.record.heartbeat_at
    beat = lease.heartbeat(progress={"train": [1, 3]}, stored_bytes=10)
    assert beat.heartbeat_at >= before and beat.progress == {"train": [1, 3]}
    assert beat.stored_bytes == 10 and lease.record == beat == read_job(backend)[0]
    assert beat.job_id == lease.job_id and beat.state == JobState.RUNNING


def test_heartbeat_after_another_job_took_the_lease_raises(backend):
    first = JobLease.acquire(backend, "prime")
    expired = replace(first.record, heartbeat_at=time.time() - 60)  # it stopped renewing
    _put(backend, expired)
    second = JobLease.acquire(backend, "prime")
    with pytest.raises(LeaseLostError, match=f"lost the store's lease to job {second.job_id}"):
        first.heartbeat(progress={"train": [9, 9]})
    with pytest.raises(LeaseLostError):
        first.finish(JobState.DONE)
    assert issubclass(LeaseLostError, ConflictError)
    assert read_job(backend)[0] == second.record  # the loser wrote nothing


def test_heartbeat_after_the_record_was_removed_raises(backend):
    lease = JobLease.acquire(backend, "prime")
    backend.delete(layout.JOB)
    with pytest.raises(LeaseLostError, match="lost the store's lease to nobody"):
        lease.heartbeat()
    assert read_job(backend) == (None, None)


def test_request_cancel_reaches_the_holder_at_its_heartbeat(backend):
    lease = JobLease.acquire(backend, "prime")
    asked = request_cancel(backend)
    assert asked is not None and asked.cancel_requested and asked.job_id == lease.job_id
    assert read_job(backend)[0].cancel_requested
    assert not lease.record.cancel_requested  # the holder has not looked yet
    assert lease.heartbeat(progress={"train": [2, 4]}).cancel_requested
    again = request_cancel(backend)  # already asked: the record as it is
    assert again is not None and again.cancel_requested and again.progress == {"train": [2, 4]}
    assert lease.finish(JobState.CANCELLED).state == JobState.CANCELLED
    assert request_cancel(backend) is None


def test_request_cancel_without_a_running_prime(backend, dead_pid):
    assert request_cancel(backend) is None
    assert list(backend.list()) == []  # asking wrote nothing
    JobLease.acquire(backend, "clear")
    assert request_cancel(backend) is None  # a clear cannot be cancelled
    assert not read_job(backend)[0].cancel_requested
    _put(backend, _record({"host": socket.gethostname(), "pid": dead_pid}))
    assert request_cancel(backend) is None  # its owner is gone
    assert not read_job(backend)[0].cancel_requested
