"""Remote trainers against a real server: epoch plans across ranks, resume, DataLoader, demo."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from batchstash.client import BatchClient, BatchDataset, PlanError

from .conftest import REPO_ROOT, Server

pytestmark = pytest.mark.slow


def ids_of(client: BatchClient, **kwargs: object) -> list[int]:
    return [batch.id for batch in client.iter_batches("train", **kwargs)]  # type: ignore[arg-type]


def test_two_ranks_two_epochs_cover_each_batch_once(primed_iris: Server) -> None:
    with BatchClient(primed_iris.url) as client:
        all_ids = client.batch_ids("train")
        assert len(all_ids) == 6
        orders = []
        for epoch in range(2):
            per_rank = [ids_of(client, epoch=epoch, rank=r, world_size=2, seed=7) for r in range(2)]
            assert len(per_rank[0]) == len(per_rank[1]) == 3
            assert Counter(per_rank[0] + per_rank[1]) == Counter(all_ids)
            orders.append(per_rank)
        assert orders[0] != orders[1]  # each epoch is reshuffled
        again = [ids_of(client, epoch=1, rank=r, world_size=2, seed=7) for r in range(2)]
        assert again == orders[1]  # and deterministic


def test_uneven_ranks_get_equal_lengths_and_miss_nothing(primed_iris: Server) -> None:
    with BatchClient(primed_iris.url) as client:
        per_rank = [ids_of(client, epoch=0, rank=r, world_size=4) for r in range(4)]
    assert {len(ids) for ids in per_rank} == {2}
    assert set().union(*map(set, per_rank)) == set(range(6))


@pytest.mark.parametrize("new_world", [2, 3, 1])
def test_resume_mid_epoch_without_repeat_or_skip(primed_iris: Server, new_world: int) -> None:
    with BatchClient(primed_iris.url) as client:
        first = [client.iter_batches("train", epoch=3, rank=r, world_size=2) for r in range(2)]
        read = [next(it).id for it in first]  # both ranks take one batch, in lockstep
        state = first[0].state_dict()
        for it in first:
            it.close()
        resumed = [
            client.iter_batches("train", epoch=3, rank=r, world_size=new_world, state=state)
            for r in range(new_world)
        ]
        rest = [[b.id for b in it] for it in resumed]
    assert len({len(r) for r in rest}) == 1  # equal lengths after the re-plan
    seen = read + [i for r in rest for i in r]
    assert set(seen) == set(range(6))
    if new_world in (1, 2):  # 4 batches left divide evenly: exactly once each
        assert sorted(seen) == list(range(6))


def test_resume_against_a_changed_store_is_refused(primed_iris: Server) -> None:
    with BatchClient(primed_iris.url) as client:
        it = client.iter_batches("train", epoch=0)
        next(it)
        state = {**it.state_dict(), "fingerprint": "0" * 32}
        it.close()
        with pytest.raises(PlanError, match="store changed"):
            client.iter_batches("train", epoch=0, state=state)


def test_dataloader_with_two_workers_reads_each_batch_once(primed_iris: Server) -> None:
    dataset = BatchDataset(primed_iris.url, "train", epoch=0)
    loader = DataLoader(dataset, batch_size=None, num_workers=2)
    batches = list(loader)
    assert sorted(b.id for b in batches) == list(range(6))
    points = [p for b in batches for p in b.data_point_ids]
    assert len(points) == len(set(points)) == 105
    as_dicts = list(
        DataLoader(
            BatchDataset(primed_iris.url, "train", as_dict=True), batch_size=None, num_workers=2
        )
    )
    assert sum(len(d["label"]) for d in as_dicts) == 105
    assert all(d["flower_dims"].dtype == torch.float32 for d in as_dicts)


def test_demo_trainer_reaches_ninety_percent_on_iris(primed_iris: Server) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "batchstash.client.demo", "--url", primed_iris.url],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    accuracies = [
        float(a)
        for a in re.findall(r"test acc(?:uracy)?[ =:]+([0-9.]+)", result.stdout, flags=re.I)
    ]
    assert accuracies, result.stdout
    assert accuracies[-1] >= 0.9, result.stdout
