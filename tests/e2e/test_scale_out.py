"""Scale-out on S3: a prime job and two read-only replicas on one bucket (moto on loopback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from batchstash.client import BatchClient
from batchstash.service.examples import iris

from .conftest import REPO_ROOT, start_server

CLI = str(Path(sys.executable).with_name("batchstash"))
OPTIONS = '{"batch_size": 5}'

pytestmark = pytest.mark.slow


def test_two_replicas_on_s3_serve_a_local_prime_s_bytes_and_survive_losing_one(
    s3_bucket: str, tmp_path: Path
) -> None:
    store = f"{s3_bucket}/iris"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSTASH_")}
    environ.update(PYTHONPATH=str(REPO_ROOT), BATCHSTASH_DATASET_OPTIONS=OPTIONS)
    job = subprocess.run(
        [CLI, "serve", "--role", "prime", "--data-dir", store, "--workers", "2"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=180,
    )
    assert job.returncode == 0, job.stderr
    local = iris(path=str(tmp_path / "local"), batch_size=5)  # the same job on a directory
    assert local.prime() == 30

    replicas = [
        start_server(
            tmp_path / f"r{i}",
            tmp_path / f"r{i}.log",
            "--role",
            "serve",
            "--data-dir",
            store,
            "--dataset",
            "no_such_module:factory",
        )
        for i in (1, 2)
    ]
    try:
        for split, counts in local.split_counts().items():
            for batch_id in range(counts["batches"]):
                expected = b"".join(bytes(c) for c in local.payload(split, batch_id))
                for replica in replicas:
                    response = httpx.get(f"{replica.url}/v1/splits/{split}/batches/{batch_id}")
                    assert response.status_code == 200
                    assert response.content == expected, (replica.url, split, batch_id)

        seen: list[int] = []
        with BatchClient([r.url for r in replicas], retries=3, backoff=0.05) as client:
            plan = client.iter_batches("train", epoch=1, shuffle=True, prefetch=2)
            for batch in plan:
                seen.append(batch.id)
                if len(seen) == 3:
                    replicas[0].process.kill()  # a replica dies mid-epoch
                    replicas[0].process.wait(timeout=10)
                reference = local.load("train", batch.id)
                assert torch.equal(batch["flower_dims"], reference["flower_dims"])
                assert list(batch.data_point_ids) == list(reference.data_point_ids)
            assert client.down_urls() == [replicas[0].url]
        assert sorted(seen) == list(range(21)) and len(seen) == 21  # every batch exactly once
    finally:
        for replica in replicas:
            replica.stop()
