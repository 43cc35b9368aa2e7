"""An epoch's batch requests pipelined on one connection to a data listener, read by one thread.

The threaded path (:func:`~batchstash.client.prefetch.prefetched` over
:meth:`BatchClient.batches`) gives each request a thread, an ``httpx`` request and response, and
two thread hand-offs; on loopback that costs about twice the CPU per GB of what the bytes need.
:class:`PipelinedReader` sends the requests of the groups ahead on one keep-alive connection
without waiting for their answers (HTTP/1.1 pipelining: the data listener answers them in
order), and one background thread reads each answer straight into a pooled buffer, verifies its
frames as they land (:class:`~batchstash.client.framecheck.FrameChecker`) and decodes them; the
consumer takes one group per hand-off.

Only the happy path is pipelined: a ``200`` with the store's header. Anything else (an error
status, a closed or reset connection, a listener that cannot be reached) closes the connection,
and that group is fetched through the :class:`~batchstash.client.engine.Engine` (the caller's
``fallback``), with its retries, failover, prime wait and error classes, before pipelining starts
again from the next group. So every error a caller sees is the one the threaded path raises.

The reader is a transport of the engine's URLs: it uses only their public pool
(:class:`~batchstash.client.endpoints.Endpoints`) and the engine's store check, and the caller
turns decoded payloads into batches (``build``).
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from .buffers import BufferPool
from .decode import decode_frames
from .endpoints import DATA_CONNECT_TIMEOUT
from .framecheck import FrameChecker
from .headers import FINGERPRINT_HEADER
from .inflight import DEFAULT_IN_FLIGHT_BYTES, InFlight
from .lowwater import LowWater
from .prefetch import may_wait
from .socketio import read_body, read_head
from .transport import decode_zstd

if TYPE_CHECKING:
    from . import wire
    from .batch import Batch
    from .endpoints import Endpoint
    from .engine import Engine
    from .staging import DeviceStage
    from .waits import ReadStats

__all__ = ["PipelinedReader"]

logger = logging.getLogger(__name__)

_DONE = object()


class _Stopped(Exception):
    """The consumer closed the stream."""


class PipelinedReader:
    """Fetches an epoch's groups of batches in order, pipelined on one data-listener connection.

    Built by :meth:`BatchClient.pipelined_reader` for a
    :class:`~batchstash.client.iterate.BatchIterator`; :meth:`groups` is the stream.
    At least ``window`` groups are kept requested and not yet taken by the consumer, besides the
    one it is yielding, as on the threaded path; on a link whose bandwidth-delay product needs
    more, more (measured by :class:`~batchstash.client.inflight.InFlight`), up to
    ``in_flight_bytes`` of answers.

    Args:
        engine: the request path of the client (its URLs, timeouts and store check).
        split: the split.
        wanted: the attributes asked for (sorted), or ``None`` for all.
        stage: where batches are copied (in the reader thread), and into what buffers bodies
            are read (pinned for CUDA); ``None``: they stay where they were decoded.
        fingerprint: the epoch plan's store fingerprint.
        window: groups requested ahead.
        fallback: fetches a group through the engine, trying the given URL first (the one
            whose connection broke, so that a replica that is down is marked down there).
        build: the batches of a group's verified payloads.
        in_flight_bytes: the most answer bytes requested and not yet taken by the consumer
            when the link's product asks for more than ``window``.

    Attributes:
        pipelined: groups read from a pipelined connection so far.
        fallbacks: groups fetched by ``fallback`` instead.
        thread: the reader thread once :meth:`groups` started.
        url: the base URL whose data listener the latest connection went to (an iterator
            reads from one URL at a time; iterators start on the URLs in turn).
    """

    def __init__(
        self,
        engine: Engine,
        split: str,
        wanted: list[str] | None,
        stage: DeviceStage | None,
        fingerprint: str,
        window: int,
        *,
        fallback: Callable[[list[int], Endpoint | None], list[Batch]],
        build: Callable[[list[wire.Payload]], list[Batch]],
        in_flight_bytes: int = DEFAULT_IN_FLIGHT_BYTES,
    ) -> None:
        self.engine = engine
        self.fallback = fallback
        self.build = build
        self.split = split
        self.wanted = wanted
        self.stage = stage
        self.fingerprint = fingerprint
        self.window = max(1, window)
        self.sizer = InFlight(self.window, in_flight_bytes)
        self.path = f"/v1/splits/{quote(split, safe='')}/payloads"
        self.pipelined = 0
        self.fallbacks = 0
        self._buffers = engine.buffers or BufferPool()
        self._credits = threading.Semaphore(self.window)
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._sock_lock = threading.Lock()
        self.thread: threading.Thread | None = None  # the reader, once :meth:`groups` started
        self.url: str | None = None  # the URL whose data listener it reads from now
        self.stats: ReadStats | None = None  # where read timings go (the iterator's)
        self.waiting = False  # whether the consumer is blocked on the next answer

    # -- the consumer's side --------------------------------------------------------------------

    def groups(self, groups: Sequence[list[int]]) -> Generator[list[Batch], None, None]:
        """Yield the batches of each group, in order (an error is raised where its group is)."""
        results: queue.SimpleQueue[Any] = queue.SimpleQueue()
        thread = threading.Thread(
            target=self._run, args=(list(groups), results), name="batchstash-pipeline", daemon=True
        )
        self.thread = thread
        thread.start()
        try:
            while True:
                # the consumer waits on the link when it finds nothing (see _read_group)
                self.waiting = results.empty()
                item = results.get()
                self.waiting = False
                if item is _DONE:
                    return
                self._credits.release()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop.set()
            self._credits.release()  # wakes a reader waiting for a credit
            self._abort_socket()
            # an iterator dropped mid-epoch may be finalized by the garbage collector in any
            # thread, this reader's own included: it stops by itself then, it cannot join itself
            if threading.current_thread() is not thread and may_wait():
                thread.join(timeout=max(1.0, self.engine.timeout))

    def _widen(self, window: int) -> None:
        """Keep ``window`` groups in flight where that is more than now (the link holds them)."""
        if window > self.window:
            self._credits.release(window - self.window)
            self.window = window
            self.sizer.window = max(self.sizer.window, window)

    def _abort_socket(self) -> None:
        with self._sock_lock:
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a recv blocked in the reader
            except OSError:
                pass

    # -- the reader thread ----------------------------------------------------------------------

    def _run(self, groups: list[list[int]], results: queue.SimpleQueue[Any]) -> None:
        try:
            done = 0
            while done < len(groups) and not self._stop.is_set():
                endpoint = self._endpoint()
                if endpoint is not None:
                    done, broke = self._pipeline(endpoint, groups, done, results)
                    if not broke:
                        continue  # the server closed after a response: open another
                if done < len(groups):
                    self._acquire()
                    self.fallbacks += 1
                    results.put(self._fallback(groups[done], endpoint))
                    done += 1
        except _Stopped:
            pass
        except BaseException as exc:  # a bug here must reach the consumer, not vanish
            results.put(exc)
        finally:
            results.put(_DONE)

    def _acquire(self) -> None:
        while not self._credits.acquire(timeout=0.2):
            if self._stop.is_set():
                raise _Stopped
        if self._stop.is_set():
            raise _Stopped

    def _fallback(self, group: list[int], endpoint: Endpoint | None) -> list[Batch] | BaseException:
        """``group`` by the request path, first on the URL whose pipeline broke.

        So a replica that is down gets marked down there, as a failing request marks it.
        """
        try:
            batches = self.fallback(group, endpoint)
            return batches if self.stage is None else self.stage.copy(batches)
        except Exception as exc:
            return exc

    def _endpoint(self) -> Endpoint | None:
        """The first URL in route order whose data listener is usable now."""
        pool = self.engine.endpoints
        for endpoint in pool.route():
            if pool.data_client(endpoint) is not None:
                return endpoint
        return None

    def _request_bytes(self, endpoint: Endpoint, group: list[int]) -> bytes:
        params = {"ids": ",".join(map(str, group))}
        if self.wanted is not None:
            params["attributes"] = ",".join(self.wanted)
        data = endpoint.data_http
        assert data is not None
        url = data.base_url
        host = url.host if url.port is None else f"{url.host}:{url.port}"
        lines = [f"GET {self.path}?{urlencode(params)} HTTP/1.1", f"Host: {host}"]
        for name in ("accept", "accept-encoding", "authorization"):
            if name in data.headers:
                lines.append(f"{name.title()}: {data.headers[name]}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _connect(self, endpoint: Endpoint) -> socket.socket | None:
        data = endpoint.data_http
        assert data is not None
        url = data.base_url
        start = time.perf_counter()
        try:
            sock = socket.create_connection(
                (url.host, url.port or 80), timeout=min(DATA_CONNECT_TIMEOUT, self.engine.timeout)
            )
        except OSError as exc:
            self.engine.endpoints.data_failed(endpoint, f"{type(exc).__name__}: {exc}")
            return None
        self.sizer.connected(time.perf_counter() - start)  # a handshake: one round trip
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.engine.timeout)
        return sock

    def _pipeline(
        self,
        endpoint: Endpoint,
        groups: list[list[int]],
        done: int,
        results: queue.SimpleQueue[Any],
    ) -> tuple[int, bool]:
        """Pipeline ``groups[done:]`` on one new connection until it ends.

        Returns the index of the first group not delivered, and whether the connection broke
        (an error status, a failure), in which case that group goes to the fallback; ``False``:
        the server closed the connection after a good response.
        """
        sock = self._connect(endpoint)
        if sock is None:
            return done, True
        with self._sock_lock:
            self._sock = sock
        self.url = endpoint.url
        self.sizer.learn(endpoint.link)  # what this link measured before: no ramp again
        sent, pending, low = done, bytearray(), LowWater(sock)
        try:
            while done < len(groups):
                # keep the window full: wait for a credit only when nothing is in flight
                while sent < len(groups):
                    if sent == done:
                        self._acquire()
                    elif not self._credits.acquire(blocking=False):
                        break
                    sock.sendall(self._request_bytes(endpoint, groups[sent]))
                    sent += 1
                    self.engine.endpoints.count_request(endpoint)
                batches, closes = self._read_group(
                    sock, pending, low, endpoint, groups[done], results
                )
                if batches is None:
                    return done, True
                results.put(batches)
                self.pipelined += 1
                done += 1
                if closes:
                    return done, False
            return done, False
        except (OSError, ValueError) as exc:
            if self._stop.is_set():
                raise _Stopped from None
            logger.info(
                "%s: the pipelined connection to its data listener broke (%s); group %d of "
                "%d by the request path",
                endpoint.url,
                f"{type(exc).__name__}: {exc}",
                done + 1,
                len(groups),
            )
            return done, True
        finally:
            with self._sock_lock:
                self._sock = None
            sock.close()
            for _ in range(sent - done):  # requests sent whose answers are dropped
                self._credits.release()

    def _read_group(
        self,
        sock: socket.socket,
        pending: bytearray,
        low: LowWater,
        endpoint: Endpoint,
        group: list[int],
        results: queue.SimpleQueue[Any],
    ) -> tuple[list[Batch] | BaseException | None, bool]:
        """Read the answer to ``group``, and whether the server closes after it.

        ``results``: the answers delivered and not yet taken (none: the consumer is starved).

        The answer is its batches (or the error decoding raised), or ``None`` when it is not a
        plain ``200`` from batchstash (then the fallback fetches the group).
        """
        start = time.perf_counter()
        head = read_head(sock, pending, low)
        self.sizer.head()
        length = head.length
        if head.status != 200 or length is None or FINGERPRINT_HEADER.lower() not in head.headers:
            logger.debug(
                "%s: pipelined answer %d, the request path takes over", endpoint.url, head.status
            )
            return None, True
        pinned = self.stage is not None and self.stage.pinned
        zstd = head.headers.get("content-encoding", "identity").lower() == "zstd"
        buffer = self._buffers.get(length, pinned=pinned and not zstd)
        checker = FrameChecker()
        read_body(sock, pending, buffer, None if zstd else checker, low)
        received = time.perf_counter()
        # the bytes on the wire, compressed or not; starved: the consumer took every answer
        # and waits for this one (a trainer busy with its step is not; nor one waiting for
        # the first answer, as every consumer does)
        starved = self.pipelined > 0 and self.waiting and results.empty()
        self._widen(self.sizer.body(length, starved=starved))
        endpoint.link = self.sizer.link()
        self.engine.answered(endpoint)
        self.engine.endpoints.data_answered(endpoint)
        try:
            if zstd:  # decompressed into a pooled buffer (pinned for a device), checked there
                raw = list(head.headers.items())
                buffer, _ = decode_zstd(buffer, raw, self._buffers, checker, pinned)
            self.engine.identity.observe(head.headers[FINGERPRINT_HEADER.lower()], endpoint.url)
            payloads = decode_frames(
                buffer, checker, self.path, self.split, group, self.wanted, self.fingerprint
            )
            batches = self.build(payloads)
            decoded = time.perf_counter()
            if self.stats is not None:
                self.stats.read(received - start, length, decoded - received)
            if self.stage is not None:
                batches = self.stage.copy(batches)
                if self.stats is not None:
                    self.stats.copied(time.perf_counter() - decoded)
        except Exception as exc:
            return exc, head.closes
        return batches, head.closes
