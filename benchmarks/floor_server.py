"""The I/O floor baseline: batchstash's read API served by the least Python that can serve it.

Run as ``python -m benchmarks.floor_server --port P --store DIR --split train``: a standard
library ``ThreadingHTTPServer`` (HTTP/1.1 keep-alive, a thread a connection) that answers the
requests ``BatchClient.iter_batches`` makes, from a primed batchstash store:

* ``GET /v1/splits/{split}/batches`` and ``GET /v1/metadata``: the JSON the real server gave,
  captured once at start-up from ``--from-url`` (so the unchanged client accepts the answers);
* ``GET /v1/splits/{split}/payloads?ids=...``: for each id its stored file, mapped and sent with
  ``sendall`` (blocking, the GIL released for the whole copy), length-prefixed like the real
  endpoint; ``GET /v1/splits/{split}/batches/{id}``: one file as it is.

No verification, no freshness check, no framework, no event loop: what any Python server over
these files would pay at least. The same client against it and against ``batchstash serve``
separates the server's cost from the client's.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from batchstash.client.frames import FRAMES_MEDIA_TYPE, frame_prefix

__all__ = ["main", "make_handler"]


def _send_file(sock: Any, path: Path) -> None:
    with path.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        with mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ) as mapped:
            sock.sendall(mapped)


def make_handler(store: Path, split: str, answers: dict[str, bytes]) -> type:
    """A request handler class serving ``store``'s ``split`` and the captured JSON ``answers``."""
    generation = json.loads((store / "store.json").read_text())["generation"]
    root = store / "batches" / generation / split
    files = {int(d.name): next(d.glob("*.safetensors")) for d in root.iterdir() if d.is_dir()}
    frames_path, one_path = f"/v1/splits/{split}/payloads", f"/v1/splits/{split}/batches/"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
            """Quiet: a benchmark logs nothing per request."""

        def _reply(self, status: int, body: bytes, media_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            """Answer the captured JSON, or a payloads request from the store's files."""
            url = urlsplit(self.path)
            if url.path in answers:
                self._reply(200, answers[url.path])
                return
            framed = url.path == frames_path
            try:
                if framed:
                    ids = [int(i) for i in parse_qs(url.query)["ids"][0].split(",")]
                elif url.path.startswith(one_path):
                    ids = [int(url.path[len(one_path) :])]
                else:
                    raise KeyError(url.path)
                paths = [files[i] for i in ids]
            except (KeyError, ValueError):
                self._reply(404, b'{"message": "not found"}')
                return
            sizes = [p.stat().st_size for p in paths]
            self.send_response(200)
            media_type = FRAMES_MEDIA_TYPE if framed else "application/octet-stream"
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(sum(sizes) + (8 * len(sizes) if framed else 0)))
            self.end_headers()
            self.wfile.flush()
            for path, size in zip(paths, sizes, strict=True):
                if framed:
                    self.connection.sendall(frame_prefix(size))
                _send_file(self.connection, path)

    return Handler


def main() -> None:
    """Capture the real server's JSON answers, then serve until terminated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--from-url", required=True, help="the batchstash server on that store")
    args = parser.parse_args()
    answers = {"/healthz": b'{"status": "ok"}'}
    with httpx.Client(base_url=args.from_url, timeout=60.0) as http:
        for path in ("/v1/metadata", f"/v1/splits/{args.split}/batches"):
            answers[path] = json.dumps(http.get(path).raise_for_status().json()).encode()
    handler = make_handler(args.store, args.split, answers)
    with ThreadingHTTPServer(("127.0.0.1", args.port), handler) as server:
        server.daemon_threads = True
        server.serve_forever()


if __name__ == "__main__":
    main()
