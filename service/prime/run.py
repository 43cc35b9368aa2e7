"""One prime, under the store's lease: plan -> todo -> executor -> listing -> manifest."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from batchstash.client import BatchstashError, PrimeCancelledError, StoreError

from ..store import layout
from ..store.backend import StoreBackend
from ..store.demand import Demand
from ..store.lease import JobLease, JobState, LeaseLostError
from ..store.ledger import LEDGER, Ledger, ledger_prefix
from ..store.records import Manifest, write_record
from ..store.writer import BatchWriter
from .compression import group_codecs
from .inputs import PrimeInputs
from .plan import ensure_plan
from .resume import resume
from .schedule import WorkQueue
from .work import Work
from .worker import write_batch

__all__ = ["MAX_AUTO_CHUNK", "ProgressCallback", "auto_chunk_size", "prime_store"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``progress(split, done, total)`` each time a batch of ``split`` is stored."""

MAX_AUTO_CHUNK = 8
HEARTBEAT_S = 0.5


def auto_chunk_size(batches: int, workers: int) -> int:
    """Id sets per task: at least four tasks a worker, and at most :data:`MAX_AUTO_CHUNK`.

    Small tasks keep the workers busy to the end and make progress move smoothly; a task costs
    one small message each way.
    """
    return max(1, min(MAX_AUTO_CHUNK, batches // (max(workers, 1) * 4)))


class _Heartbeat:
    """Renews the lease with the job's progress; a cancel request or a lost lease sets cancel.

    With a demand, it also collects the batches other processes' readers were asked for.
    """

    def __init__(
        self,
        lease: JobLease,
        cancel: threading.Event,
        demand: Demand | None = None,
        generation: str = "",
    ) -> None:
        self.lease, self.cancel = lease, cancel
        self.demand, self.generation = demand, generation
        self.progress: dict[str, list[int]] = {}
        self.bytes = 0
        self.lost: LeaseLostError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batchstash-lease", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.lost is None:
            self.beat()  # the last progress, whichever way the prime ends

    def beat(self) -> None:
        try:
            record = self.lease.heartbeat(
                progress={s: list(p) for s, p in self.progress.items()}, stored_bytes=self.bytes
            )
        except LeaseLostError as exc:
            self.lost = exc
            self.cancel.set()
            return
        if record.cancel_requested:
            self.cancel.set()
        if self.demand is not None:
            try:
                self.demand.collect(self.lease.backend, self.generation)
            except Exception as exc:  # a hint: never stop renewing the lease over it
                logger.debug("cannot read the store's demand record: %s", exc)

    def _run(self) -> None:
        interval = min(HEARTBEAT_S, self.lease.record.lease_s / 5)
        while not self._stop.wait(interval):
            try:
                self.beat()
            except OSError as exc:  # the store is unreachable for now: retry at the next beat
                logger.warning("cannot renew the job lease: %s", exc)


def prime_store(
    inputs: PrimeInputs,
    *,
    lease: JobLease | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    demand: Demand | None = None,
) -> int:
    """Encode and store every planned batch not stored yet, then write the manifest.

    Args:
        inputs: the encoder, the store, the executor and the workers' recipe.
        lease: the held job lease (else taken here); finished here in every case.
        progress: called once per split at the start, then after every stored batch.
        cancel: set it to stop (raises :class:`PrimeCancelledError`).
        demand: batches this process's readers were asked for: each goes into the next chunk
            handed out, as do those other processes' readers publish in the store (``None``:
            those only).

    Returns:
        The number of batches encoded.

    Raises:
        ConflictError: no lease was given and another job holds the store's.
    """
    lease = lease or JobLease.acquire(inputs.backend, "prime")
    cancel = cancel or threading.Event()
    demand = demand if demand is not None else Demand()
    try:
        encoded = _prime(lease, inputs, progress, cancel, demand)
    except LeaseLostError:
        raise  # another job owns the record now: write nothing
    except PrimeCancelledError as exc:
        lease.finish(JobState.CANCELLED, error={"code": exc.code, "message": exc.message})
        raise
    except BatchstashError as exc:
        lease.finish(JobState.FAILED, error={"code": exc.code, "message": exc.message})
        raise
    except Exception as exc:  # a user's vectorizer or factory: report it in the job record
        message = f"{type(exc).__name__}: {exc}"
        lease.finish(JobState.FAILED, error={"code": "internal_error", "message": message})
        raise
    return encoded


def _prime(
    lease: JobLease,
    inputs: PrimeInputs,
    progress: ProgressCallback | None,
    cancel: threading.Event,
    demand: Demand,
) -> int:
    backend, encoder, executor = inputs.backend, inputs.encoder, inputs.executor
    swept = backend.sweep_temporaries()
    if swept:
        logger.info("removed %d temporary files of interrupted writes", swept)
    id_sets, info = ensure_plan(backend, encoder, inputs.decoded_attributes)
    lease.heartbeat(generation=info.generation)
    info, codecs = group_codecs(
        backend, encoder, info, id_sets, inputs.compression, inputs.compression_level
    )
    writer = BatchWriter(backend, encoder.groups, info.fingerprint, info.generation, codecs)
    for generation in _other_generations(backend, info.generation):
        backend.delete_prefix(layout.generation_prefix(generation))
        backend.delete_prefix(ledger_prefix(generation))
    found = resume(writer, id_sets, verify=inputs.verify)
    todo, stored_bytes, ledger = found.todo, found.stored_bytes, found.ledger
    totals = {s: c["batches"] for s, c in info.splits.items()}
    done = dict(totals)
    for id_set in todo:
        done[id_set.split_name] -= 1
    logger.info(
        "priming %d of %d batches with %s",
        len(todo),
        len(id_sets),
        type(executor).__name__,
        extra={"todo": len(todo), "planned": len(id_sets), "workers": executor.workers},
    )
    with _Heartbeat(lease, cancel, demand, info.generation) as beat:
        beat.progress = {s: [done[s], totals[s]] for s in totals}
        beat.bytes = stored_bytes
        lease.heartbeat(
            progress=beat.progress, stored_bytes=stored_bytes, initial=sum(done.values())
        )
        if progress:
            for split, total in totals.items():
                progress(split, done[split], total)

        def on_done(id_set: Any, size: int) -> None:
            split = id_set.split_name
            beat.progress[split][0] += 1
            beat.bytes += size
            ledger.add(writer.key(split, id_set.batch_id, g) for g in writer.groups)
            if ledger.due():
                ledger.flush()
            if progress:
                progress(split, beat.progress[split][0], totals[split])

        work = Work(
            inputs.recipe,
            backend.url,
            info.fingerprint,
            info.generation,
            tuple(tuple(sorted(g)) for g in encoder.groups),
            # workers rebuild the data: they check it is this one (inline encoding uses it)
            encoder.split_stash_container.version() if executor.workers else "",
            tuple(sorted(codecs.items())),
        )
        size = inputs.chunk_size or auto_chunk_size(len(todo), executor.workers)
        queue = WorkQueue(todo, size, demand, ramp=executor.workers)
        try:
            with demand.consuming():
                executor.run(
                    queue, work, lambda s: write_batch(encoder, writer, s), on_done, cancel
                )
        except PrimeCancelledError:
            if beat.lost is not None:
                raise beat.lost from None
            _record(ledger)
            raise
        except BatchstashError:
            _record(ledger)  # what was written stays known to the next resume
            raise
        beat.beat()
        if beat.lost is not None:
            raise beat.lost
        ledger.flush(compact=True)  # every object durable (a sync) before anything claims it
        _confirm(backend, writer, id_sets)
        manifest = Manifest(info.fingerprint, info.generation, totals, beat.bytes)
        lease.heartbeat()  # still ours: a straggler past its lease writes no manifest
        write_record(backend, manifest)
        backend.delete(layout.DEMAND)
    if queue.demanded:
        logger.info(
            "encoded %d batches early because readers asked for them",
            queue.demanded,
            extra={"demanded": queue.demanded},
        )
    lease.finish(JobState.DONE, progress=beat.progress, stored_bytes=beat.bytes)
    return len(todo)


def _record(ledger: Ledger) -> None:
    """Record the objects written so far (a failing prime's): a hint, never a new failure."""
    try:
        ledger.flush()
    except Exception as exc:
        logger.warning("cannot record the objects written in the ledger: %s", exc)


def _other_generations(backend: StoreBackend, current: str) -> set[str]:
    found = set()
    for key in backend.list(layout.BATCHES):
        parsed = layout.parse_group_key(key)
        if parsed is not None and parsed[0] != current:
            found.add(parsed[0])
    for key in backend.list(LEDGER):
        generation = key[len(LEDGER) :].split("/", 1)[0]
        if generation and generation != current:
            found.add(generation)
    return found


def _confirm(backend: StoreBackend, writer: BatchWriter, id_sets: list[Any]) -> None:
    """A listing shows every planned batch object before the manifest claims them."""
    listed = set(backend.list(layout.generation_prefix(writer.generation)))
    missing = [
        key
        for s in id_sets
        for g in writer.groups
        if (key := writer.key(s.split_name, s.batch_id, g)) not in listed
    ]
    if missing:
        raise StoreError(
            f"{len(missing)} batch objects are missing after priming (first: {missing[0]}): "
            "prime again"
        )
