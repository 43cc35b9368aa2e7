"""Where a trainer waits for its data: per-iteration read timings, a summary line, metrics.

A :class:`~batchstash.client.iterate.BatchIterator` keeps one :class:`ReadStats`: the time the
consumer spent blocked in ``next()`` (the trainer's data wait), and what the reader did
meanwhile, split into receiving (request to last body byte, the frames' checksums verified as
the bytes land), decoding (turning verified payloads into batches) and the host side of the
device copy. ``it.stats()`` gives them; at the end of each pass the iterator logs one line at
INFO::

    train epoch 3: 391 batches, 411 MB in 3.52 s; data wait 3.1 % of the pass (0.11 s);
    trainer bound: the reader was ahead (busy 41 %: network 33 %, decode 6 %, device copy 2 %);
    received at 1.25 GB/s

With ``prometheus-client`` installed, :func:`export_prometheus` counts every iterator's
timings in a registry the trainer serves (``prometheus_client.start_http_server``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WAIT_BOUND", "ReadStats", "export_prometheus"]

WAIT_BOUND = 0.05
"""A data wait above this share of a pass means the trainer waited on its data."""

_PARTS = ("network", "decode", "device copy")


@dataclass
class ReadStats:
    """The read timings of one iterator's pass (seconds, bytes, batches).

    Attributes:
        split: the split read.
        epoch: the plan's epoch.
        batches: batches yielded.
        bytes: tensor bytes of the batches yielded.
        wait_s: time the consumer was blocked in ``next()`` waiting for a batch.
        elapsed_s: from the first ``next()`` to the last batch yielded (or now).
        network_s: the reader's time receiving answers (request to last byte; on the threaded
            path the request, its answer and decoding together, in each prefetch thread).
        decode_s: the reader's time decoding verified payloads into batches (pipelined path).
        copy_s: host time issuing the device copies (CUDA copies then overlap the trainer).
        received: answer bytes received.
    """

    split: str
    epoch: int
    batches: int = 0
    bytes: int = 0
    wait_s: float = 0.0
    elapsed_s: float = 0.0
    network_s: float = 0.0
    decode_s: float = 0.0
    copy_s: float = 0.0
    received: int = 0
    _start: float | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- the consumer's side (one thread) -------------------------------------------------------

    def started(self, now: float | None = None) -> None:
        """The consumer asked for its first batch."""
        if self._start is None:
            self._start = time.perf_counter() if now is None else now

    def waited(self, seconds: float, batches: int, size: int, now: float | None = None) -> None:
        """The consumer waited ``seconds`` for ``batches`` batches of ``size`` tensor bytes."""
        self.wait_s += seconds
        self.batches += batches
        self.bytes += size
        if self._start is not None:
            self.elapsed_s = (time.perf_counter() if now is None else now) - self._start
        _count("wait_seconds", self.split, seconds)
        _count("batches", self.split, batches)
        _count("bytes", self.split, size)

    # -- the reader's side (the reader thread, or several prefetch threads) ---------------------

    def read(self, network_s: float, received: int, decode_s: float = 0.0) -> None:
        """One answer: ``received`` bytes in ``network_s``, decoded in ``decode_s``."""
        with self._lock:
            self.network_s += network_s
            self.decode_s += decode_s
            self.received += received
        _count("network_seconds", self.split, network_s)
        _count("decode_seconds", self.split, decode_s)

    def copied(self, seconds: float) -> None:
        """Device copies issued in ``seconds``."""
        with self._lock:
            self.copy_s += seconds
        _count("copy_seconds", self.split, seconds)

    # -- reading them ---------------------------------------------------------------------------

    @property
    def wait_share(self) -> float:
        """The data wait as a share of the pass so far (0 before the first batch)."""
        return self.wait_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def bound(self) -> str:
        """``trainer`` (data wait under :data:`WAIT_BOUND`), else the reader's biggest part."""
        if self.wait_share < WAIT_BOUND:
            return "trainer"
        parts = dict(zip(_PARTS, (self.network_s, self.decode_s, self.copy_s), strict=True))
        return max(parts, key=lambda k: parts[k])

    def as_dict(self) -> dict[str, Any]:
        """The timings, their shares and the verdict, JSON-able."""
        return {
            "split": self.split,
            "epoch": self.epoch,
            "batches": self.batches,
            "bytes": self.bytes,
            "received": self.received,
            "elapsed_s": self.elapsed_s,
            "wait_s": self.wait_s,
            "wait_share": self.wait_share,
            "network_s": self.network_s,
            "decode_s": self.decode_s,
            "copy_s": self.copy_s,
            "receive_rate": self.received / self.network_s if self.network_s > 0 else None,
            "bound": self.bound,
        }

    def summary(self) -> str:
        """One line: the data wait, what bound the pass, the reader's parts and the rate."""
        elapsed = self.elapsed_s or 0.0
        head = (
            f"{self.split} epoch {self.epoch}: {self.batches} batches, {_size(self.bytes)} in "
            f"{elapsed:.2f} s; data wait {100 * self.wait_share:.1f} % of the pass "
            f"({self.wait_s:.2f} s)"
        )
        parts = (self.network_s, self.decode_s, self.copy_s)
        shares = ", ".join(
            f"{name} {100 * s / elapsed:.0f} %" for name, s in zip(_PARTS, parts, strict=True)
        )
        busy = f"busy {100 * sum(parts) / elapsed:.0f} %: {shares}" if elapsed > 0 else "idle"
        if self.bound == "trainer":
            verdict = f"trainer bound: the reader was ahead ({busy})"
        else:
            verdict = f"{self.bound} bound ({busy})"
        rate = (
            f"; received at {_size(self.received / self.network_s)}/s"
            if self.network_s > 0 and self.received
            else ""
        )
        return f"{head}; {verdict}{rate}"


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.{2 if unit == 'GB' else 0}f} {unit}"
    return f"{n:.0f} B"


# -- Prometheus ---------------------------------------------------------------------------------

_METRICS: dict[str, Any] = {}
_HELP = {
    "batches": "Batches the trainer took from batchstash iterators",
    "bytes": "Tensor bytes of those batches",
    "wait_seconds": "Time the trainer was blocked waiting for a batch",
    "network_seconds": "Reader time receiving answers (checksums verified as bytes land)",
    "decode_seconds": "Reader time decoding payloads into batches",
    "copy_seconds": "Reader time issuing host-to-device copies",
}


def export_prometheus(registry: Any = None) -> None:
    """Count every iterator's read timings in Prometheus counters, by split, from now on.

    Counters ``batchstash_client_<name>_total`` for each of batches, bytes, wait_seconds,
    network_seconds, decode_seconds and copy_seconds, in ``registry`` (default:
    ``prometheus_client``'s global one, which ``start_http_server`` serves). Calling it again
    with the same registry changes nothing.

    Raises:
        ImportError: ``prometheus-client`` is not installed (``pip install
            'batchstash[metrics]'``).
    """
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            "export_prometheus needs prometheus-client: pip install 'batchstash[metrics]'"
        ) from exc
    registry = prometheus_client.REGISTRY if registry is None else registry
    if _METRICS.get("_registry") is registry:
        return
    made = {
        name: prometheus_client.Counter(
            f"batchstash_client_{name}", text, ["split"], registry=registry
        )
        for name, text in _HELP.items()
    }
    _METRICS.clear()
    _METRICS.update(made, _registry=registry)


def _count(name: str, split: str, amount: float) -> None:
    counter = _METRICS.get(name)
    if counter is not None and amount:
        counter.labels(split).inc(amount)
