"""A client of two read-only replicas loses one mid-epoch and still yields every batch once."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from batchstash.client import BatchClient

from .conftest import TOKEN, Server, start_server

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("pipelined", [True, False])
def test_an_epoch_survives_losing_a_replica(
    serve: Callable[..., Server], tmp_path: Path, pipelined: bool
) -> None:
    # iris in batches of 5: 21 train batches, primed in the server's own process
    primer = serve("--workers", "0", env={"BATCHSTASH_DATASET_OPTIONS": '{"batch_size": 5}'})
    with BatchClient(primer.url, token=TOKEN) as admin:
        admin.prime()
        assert admin.wait_for_prime(timeout=60, poll=0.1)["state"] == "done"

    def replica(name: str) -> Server:
        return start_server(primer.data_dir, tmp_path / f"{name}.log", "--role", "serve")

    with ThreadPoolExecutor(2) as pool:
        starting = [pool.submit(replica, name) for name in ("replica-a", "replica-b")]
        replicas = [future.result() for future in starting]
    victim, survivor = replicas
    try:
        with (
            BatchClient(primer.url) as reference,
            BatchClient(
                [victim.url, survivor.url], timeout=10, retries=3, backoff=0.05, cooldown=30
            ) as client,
        ):
            ids = reference.batch_ids("train")
            assert len(ids) == 21
            it = client.iter_batches("train", epoch=0, prefetch=2, pipelined=pipelined)
            got, before = [], {}
            for batch in it:
                got.append(batch)
                if len(got) == 3:
                    before = {state.url: state.requests for state in client.endpoints()}
                    if pipelined:  # the iterator reads from one replica: lose that one
                        assert it.reader is not None
                        if it.reader.url != victim.url:
                            victim, survivor = survivor, victim
                    victim.process.kill()  # by the PID of that server's Popen
                    victim.process.wait(timeout=10)

            assert before[victim.url] > 0
            if not pipelined:
                assert before[survivor.url] > 0  # requests spread over both replicas
            assert [batch.id for batch in got] == it.rank_ids()  # the plan's order
            assert sorted(batch.id for batch in got) == sorted(ids)  # each batch exactly once
            for batch in got:
                expected = reference.batch("train", batch.id)
                assert batch.data_point_ids == expected.data_point_ids
                assert sorted(batch.attributes) == sorted(expected.attributes)
                for name, tensor in expected.attributes.items():
                    assert torch.equal(batch[name], tensor), (batch.id, name)

            assert client.down_urls() == [victim.url]
            states = {state.url: state for state in client.endpoints()}
            assert states[victim.url].last_error is not None
            assert states[victim.url].cooldown > 0
            assert states[survivor.url].requests > before[survivor.url]
            assert not states[survivor.url].down
    finally:
        for server in replicas:
            server.stop()
