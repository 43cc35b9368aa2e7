"""The ``X-Batchstash-*`` response headers a server sends and a client reads."""

from __future__ import annotations

__all__ = ["DATA_PORT_HEADER", "DECODED_LENGTH_HEADER", "FINGERPRINT_HEADER", "PRIME_HEADER"]

FINGERPRINT_HEADER = "X-Batchstash-Fingerprint"
"""The store fingerprint a batch, metadata or split answer comes from."""
DATA_PORT_HEADER = "X-Batchstash-Data-Port"
"""The port of the server's data listener (the same batch URLs, less CPU per GB)."""
PRIME_HEADER = "X-Batchstash-Prime"
"""On ``503 not_primed``: the store's prime job, ``{"state", "done", "total", "role"}``."""
DECODED_LENGTH_HEADER = "X-Batchstash-Decoded-Length"
"""With ``Content-Encoding: zstd``: the body's length once decompressed (the receive buffer)."""
