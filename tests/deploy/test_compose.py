"""compose.yaml in a real engine: build, up, prime, train, both ports, restarts, down, down -v.

The tests of this module are steps of one stack, in order. The secret is a token that starts
with "-". The one change to the file as written: iris in batches of 5 (30 batches instead of
9), so a trainer's epochs last long enough for a server restart to land in one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
import torch

from batchstash.client import BatchClient

from .conftest import REPO, Stack, all_volumes, dash_token, make_secrets, override, run

pytestmark = pytest.mark.deploy

EPOCH_LINE = re.compile(r"epoch +(\d+)/(\d+)")
OPTIONS = '{"batch_size": 5}'


@pytest.fixture(scope="module")
def volumes_before() -> set[str]:
    return all_volumes()


@pytest.fixture(scope="module")
def stack(
    images: dict[str, str], tmp_path_factory: pytest.TempPathFactory, volumes_before: set[str]
) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("compose")
    token = dash_token()
    files = make_secrets(folder, {"stash_token": token})
    extra = override(
        folder, files, {"stash": {"environment": {"BATCHSTASH_DATASET_OPTIONS": OPTIONS}}}
    )
    stack = Stack("batchstash-deploy-test", [REPO / "compose.yaml", extra], ["trainer"], token)
    try:
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False)


def up_stash(stack: Stack) -> str:
    stack.compose("up", "-d", "--no-build", "stash", timeout=300)
    name = stack.container("stash")
    stack.wait_for(lambda: stack.healthy(name), "stash to be healthy", 180)
    return name


def train(stack: Stack, fault: str | None = None) -> str:
    """Run the trainer service as written; ``fault`` (a compose command) once it trains."""
    stack.compose("rm", "-f", "-s", "trainer", "prime")  # fresh containers, fresh logs
    stack.compose("up", "-d", "--no-build", "trainer", timeout=600)
    trainer = stack.container("trainer")
    if fault:
        stack.wait_for(lambda: EPOCH_LINE.search(stack.logs(trainer)) is not None, "an epoch", 300)
        stack.compose(*fault.split(), timeout=300)
    code = stack.wait_exit(trainer, 600)
    logs = stack.logs(trainer)
    assert code == 0, logs[-3000:]
    epochs = [(int(a), int(b)) for a, b in EPOCH_LINE.findall(logs)]
    assert epochs and epochs[-1][0] == epochs[-1][1] == 30, logs[-3000:]
    return logs


def exec_in(container: str, *argv: str) -> str:
    return run(["docker", "exec", container, *argv], 60).stdout


def open_files(container: str) -> tuple[int, int]:
    """PID 1's (the server's) open-files limits, from /proc inside the container."""
    limits = exec_in(container, "cat", "/proc/1/limits")
    (line,) = [row for row in limits.splitlines() if row.startswith("Max open files")]
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def test_up_prime_and_train(stack: Stack) -> None:
    name = up_stash(stack)
    # no ulimits in compose.yaml: `up` starts under the engine's limit, and the server runs with
    # its soft limit at the hard one (the engine's, or raised by the server at start)
    soft, hard = open_files(name)
    assert soft == hard >= 4096, (soft, hard)
    # the named volume took the image's /data owner: the server (uid 10001) writes there
    assert exec_in(name, "stat", "-c", "%u:%g", "/data").strip() == "10001:10001"
    logs = train(stack)  # depends on `prime`, which runs first and exits 0
    accuracy = float(re.findall(r"final test accuracy ([\d.]+)", logs)[-1])
    assert accuracy >= 0.9, logs[-2000:]
    prime = stack.container("prime")
    assert stack.inspect(prime)["State"]["ExitCode"] == 0
    assert "prime done" in stack.logs(prime)


def test_pull_through_both_ports_from_the_host(stack: Stack) -> None:
    token = stack.token
    with BatchClient("http://127.0.0.1:8000", token=token) as client:
        for split, info in client.splits()["splits"].items():
            ids = client.batch_ids(split)
            assert len(ids) == info["batches"] > 0
            got = list(client.iter_batches(split, epoch=0))
            assert sorted(b.id for b in got) == sorted(ids)
            for batch in got:
                path = f"/v1/splits/{split}/batches/{batch.id}"
                api = httpx.get(f"http://127.0.0.1:8000{path}", timeout=30)
                data = httpx.get(f"http://127.0.0.1:8001{path}", timeout=30)
                assert api.status_code == data.status_code == 200
                assert api.content == data.content  # byte-identical on both ports
                single = client.batch(split, batch.id)
                for name, tensor in single.attributes.items():
                    assert torch.equal(batch[name], tensor)
        # the API advertised its data listener, and the client on the host reached it there
        (state,) = client.endpoints()
        assert state.data_url == "http://127.0.0.1:8001" and not state.down


@pytest.mark.parametrize(
    "fault",
    ["restart stash", "up -d --no-build --no-deps --force-recreate stash"],
    ids=["restart", "recreate"],
)
def test_the_trainer_completes_across_a_server_outage(stack: Stack, fault: str) -> None:
    before = stack.inspect(stack.container("stash"))
    logs = train(stack, fault)
    after = stack.inspect(stack.container("stash"))
    if "recreate" in fault:
        assert after["Id"] != before["Id"]  # a new container on the same volume
    else:
        assert after["State"]["StartedAt"] != before["State"]["StartedAt"]
    assert "unreachable" in logs or "retrying" in logs, logs[-3000:]  # it met the outage


def test_down_and_up_keep_the_primed_store(stack: Stack) -> None:
    stack.compose("down", "--timeout", "10", timeout=300)
    assert stack.resources("container") == set()
    up_stash(stack)
    ready = httpx.get("http://127.0.0.1:8000/readyz", timeout=10).json()
    assert ready["primed"] is True and ready["priming"] is False
    with BatchClient("http://127.0.0.1:8000", token=stack.token) as client:
        assert client.status()["state"] != "running"
        assert len(list(client.iter_batches("train", epoch=1))) == 21


def test_down_v_leaves_nothing(stack: Stack, volumes_before: set[str]) -> None:
    stack.compose("down", "-v", "--remove-orphans", "--timeout", "10", timeout=300)
    for kind in ("container", "volume", "network"):
        assert stack.resources(kind) == set(), kind
    assert all_volumes() == volumes_before  # no anonymous volume either
