"""compose.scale.yaml in a real engine: priming on Ray into S3, replicas behind nginx, one killed.

The stack as written (S3 stand-in under the seaweedfs tag where ../shared/tools/docker-sandbox.sh
made one), in steps of one project. Its secrets are fresh ones in a temporary directory; the one
change: iris in batches of 1 (150 batches), so the Ray tasks spread over the nodes and an epoch
is long enough to lose a replica in.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator

import httpx
import pytest
import torch

from batchstash.client import Batch, BatchClient

from .conftest import REPO, Stack, all_volumes, dash_token, make_secrets, override, run

pytestmark = pytest.mark.deploy

OPTIONS = '{"batch_size": 1}'
TASK = ":task_name:encode_chunk_task"  # Ray's marker in a worker's log when a task starts


@pytest.fixture(scope="module")
def volumes_before() -> set[str]:
    return all_volumes()


@pytest.fixture(scope="module")
def stack(
    images: dict[str, str], tmp_path_factory: pytest.TempPathFactory, volumes_before: set[str]
) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("scale")
    token = dash_token()
    files = make_secrets(
        folder,
        {
            "stash_token": token,
            "s3_access_key_id": "stash" + secrets.token_hex(8),
            "s3_secret_access_key": secrets.token_urlsafe(30),
            "ray_token": secrets.token_hex(32),
        },
    )
    options = {"environment": {"BATCHSTASH_DATASET_OPTIONS": OPTIONS}}
    extra = override(folder, files, {"prime": options, "stash": options})
    stack = Stack("batchstash-deploy-scale", [REPO / "compose.scale.yaml", extra], token=token)
    try:
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False)


def test_up_primes_on_ray_with_two_worker_containers(stack: Stack) -> None:
    stack.compose("up", "-d", "--no-build", timeout=900)
    prime = stack.container("prime")
    code = stack.wait_exit(prime, 900)
    logs = stack.logs(prime)
    assert code == 0, logs[-4000:]
    assert "with RayExecutor" in logs and "prime done: 150 batches" in logs, logs[-4000:]
    # each worker container ran priming tasks (its Ray stays up a while after the head exits)
    for index in (1, 2):
        worker = stack.container("ray-worker", index)
        found = run(
            ["docker", "exec", worker, "sh", "-c", "cat /tmp/ray/session_latest/logs/worker-*.out"],
            60,
            check=False,
        )
        assert found.stdout.count(TASK) >= 1, f"no priming task ran on {worker}"
    stack.wait_for(lb_answers, "the balancer to answer on :8000", 120)
    lb = stack.container("lb")
    # its healthcheck runs wget, which a stand-in nginx image may lack (docker-sandbox.sh's)
    if run(["docker", "exec", lb, "sh", "-c", "command -v wget"], 60, check=False).returncode == 0:
        stack.wait_for(lambda: stack.healthy(lb), "lb to be healthy", 120)


def lb_answers() -> bool:
    try:
        return httpx.get("http://127.0.0.1:8000/readyz", timeout=5).json().get("primed") is True
    except (httpx.HTTPError, ValueError):
        return False


def nginx_upstreams(stack: Stack, port: int) -> set[str]:
    """The replica addresses nginx's access log shows for requests that answered 200."""
    lines = stack.logs(stack.container("lb")).splitlines()
    found = set()
    for line in lines:
        m = re.search(r"upstream=(\S+):(\d+)\s+upstream_status=200\b", line)
        if m and int(m.group(2)) == port:
            found.add(m.group(1))
    return found


def test_both_ports_through_the_balancer_from_the_host(stack: Stack) -> None:
    with BatchClient("http://127.0.0.1:8000", token=stack.token) as client:
        for split in ("train", "dev", "test"):
            got = list(client.iter_batches(split, epoch=0))
            assert sorted(b.id for b in got) == client.batch_ids(split)
        for batch_id in client.batch_ids("test"):
            path = f"/v1/splits/test/batches/{batch_id}"
            api = httpx.get(f"http://127.0.0.1:8000{path}", timeout=30)
            data = httpx.get(f"http://127.0.0.1:8001{path}", timeout=30)
            assert api.status_code == data.status_code == 200 and api.content == data.content
        (state,) = client.endpoints()  # the balancer's data port, as the replicas advertise it
        assert state.data_url == "http://127.0.0.1:8001" and not state.down
    assert len(nginx_upstreams(stack, 8000)) == 2  # both replicas answered the API
    assert len(nginx_upstreams(stack, 8001)) == 2  # ... and the data port


def same(batch: Batch, expected: Batch) -> bool:
    return batch.data_point_ids == expected.data_point_ids and all(
        torch.equal(batch[name], tensor) for name, tensor in expected.attributes.items()
    )


def test_an_epoch_survives_a_replica_killed_mid_epoch(stack: Stack) -> None:
    with BatchClient("http://127.0.0.1:8000", token=stack.token) as client:
        ids = client.batch_ids("train")
        reference = {b.id: b for b in client.iter_batches("train", epoch=0)}
        assert sorted(reference) == sorted(ids) and len(ids) == 105
        victim = stack.container("stash", 1)
        got = []
        for batch in client.iter_batches("train", epoch=1, prefetch=2, batches_per_request=4):
            got.append(batch)
            if len(got) == 20:
                run(["docker", "kill", victim], 60)
            time.sleep(0.02)  # a trainer's step: the kill lands well inside the epoch
        assert sorted(b.id for b in got) == sorted(ids)  # every batch, exactly once
        assert all(same(b, reference[b.id]) for b in got)
    assert stack.inspect(victim)["State"]["Status"] != "running" or (
        stack.inspect(victim)["RestartCount"] > 0  # unless-stopped may bring it back
    )


def test_down_v_leaves_nothing(stack: Stack, volumes_before: set[str]) -> None:
    stack.compose("down", "-v", "--remove-orphans", "--timeout", "10", timeout=300)
    for kind in ("container", "volume", "network"):
        assert stack.resources(kind) == set(), kind
    assert all_volumes() == volumes_before  # no anonymous volume from any Ray or job container
