"""copy_to_device and Batch.to: no copy for a tensor already on the target; CUDA pins and copies."""

from __future__ import annotations

import pytest
import torch

from batchstash.client import BatchClient, copy_to_device, wire

from .fakeserver import FakeServer, make_client, make_tensors

no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def client() -> BatchClient:
    return make_client(FakeServer({"train": range(4)}))


def test_cpu_tensors_are_not_copied_for_cpu() -> None:
    tensors = {"x": torch.arange(6.0).view(2, 3), "y": torch.tensor([1, 2])}
    for device in ("cpu", torch.device("cpu"), "cpu:0"):
        placed = copy_to_device(tensors, device)
        assert placed is not tensors and list(placed) == ["x", "y"]
        assert all(placed[n].data_ptr() == t.data_ptr() for n, t in tensors.items())
        assert all(placed[n] is t for n, t in tensors.items())


def test_other_devices_are_copied() -> None:
    placed = copy_to_device({"x": torch.ones(2)}, "meta")
    assert placed["x"].device.type == "meta"


def test_batch_to_cpu_shares_the_decoded_tensors(client: BatchClient) -> None:
    decoded = client.batch("train", 2)
    copied = decoded.to("cpu")
    assert (decoded.state_name, copied.state_name) == ("decoded", "memory copied")
    assert all(copied[n].data_ptr() == decoded[n].data_ptr() for n in decoded)


def test_client_device_cpu_keeps_the_received_tensors(
    client: BatchClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[wire.Payload] = []
    decode = wire.decode

    def spy(buffer: object, **kwargs: object) -> wire.Payload:
        payload = decode(buffer, **kwargs)  # type: ignore[arg-type]
        decoded.append(payload)
        return payload

    monkeypatch.setattr(wire, "decode", spy)
    batch = client.batch("train", 1, device="cpu")
    [payload] = decoded
    assert batch.state_name == "memory copied"
    assert {n: t.data_ptr() for n, t in batch.attributes.items()} == {
        n: t.data_ptr() for n, t in payload.tensors.items()
    }
    assert torch.equal(batch["x"], make_tensors("train", 1)["x"])
    batches = client.batches("train", [0, 3], device="cpu")
    assert [b["x"].data_ptr() for b in batches] == [p.tensors["x"].data_ptr() for p in decoded[1:]]


@pytest.mark.cuda
@no_cuda
def test_cuda_copies_are_staged_in_pinned_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    pinned: list[torch.Tensor] = []
    pin = torch.Tensor.pin_memory

    def spy(self: torch.Tensor, *args: object) -> torch.Tensor:
        out = pin(self, *args)  # type: ignore[arg-type]
        pinned.append(out)
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", spy)
    host = {"x": torch.arange(6.0).view(2, 3), "y": torch.tensor([1, 2])}
    placed = copy_to_device(host, "cuda")
    torch.cuda.synchronize()
    assert [t.is_pinned() for t in pinned] == [True, True]
    for name, tensor in host.items():
        assert placed[name].is_cuda
        assert torch.equal(placed[name].cpu(), tensor)
        assert placed[name].data_ptr() != tensor.data_ptr()


@pytest.mark.cuda
@no_cuda
def test_cuda_tensors_already_there_are_not_copied() -> None:
    on_gpu = {"x": torch.arange(4.0, device="cuda")}
    index = torch.cuda.current_device()
    for device in ("cuda", f"cuda:{index}", torch.device("cuda", index)):
        assert copy_to_device(on_gpu, device)["x"].data_ptr() == on_gpu["x"].data_ptr()
    back = copy_to_device(on_gpu, "cpu")["x"]
    assert back.device.type == "cpu" and torch.equal(back, on_gpu["x"].cpu())


@pytest.mark.cuda
@no_cuda
def test_batch_to_cuda_still_copies(client: BatchClient) -> None:
    decoded = client.batch("train", 3)
    copied = decoded.to("cuda")
    assert copied["x"].is_cuda and decoded["x"].device.type == "cpu"
    assert torch.equal(copied["x"].cpu(), decoded["x"])
    again = copied.to("cuda")
    assert again["x"].data_ptr() == copied["x"].data_ptr()
