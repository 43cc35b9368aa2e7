"""An iteration's device copies: Batch.to for CPU targets; for CUDA a side stream, pinned
receive buffers, an event the consumer's stream waits for and a fence on the buffer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from batchstash.client import BatchClient
from batchstash.client.staging import DeviceStage

from .fakeserver import FakeServer, make_client, make_tensors
from .test_pipeline import Stack

no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack(12, rows=4096)  # 4096 x 3 floats: bodies big enough to be pooled
    yield s
    s.close()


def _check(batches: list, ids: list[int]) -> None:
    assert [b.id for b in batches] == ids
    for batch in batches:
        expected = make_tensors("train", batch.id, rows=4096)
        assert torch.equal(batch["x"].cpu(), expected["x"])
        assert torch.equal(batch["label"].cpu(), expected["label"])


def test_a_cpu_stage_is_batch_to() -> None:
    client = make_client(FakeServer({"train": range(3)}))
    stage = DeviceStage("cpu", client.buffers)
    decoded = client.batches("train", [0, 2])
    moved = stage.copy(decoded)
    assert not stage.pinned and stage.stream is None
    assert [b.state_name for b in moved] == ["memory copied"] * 2
    assert all(m["x"].data_ptr() == d["x"].data_ptr() for m, d in zip(moved, decoded, strict=True))
    assert stage.hand_over(moved[0]) is moved[0]
    meta = DeviceStage("meta").copy(decoded)
    assert meta[0]["x"].device.type == "meta"


@pytest.mark.parametrize("pipelined", [True, False])
def test_iterating_to_the_cpu_keeps_the_received_tensors(stack: Stack, pipelined: bool) -> None:
    with stack.client() as client:
        it = client.iter_batches(
            "train", shuffle=False, prefetch=6, device="cpu", pipelined=pipelined
        )
        batches = list(it)
    assert (it.reader is not None) == pipelined
    assert [b.state_name for b in batches] == ["memory copied"] * 12
    _check(batches, list(range(12)))


# -- CUDA -------------------------------------------------------------------------------------


def _pin_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    pin = torch.Tensor.pin_memory

    def spy(self: torch.Tensor, *args: object) -> torch.Tensor:
        calls.append(self.numel())
        return pin(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.Tensor, "pin_memory", spy)
    return calls


@pytest.mark.cuda
@no_cuda
def test_a_cuda_epoch_is_received_pinned_and_copied_on_a_side_stream(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    pins = _pin_calls(monkeypatch)
    with stack.client() as client:
        pool = client.buffers
        assert pool is not None
        pool.min_bytes = 0  # every body pooled (and so pinned)
        it = client.iter_batches("train", shuffle=False, prefetch=6, device="cuda")
        batches = list(it)
        torch.cuda.current_stream().synchronize()
    assert it.reader is not None and it.reader.pipelined == 12
    assert all(b["x"].is_cuda and b["label"].is_cuda for b in batches)
    _check(batches, list(range(12)))
    assert pins == []  # no pin_memory() copy: the bodies landed in pinned memory
    assert pool._pinned  # the bodies' buffers (the JSON answers' are pageable)
    assert it._stage is not None and it._stage.stream != torch.cuda.current_stream()


@pytest.mark.cuda
@no_cuda
def test_the_consumer_stream_waits_for_a_slow_copy(stack: Stack) -> None:
    with stack.client() as client:
        stage = DeviceStage("cuda", client.buffers)
        decoded = client.batches("train", [3])
        torch.cuda.synchronize()
        with torch.cuda.stream(stage.stream):
            torch.cuda._sleep(200_000_000)  # holds the side stream about 0.1 s
        [moved] = stage.copy(decoded)
        stage.hand_over(moved)
        # queued on the current stream after the wait: it sees the copied values
        total = moved["x"].sum()
        torch.cuda.current_stream().synchronize()
    assert torch.allclose(total.cpu(), make_tensors("train", 3, rows=4096)["x"].sum())


@pytest.mark.cuda
@no_cuda
def test_a_pinned_buffer_is_not_refilled_before_its_copy_is_done() -> None:
    client = make_client(FakeServer({"train": range(2)}))
    pool = client.buffers
    assert pool is not None
    stage = DeviceStage("cuda", pool)
    buffer = pool.get(1 << 20, pinned=True)
    host = torch.frombuffer(memoryview(buffer), dtype=torch.uint8)  # type: ignore[arg-type]
    assert host.is_pinned()
    with torch.cuda.stream(stage.stream):
        torch.cuda._sleep(200_000_000)
        host.to("cuda", non_blocking=True)
        done = torch.cuda.Event()
        done.record(stage.stream)
    assert pool.fence([host], done) == 1
    del host, buffer
    assert pool.get(1 << 20, pinned=True) is not None and pool.reused == 0  # still copying
    done.synchronize()
    pool.get(1 << 20, pinned=True)
    assert pool.reused == 1


def test_a_client_without_its_own_transport_still_iterates_to_the_cpu() -> None:
    client: BatchClient = make_client(FakeServer({"train": range(4)}))
    batches = list(client.iter_batches("train", shuffle=False, prefetch=2, device="cpu"))
    assert [b.id for b in batches] == [0, 1, 2, 3]
    assert all(b.state_name == "memory copied" for b in batches)
