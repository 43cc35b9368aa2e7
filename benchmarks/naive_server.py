"""The naive baseline server: a minimal FastAPI endpoint returning payload bytes held in memory.

Run as ``python -m benchmarks.naive_server --port P --store NAME=DIR [--limit N]``: it loads the
first ``N`` stored batch files of each batchstash store directory (each one is a valid payload)
and serves them as ``GET /batches/{NAME}/{id}``. No verification, no metadata, no store checks:
what a server gets for just returning bytes, under the same uvicorn as ``batchstash serve``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import Response

__all__ = ["create_app", "load_payloads", "main"]


def load_payloads(store: Path, limit: int) -> dict[int, bytes]:
    """The stored payload bytes of the first ``limit`` batches of a store's ``train`` split."""
    generation = json.loads((store / "store.json").read_text())["generation"]
    split = store / "batches" / generation / "train"
    ids = sorted(int(p.name) for p in split.iterdir() if p.is_dir())[:limit]
    return {i: next((split / str(i)).glob("*.safetensors")).read_bytes() for i in ids}


def create_app(payloads: dict[str, dict[int, bytes]]) -> FastAPI:
    """The app serving ``payloads[name][id]``."""
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness."""
        return {"status": "ok"}

    @app.get("/batches/{name}/{batch_id}")
    async def batch(name: str, batch_id: int) -> Response:
        """One payload, straight from memory."""
        try:
            body = payloads[name][batch_id]
        except KeyError:
            raise HTTPException(404) from None
        return Response(body, media_type="application/octet-stream")

    return app


def main() -> None:
    """Load the payloads and serve them on 127.0.0.1 until terminated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", action="append", default=[], help="NAME=DIR, repeatable")
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args()
    payloads = {}
    for spec in args.store:
        name, _, directory = spec.partition("=")
        payloads[name] = load_payloads(Path(directory), args.limit)
    uvicorn.run(create_app(payloads), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
