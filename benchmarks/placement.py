"""Where re-dealt rows land: what the re-deal's pass over the bytes costs, and receiving in place.

A re-dealt window's rows must end up at new places (their new batch, their new row). Today the
client receives each stored batch into one buffer, as without a window, and copies every row to
its place afterwards: a second pass over the bytes. The alternative is to receive the rows at
their places directly, one ``recvmsg_into`` buffer a row (scatter I/O), so the kernel's copy is
the only one. This measures the three ways on a socketpair in this process, without a server or
batchstash's decoding, for windows of :data:`WINDOW` stored batches of 256 rows:

- ``receive``: each stored batch into one reused buffer (what the bytes cost without a window);
- ``copy``: the window's stored batches each into its own buffer, then each new batch's rows
  gathered from them (a ``numpy.take`` a stored batch, as :class:`~batchstash.client.dealt.
  DealtWindow` does for windows above its bulk size);
- ``in place``: every row received straight into its place in the new batches.

A sender thread writes the bodies; the receiving thread's own CPU time (``time.thread_time``)
is what each way costs, reported per GB, with the wall-clock rate; interleaved, medians.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from typing import Any

import numpy

__all__ = ["WAYS", "WINDOW", "measure"]

WINDOW = 16
"""Stored batches a window (the ``shuffle_window`` measured)."""

ROWS = 256
"""Rows a stored batch."""

WAYS = ("receive", "copy", "scatter", "in place")

_BUFFER = 4 << 20  # socket buffers: a window's batch at a time fits


def _recv_exactly(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < view.nbytes:
        got += sock.recv_into(view[got:])


def _recv_rows(sock: socket.socket, rows: list[memoryview], row_bytes: int) -> None:
    """Receive ``len(rows)`` rows, each into its own buffer (at most 1,024 buffers a call)."""
    got, total = 0, len(rows) * row_bytes
    while got < total:
        first, offset = divmod(got, row_bytes)
        part = rows[first : first + 1024]
        if offset:
            part[0] = part[0][offset:]
        got += sock.recvmsg_into(part)[0]


def _inverse(order: numpy.ndarray) -> numpy.ndarray:
    """Where each window row goes: new batch ``b`` takes ``order``'s ``b``-th run, sorted."""
    rows = numpy.sort(order.reshape(WINDOW, ROWS), axis=1).reshape(-1)
    inverse = numpy.empty_like(rows)
    inverse[rows] = numpy.arange(len(rows))
    return inverse


def _one(way: str, row_bytes: int, windows: int, seed: int) -> dict[str, float]:
    """``windows`` windows received one way; the receiving thread's CPU and the wall time."""
    width = row_bytes // 4
    body = numpy.random.default_rng(seed).random((ROWS, width), dtype=numpy.float32)
    data = memoryview(body).cast("B")
    sender_sock, receiver = socket.socketpair()
    for sock in (sender_sock, receiver):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)

    def send() -> None:
        with sender_sock:
            for _ in range(windows * WINDOW):
                sender_sock.sendall(data)

    rng = numpy.random.default_rng(seed + 1)
    stored = [numpy.empty((ROWS, width), numpy.float32) for _ in range(WINDOW)]
    new = numpy.ones((WINDOW * ROWS, width), numpy.float32)  # touched: pooled buffers are
    for array in stored:
        array.fill(1)
    places = [memoryview(new[i]).cast("B") for i in range(len(new))]
    sender = threading.Thread(target=send, name="placement-sender")
    sender.start()
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(windows):
        order = rng.permutation(WINDOW * ROWS)
        if way == "receive":
            for _ in range(WINDOW):
                _recv_exactly(receiver, memoryview(stored[0]).cast("B"))
        elif way == "copy":
            for array in stored:
                _recv_exactly(receiver, memoryview(array).cast("B"))
            rows = numpy.sort(order.reshape(WINDOW, ROWS), axis=1)
            for b in range(WINDOW):
                source, local = numpy.divmod(rows[b], ROWS)
                bounds = numpy.searchsorted(source, numpy.arange(WINDOW + 1)).tolist()
                target = new[b * ROWS : (b + 1) * ROWS]
                for s in range(WINDOW):
                    lo, hi = bounds[s], bounds[s + 1]
                    stored[s].take(local[lo:hi], axis=0, out=target[lo:hi], mode="clip")
        elif way == "scatter":  # row r of the window goes to place inverse[r]
            inverse = _inverse(order)
            for s in range(WINDOW):
                _recv_exactly(receiver, memoryview(stored[0]).cast("B"))
                new[inverse[s * ROWS : (s + 1) * ROWS]] = stored[0]
        else:
            inverse = _inverse(order)
            for s in range(WINDOW):
                at = inverse[s * ROWS : (s + 1) * ROWS].tolist()
                _recv_rows(receiver, [places[i] for i in at], row_bytes)
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    sender.join()
    receiver.close()
    gb = windows * WINDOW * ROWS * row_bytes / 1e9
    return {"cpu_s_gb": cpu / gb, "mb_s": gb * 1e3 / wall}


def measure(row_bytes: int, windows: int = 16, repeats: int = 5) -> dict[str, Any]:
    """Each way for rows of ``row_bytes`` (a multiple of 4), interleaved ``repeats`` times.

    Returns, per way, the median receiving-thread CPU per GB and MB/s (and every run's), and
    the batch bytes.
    """
    runs: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    for repeat in range(repeats + 1):  # the first round warms the allocations, untimed
        for way in WAYS:
            run = _one(way, row_bytes, windows if repeat else 2, seed=repeat)
            if repeat:
                runs[way].append(run)
    out: dict[str, Any] = {"batch_bytes": ROWS * row_bytes, "window": WINDOW}
    for way, series in runs.items():
        out[way] = {
            "cpu_s_gb": statistics.median(r["cpu_s_gb"] for r in series),
            "mb_s": statistics.median(r["mb_s"] for r in series),
            "runs": series,
        }
    return out
