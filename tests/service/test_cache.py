"""The local cache of verified objects that a server keeps of a remote (S3) store."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from batchstash.service.api import create_app
from batchstash.service.config import build_settings
from batchstash.service.examples import iris
from batchstash.service.store import layout
from batchstash.service.store.cache import ObjectCache
from batchstash.service.store.s3 import S3Backend


def test_the_cache_is_bounded_least_recently_used_out(tmp_path) -> None:
    cache = ObjectCache(tmp_path / "c", max_bytes=10)
    cache.put("a", b"1234")
    cache.put("b", b"5678")
    assert bytes(cache.get("a")) == b"1234"  # a is now the most recent
    cache.put("c", b"9012")  # 12 bytes > 10: b goes
    assert cache.get("b") is None and bytes(cache.get("c")) == b"9012"
    assert cache.size == 8 and len(cache) == 2
    cache.put("big", b"x" * 11)  # larger than the whole cache: not kept
    assert cache.get("big") is None and cache.size == 8
    assert sorted(
        p.name for p in (tmp_path / "c").iterdir() if not p.name.startswith(".")
    ) == sorted([cache._name("a"), cache._name("c")])


def test_the_cache_starts_empty_and_names_keys_per_store(tmp_path) -> None:
    first = ObjectCache(tmp_path / "c", 100, namespace="s3://one")
    first.put("k", b"old")
    again = ObjectCache(tmp_path / "c", 100, namespace="s3://one")  # a restarted server
    assert again.get("k") is None and list((tmp_path / "c").iterdir()) == []
    other = ObjectCache(tmp_path / "d", 100, namespace="s3://two")
    assert other._name("k") != again._name("k")


class CountingS3(S3Backend):
    """Counts object reads of batch keys."""

    gets: list[str] = []

    def read_mapped_versioned(self, key):
        CountingS3.gets.append(key)
        return super().read_mapped_versioned(key)


def test_a_replica_serves_an_s3_store_from_its_warm_cache(s3_bucket, tmp_path, monkeypatch) -> None:
    url = s3_bucket + "/store"
    stash = iris(path=url)
    stash.prime()
    monkeypatch.setattr("batchstash.service.store.backend.BACKENDS", {"s3": CountingS3})
    CountingS3.gets.clear()
    settings = build_settings(data_dir=url, role="serve", cache_dir=str(tmp_path / "cache"))
    with TestClient(create_app(settings)) as client:
        cold = [client.get(f"/v1/splits/train/batches/{i}").content for i in range(6)]
        cold_gets = len(CountingS3.gets)
        warm = [client.get(f"/v1/splits/train/batches/{i}").content for i in range(6)]
        cache = client.app.state.batchstash.reader.cache
    assert cold == warm
    assert cold_gets == 12  # 6 batches x 2 groups, each fetched once
    assert len(CountingS3.gets) == cold_gets  # the warm pass read nothing from S3
    assert cache.hits == 12 and len(cache) == 12


def test_a_corrupt_object_is_never_cached(s3_bucket, tmp_path) -> None:
    url = s3_bucket + "/store"
    stash = iris(path=url)
    stash.prime()
    key = layout.group_key(stash.reader.info().generation, "dev", 0, "label")
    raw = bytearray(stash.backend.read(key))
    raw[-1] ^= 0x01
    stash.backend.write(key, [bytes(raw)])
    settings = build_settings(data_dir=url, role="serve", cache_dir=str(tmp_path / "cache"))
    with TestClient(create_app(settings)) as client:
        for _ in range(2):
            response = client.get("/v1/splits/dev/batches/0")
            assert (
                response.status_code == 500 and response.json()["error"]["code"] == "store_corrupt"
            )
        assert len(client.app.state.batchstash.reader.cache) == 0


@pytest.mark.parametrize("max_bytes", [0])
def test_no_cache_for_a_directory_or_when_switched_off(tmp_path, s3_bucket, max_bytes) -> None:
    local = build_settings(data_dir=str(tmp_path / "d"), role="serve")
    with TestClient(create_app(local)) as client:
        assert client.app.state.batchstash.reader.cache is None
    off = build_settings(data_dir=s3_bucket + "/x", role="serve", cache_max_bytes=max_bytes)
    with TestClient(create_app(off)) as client:
        assert client.app.state.batchstash.reader.cache is None


def test_one_request_for_several_batches_overlaps_its_s3_reads(s3_bucket, tmp_path, monkeypatch):
    import threading

    url = s3_bucket + "/store"
    iris(path=url).prime()
    threads: set[str] = set()

    class ThreadRecordingS3(S3Backend):
        def read_mapped_versioned(self, key):
            threads.add(threading.current_thread().name)
            return super().read_mapped_versioned(key)

    monkeypatch.setattr("batchstash.service.store.backend.BACKENDS", {"s3": ThreadRecordingS3})
    settings = build_settings(data_dir=url, role="serve", cache_max_bytes=0)
    with TestClient(create_app(settings)) as client:
        response = client.get("/v1/splits/train/payloads", params={"ids": "0,1,2,3,4,5"})
    assert response.status_code == 200
    assert len([t for t in threads if t.startswith("batchstash-read")]) >= 2
