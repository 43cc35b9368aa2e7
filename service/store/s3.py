"""The S3 backend (``s3://bucket/prefix``) on obstore: any S3-compatible object store.

Endpoint and credentials come from the standard AWS environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``). A PUT is all or nothing, so
there is no temp file and no rename; ``create`` is ``If-None-Match: *`` and ``replace`` is
``If-Match: <etag>``. :meth:`S3Backend.check` finds out once whether the store enforces them
(some S3-compatible servers accept the headers and ignore them). Transient errors (timeouts,
500/503 SlowDown) are retried by obstore with exponential backoff.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from batchstash.client import InvalidRequestError, StoreError

from .backend import NoSuchKey, StoreBackend

__all__ = ["S3Backend"]

logger = logging.getLogger(__name__)

_DELETE_BATCH = 1000


def _obstore() -> Any:
    try:
        import obstore
    except ImportError:
        raise StoreError("s3:// stores need the s3 extra: pip install 'batchstash[s3]'") from None
    return obstore


class S3Backend(StoreBackend):
    """Objects in one bucket under one prefix.

    A reader checks the records' ETags at most every :attr:`records_refresh_s` seconds, not once
    a request.

    Args:
        url: ``s3://bucket`` or ``s3://bucket/prefix``.
        timeout_s: the limit of one request (retries come on top, up to ``retry_s`` in all).
        retry_s: how long transient errors are retried with backoff.
    """

    records_refresh_s = 2.0
    concurrent_reads = 8

    def __init__(self, url: str, timeout_s: float = 30.0, retry_s: float = 60.0) -> None:
        self.url = url
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise InvalidRequestError(f"store URL {url!r}: expected s3://bucket[/prefix]")
        obstore = _obstore()
        from obstore.store import S3Store

        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client: dict[str, Any] = {
            "timeout": timedelta(seconds=timeout_s),
            "connect_timeout": timedelta(seconds=5),
        }
        if endpoint and endpoint.startswith("http://"):
            client["allow_http"] = True
        retry = {
            "max_retries": 10,
            "retry_timeout": timedelta(seconds=retry_s),
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=5),
                "base": 2,
            },
        }
        self.prefix = parts.path.strip("/")
        self._obstore = obstore
        self._errors = obstore.exceptions
        self.store = S3Store(
            parts.netloc,
            prefix=self.prefix or None,
            client_options=client,  # type: ignore[arg-type]
            retry_config=retry,  # type: ignore[arg-type]
        )
        #: whether the store enforces conditional writes (known after :meth:`check`)
        self.conditional: bool | None = None

    def _get(self, key: str) -> Any:
        try:
            return self._obstore.get(self.store, key)
        except (self._errors.NotFoundError, FileNotFoundError):
            raise NoSuchKey(key) from None

    def read(self, key: str) -> bytearray:
        """The object's bytes in a writable buffer (one copy of what was received)."""
        return bytearray(memoryview(self._get(key).bytes()))

    def read_mapped(self, key: str) -> memoryview:
        """The object's bytes as received (read-only, no copy)."""
        return memoryview(self._get(key).bytes())

    def read_mapped_versioned(self, key: str) -> tuple[memoryview, str]:
        """The bytes as received and their ETag, from one GET."""
        result = self._get(key)
        return memoryview(result.bytes()), str(result.meta["e_tag"])

    def read_versioned(self, key: str) -> tuple[bytearray, str]:
        """The bytes and their ETag, from one GET."""
        result = self._get(key)
        data = bytearray(memoryview(result.bytes()))
        return data, str(result.meta["e_tag"])

    def version(self, key: str) -> str | None:
        """The object's ETag (``None`` when it is absent)."""
        try:
            return str(self._obstore.head(self.store, key)["e_tag"])
        except (self._errors.NotFoundError, FileNotFoundError):
            return None

    def write(self, key: str, chunks: Iterable[bytes | memoryview]) -> None:
        """One PUT (all or nothing)."""
        self._obstore.put(self.store, key, b"".join(chunks))

    def create(self, key: str, data: bytes) -> bool:
        """A PUT with ``If-None-Match: *``."""
        try:
            self._obstore.put(self.store, key, data, mode="create")
        except self._errors.AlreadyExistsError:
            return False
        except self._errors.PreconditionError:
            return False
        return True

    def replace(self, key: str, data: bytes, version: str) -> bool:
        """A PUT with ``If-Match: <version>``."""
        try:
            self._obstore.put(self.store, key, data, mode={"e_tag": version})
        except (
            self._errors.PreconditionError,
            self._errors.NotFoundError,
            FileNotFoundError,
            self._errors.AlreadyExistsError,
        ):
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        """Every object under ``prefix`` (a PUT is atomic: no object is ever half there)."""
        for chunk in self._obstore.list(self.store, prefix or None, chunk_size=1000):
            for meta in chunk:
                yield str(meta["path"])

    def list_versions(self, prefix: str = "") -> Iterator[tuple[str, int, str]]:
        """Keys under ``prefix`` with the size and ETag the listing gives (no HEAD, no GET)."""
        for chunk in self._obstore.list(self.store, prefix or None, chunk_size=1000):
            for meta in chunk:
                tag = meta.get("e_tag")
                if tag is not None:
                    yield str(meta["path"]), int(meta["size"]), str(tag)
                else:  # a store whose listing has no ETags
                    version = self.version(str(meta["path"]))
                    if version is not None:
                        yield str(meta["path"]), int(meta["size"]), version

    def delete(self, key: str) -> None:
        """DELETE (an absent object is fine)."""
        try:
            self._obstore.delete(self.store, key)
        except (self._errors.NotFoundError, FileNotFoundError):
            pass

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix``, in batches."""
        batch: list[str] = []
        for key in self.list(prefix):
            batch.append(key)
            if len(batch) >= _DELETE_BATCH:
                self._obstore.delete(self.store, batch)
                batch = []
        if batch:
            self._obstore.delete(self.store, batch)

    def check(self) -> None:
        """The bucket answers, and whether it enforces conditional writes (logged)."""
        probe = f".batchstash-probe-{secrets.token_hex(6)}"
        try:
            first = self.create(probe, b"1")
            second = self.create(probe, b"2")
            version = self.version(probe)
            stale = self.replace(probe, b"3", '"not-the-etag"')
            fresh = version is not None and self.replace(probe, b"4", version)
        except self._errors.BaseError as exc:
            raise StoreError(f"store {self.url}: {type(exc).__name__}: {exc}") from None
        finally:
            try:
                self.delete(probe)
            except self._errors.BaseError:
                pass
        self.conditional = first and not second and not stale and fresh
        if not self.conditional:
            logger.warning(
                "store %s does not enforce conditional writes (If-None-Match / If-Match): "
                "run a single priming role against it",
                self.url,
            )
